"""The ``hil`` command: one module per subcommand, each with ``add_subparser()``.

User errors print ``error: ...`` on one line and exit with status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

import can

from backend_stub.errors import BackendError
from ecu_sim.errors import EcuSimError
from gateway.errors import GatewayError
from hil import __version__
from hil.cli import (
    backend,
    bench,
    bus,
    campaign,
    demo,
    diag,
    doctor,
    ecu,
    flash,
    gateway,
    image,
    pki,
    release,
    scenario,
    vehicles,
)
from hil.errors import HilError
from ota_formats.errors import OtaFormatError

EXIT_USAGE = 2

SUBCOMMANDS = (
    demo,
    ecu,
    flash,
    image,
    diag,
    gateway,
    pki,
    backend,
    release,
    vehicles,
    campaign,
    scenario,
    bus,
    doctor,
    bench,
)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``error: ...``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the ``hil`` command."""
    parser = _Parser(
        prog="hil",
        description="HIL vehicle and ECU simulation and OTA test harness.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for module in SUBCOMMANDS:
        module.add_subparser(subparsers)
    return parser


def _configure_logging(verbose: int, debug: bool) -> None:
    level = logging.DEBUG if debug or verbose >= 2 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not debug and verbose < 2:
        # udsoncan logs every timeout and NRC at error level; the tools report them themselves.
        logging.getLogger("UdsClient").setLevel(logging.CRITICAL)
        logging.getLogger("Connection").setLevel(logging.CRITICAL)
        logging.getLogger("isotp").setLevel(logging.CRITICAL)
        logging.getLogger("can").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hil`` command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.debug)
    try:
        status: int = args.run(args)
        return status
    except KeyboardInterrupt:
        return 130
    except (
        HilError,
        BackendError,
        OtaFormatError,
        EcuSimError,
        GatewayError,
        can.CanError,
        OSError,
        ValueError,
    ) as exc:
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
