"""``hil doctor``: what this machine offers the harness, and whether the bench can run here."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from backend_stub.errors import PkiError
from backend_stub.pki import load_pki
from hil import doctor
from hil.cli._backend import DEFAULT_BACKEND
from hil.cli._bench import add_bench_options, bench_from
from hil.cli._bus import add_bus_options, bus_config, bus_given
from hil.errors import UsageError

EXIT_USABLE = 0
EXIT_NOT_USABLE = 1

_STYLES = {doctor.OK: "green", doctor.MISSING: "yellow", doctor.FAIL: "bold red"}


def add_subparser(subparsers: Any) -> None:
    """Register ``hil doctor``."""
    parser = subparsers.add_parser(
        "doctor",
        help="check this machine: SocketCAN, python-can interfaces, serial ports, bench, backend",
        description="Report what this machine offers the harness: SocketCAN (AF_CAN, vcan "
        "interfaces, the kernel's ISO-TP), python-can's interfaces and the channels they "
        "detect, serial ports, the bench (its bus opens, its instruments' serial ports "
        "exist) and the backend's gRPC health. Each line says OK, MISSING or FAIL and why. "
        "Exit status 0 when the bench is usable, 1 when not, 2 for usage errors. The bench "
        "is resolved as in the 'hil bench' commands (--bench, $HIL_BENCH, hil.toml, else the "
        "built-in sim bench); bus options, as in 'hil ecu run', replace its bus.",
    )
    add_bench_options(parser)
    parser.add_argument(
        "--serial-port",
        action="append",
        default=[],
        metavar="[NAME=]PORT",
        help="a serial port (device or pyserial URL) the bench's instruments need; it must "
        "exist for the bench to be usable (repeatable)",
    )
    parser.add_argument(
        "--backend",
        default=os.environ.get("HIL_BACKEND", DEFAULT_BACKEND),
        metavar="HOST:PORT",
        help=f"the backend to ask for its gRPC health (default: $HIL_BACKEND or "
        f"{DEFAULT_BACKEND}); does not change the exit status",
    )
    parser.add_argument("--no-backend", action="store_true", help="do not check the backend")
    parser.add_argument(
        "--tls-dir",
        type=Path,
        default=os.environ.get("HIL_TLS_DIR"),
        metavar="DIR",
        help="PKI directory ('hil pki init'): ask a TLS backend with the operator certificate "
        "(default: $HIL_TLS_DIR; without it, a plain connection)",
    )
    parser.add_argument(
        "--detect-timeout",
        type=float,
        default=doctor.DETECT_TIMEOUT_S,
        metavar="S",
        help="time limit of python-can's interface detection, which some drivers make slow "
        f"(default {doctor.DETECT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=doctor.BACKEND_TIMEOUT_S,
        metavar="S",
        help="time limit of the backend check (default "
        f"{doctor.BACKEND_TIMEOUT_S:g}); opening the bench's bus gets {doctor.OPEN_TIMEOUT_S:g} s",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_bus_options(parser)
    parser.set_defaults(run=run_doctor)


def bench_needs(args: argparse.Namespace) -> doctor.BenchNeeds:
    """Return what the bench to check needs.

    The bench is ``--bench`` (else ``$HIL_BENCH``, ``hil.toml``, ``sim``); bus options
    replace its bus; the ``--serial-port`` ports are added to its instruments'.
    """
    needs = doctor.bench_needs_from(bench_from(args))
    ports = {**needs.serial_ports, **_serial_ports(args.serial_port)}
    bus = needs.bus
    source = needs.source
    if bus_given(args):
        bus = bus_config(args)
        source = f"{source}; bus from the command line"
    return doctor.BenchNeeds(needs.name, bus, ports, source)


def _serial_ports(values: list[str]) -> dict[str, str]:
    ports: dict[str, str] = {}
    for value in values:
        name, sep, port = value.partition("=")
        if not sep or "://" in name or "/" in name or "\\" in name:
            name, port = f"port{len(ports) + 1}", value
        if not port or not name:
            raise UsageError(f"--serial-port {value!r}: give PORT or NAME=PORT")
        if name in ports:
            raise UsageError(f"--serial-port {value!r}: {name!r} is given twice")
        ports[name] = port
    return ports


def _credentials(args: argparse.Namespace) -> Any:
    if args.tls_dir is None:
        return None
    try:
        return load_pki(Path(args.tls_dir)).channel_credentials("operator")
    except PkiError as exc:
        raise UsageError(str(exc)) from exc


def run_doctor(args: argparse.Namespace) -> int:
    """Run every check; print the table (or JSON); 0 if the bench is usable, else 1."""
    for option, value in (("--detect-timeout", args.detect_timeout), ("--timeout", args.timeout)):
        if not value > 0:
            raise UsageError(f"{option} must be above 0")
    needs = bench_needs(args)
    credentials = None if args.no_backend else _credentials(args)
    checks = doctor.run_checks(
        needs,
        backend=None if args.no_backend else args.backend,
        backend_credentials=credentials,
        detect_timeout_s=args.detect_timeout,
        backend_timeout_s=args.timeout,
    )
    usable = doctor.usable(checks)
    if args.json:
        print(json.dumps(doctor.report(checks), indent=2, sort_keys=True))
    else:
        _print_table(checks, needs, usable)
    return EXIT_USABLE if usable else EXIT_NOT_USABLE


def _print_table(checks: list[doctor.Check], needs: doctor.BenchNeeds, usable: bool) -> None:
    console = Console()
    table = Table(title="hil doctor")
    table.add_column("section")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    previous = None
    for check in checks:
        section = check.section if check.section != previous else ""
        previous = check.section
        status = Text(check.status, style=_STYLES[check.status])
        table.add_row(section, check.name, status, check.detail)
    console.print(table)
    verdict = "usable" if usable else "NOT usable"
    style = "green" if usable else "bold red"
    console.print(Text(f"bench {needs.name}: {verdict}", style=style))
