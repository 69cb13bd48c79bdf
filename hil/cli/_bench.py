"""Bench options shared by subcommands (``--bench``, ``--hil-config``) and their exit statuses.

Configuration and usage errors exit with status 2 (through :func:`hil.cli.main`);
a bench that does not do what was asked exits with status 1: an instrument that
cannot be reached, does not answer or answers garbage, the ``sim`` bench not
running, a supply outside the flashing window, a declined flash.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from hil.bench import Bench, BenchConfig, BenchFailure
from hil.errors import UsageError
from hil.instruments import DriverUnavailableError, InstrumentError, UnknownInstrumentError

EXIT_FAILURE = 1


def add_bench_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--bench NAME`` and ``--hil-config FILE``."""
    parser.add_argument(
        "--bench",
        metavar="NAME",
        help="the bench to use (default: $HIL_BENCH, else hil.toml's default_bench, else sim)",
    )
    parser.add_argument(
        "--hil-config",
        type=Path,
        metavar="FILE",
        help="bench configuration (default: $HIL_CONFIG, else ./hil.toml, "
        "else hil.toml in the user config dir)",
    )


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """Read the configuration the options (or the environment, or the defaults) name."""
    return BenchConfig.load(getattr(args, "hil_config", None))


def bench_from(args: argparse.Namespace, name: str | None = None) -> Bench:
    """Resolve the bench the options name."""
    return bench_config(args).bench(name or getattr(args, "bench", None))


def is_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the bench failing (exit 1) rather than a usage error (exit 2)."""
    if isinstance(exc, UsageError | UnknownInstrumentError | DriverUnavailableError):
        return False
    return isinstance(exc, BenchFailure | InstrumentError)


def guarded(args: argparse.Namespace, action: Callable[[], int]) -> int:
    """Run ``action``; a bench failure prints ``error: ...`` on one line and exits with 1."""
    try:
        return action()
    except Exception as exc:
        if not is_failure(exc) or getattr(args, "debug", False):
            raise
        text = str(exc).strip()
        message = text.splitlines()[0] if text else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_FAILURE
