"""Bus options shared by subcommands: python-can's own, as in can.logger."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
from collections.abc import Iterator
from typing import Any

import can
import can.cli

from hil.errors import BusError, UsageError

_BUS_KEYS = ("interface", "channel", "bitrate", "fd", "data_bitrate", "timing", "bus_kwargs")
_counter = itertools.count()


def add_bus_options(parser: argparse.ArgumentParser) -> None:
    """Add ``-i/-c/-b/--fd/--data-bitrate/--timing/--bus-kwargs`` exactly as python-can does."""
    can.cli.add_bus_arguments(parser)


def bus_given(args: argparse.Namespace) -> bool:
    """Whether any bus option was given on the command line."""
    return any(key in args for key in _BUS_KEYS)


def open_bus(args: argparse.Namespace) -> can.BusABC:
    """Open the bus the options describe (falling back to python-can's config files)."""
    try:
        return can.cli.create_bus_from_namespace(args)
    except argparse.ArgumentError as exc:
        cause = exc.__cause__ or exc
        raise BusError(f"cannot open the CAN bus: {cause}") from exc


def virtual_channel(prefix: str) -> str:
    """Return a virtual channel name no other part of this process uses."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


@contextlib.contextmanager
def notifier_for(bus: can.BusABC) -> Iterator[can.Notifier]:
    """Yield the one notifier of ``bus``; stop it on exit."""
    notifier = can.Notifier(bus, [], timeout=0.1)
    try:
        yield notifier
    finally:
        notifier.stop()


def reject_bus_with_sim(args: argparse.Namespace) -> None:
    """``--sim`` brings its own in-process bus; refuse bus options next to it."""
    if getattr(args, "sim", False) and bus_given(args):
        raise UsageError("--sim runs the vehicle on its own in-process bus; drop the bus options")


def bus_config(args: argparse.Namespace) -> dict[str, Any]:
    """Return the ``can.Bus`` keyword arguments the options give, as python-can's CLI does.

    Keys not given are left out, so that python-can's config files and ``CAN_*``
    environment variables fill them in when the bus is opened.
    """
    config: dict[str, Any] = {"single_handle": True}
    for key in ("channel", "interface", "bitrate", "fd", "data_bitrate", "can_filters", "timing"):
        if key in args:
            config[key] = getattr(args, key)
    if "bus_kwargs" in args:
        config.update(args.bus_kwargs)
    return config
