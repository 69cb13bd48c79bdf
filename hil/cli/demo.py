"""``hil demo``: the end-to-end demo on the embedded defaults."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gateway import Flasher, FlashResult
from hil.cli.flash import flash_with_progress
from hil.demo import DemoCase, run_demo


def add_subparser(subparsers: Any) -> None:
    """Register ``hil demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="end-to-end demo: flash, rollback and refusal on the simulated vehicle",
        description="Flash all three ECUs of the demo vehicle over an in-process virtual CAN "
        "bus, then show a rollback (an image whose boot fails) and refused images (foreign "
        "signature, downgrade). Exit status 0 only if every outcome is the expected one.",
    )
    parser.add_argument(
        "--state-dir", type=Path, metavar="DIR", help="keep the ECUs' NVM here (default: temporary)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its summary."""
    console = Console()
    show = not args.no_progress and sys.stdout.isatty()
    started = time.monotonic()

    def on_case(case: DemoCase) -> None:
        console.print(
            f"[bold]{case.title}[/bold]: {case.ecu} <- {case.version} "
            f"(anti-rollback {case.counter}, signed with {case.signer})"
        )

    def flash(flasher: Flasher, image: bytes) -> FlashResult:
        return flash_with_progress(flasher, image, console, show)

    outcomes = run_demo(state_dir=args.state_dir, on_case=on_case, flash=flash)
    table = Table(title="demo vehicle, in-process virtual CAN")
    for column in ("case", "ECU", "before", "after", "outcome", "expected", "time", "bytes/s"):
        table.add_column(column, justify="right" if column in ("time", "bytes/s") else "left")
    for outcome in outcomes:
        result = outcome.result
        table.add_row(
            outcome.case.title,
            result.ecu,
            result.version_before or "?",
            result.version_after or "?",
            result.short_outcome,
            "yes" if outcome.as_expected else "[red]NO[/red]",
            f"{result.duration_s:.2f} s",
            f"{result.throughput_bps:,.0f}" if result.transfer_s else "-",
        )
    console.print(table)
    for outcome in outcomes:
        result = outcome.result
        if result.failure is not None or not outcome.as_expected:
            console.print(f"{outcome.case.title} ({result.ecu}): {result.failure}; {outcome.note}")
    good = all(o.as_expected for o in outcomes)
    verdict = "every outcome as expected" if good else "[red]some outcomes were not expected[/red]"
    console.print(f"{verdict} ({time.monotonic() - started:.1f} s)")
    return 0 if good else 1
