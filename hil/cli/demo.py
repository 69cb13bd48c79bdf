"""``hil demo``: the whole OTA flow on the embedded defaults."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hil.demo import DemoCase, run_demo


def add_subparser(subparsers: Any) -> None:
    """Register ``hil demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="end-to-end OTA demo: backend, gateway and simulated vehicle in one process",
        description="Start the bundled backend (SQLite, loopback), the demo vehicle's three "
        "ECUs on an in-process virtual CAN bus and its gateway; run a campaign that updates "
        "every ECU, one whose second ECU fails to boot (the vehicle is rolled back), and one "
        "whose image was tampered with (refused before any flash). Exit status 0 only if "
        "every outcome is the expected one.",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help="keep the backend's data, the ECUs' NVM and the gateway's state here "
        "(default: temporary)",
    )
    parser.add_argument("--quiet", action="store_true", help="only the summary")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its summary."""
    console = Console(highlight=False)
    started = time.monotonic()

    def on_case(case: DemoCase) -> None:
        what = f"release {case.version} for every ECU (anti-rollback {case.counter})"
        if case.fail_boot:
            what += f"; {case.fail_boot} will fail its trial boot"
        if case.tamper:
            what += f"; {case.tamper}'s image tampered with on the backend after signing"
        console.print(f"[bold]{case.title}[/bold]: {what}")

    def on_event(text: str) -> None:
        if not args.quiet:
            console.print(f"  [dim]gateway: {text}[/dim]")

    outcomes = run_demo(directory=args.dir, on_case=on_case, on_event=on_event)
    vin = outcomes[0].vin if outcomes else "?"
    table = Table(title=f"vehicle {vin}: backend over gRPC, gateway, ECUs on virtual CAN")
    for column in ("case", "ECU", "before", "after", "outcome", "flash", "expected"):
        table.add_column(column, justify="right" if column == "flash" else "left")
    for outcome in outcomes:
        deployment = outcome.deployment
        ecus = deployment.ecus if deployment is not None else []
        for index, ecu in enumerate(ecus):
            outcome_text = str(ecu.state).replace("_", " ")
            if ecu.step and ecu.state not in ("confirmed", "rolled_back"):
                outcome_text += f" at {ecu.step}"
            table.add_row(
                outcome.case.title if index == 0 else "",
                ecu.name,
                ecu.from_version,
                outcome.versions.get(ecu.name, "?"),
                outcome_text,
                f"{ecu.duration_s:.2f} s" if ecu.duration_s else "-",
                ("yes" if outcome.as_expected else "[red]NO[/red]") if index == 0 else "",
            )
        if not ecus:
            table.add_row(
                outcome.case.title, "", "", "", "", outcome.action_state, "-", "[red]NO[/red]"
            )
        table.add_section()
    console.print(table)
    campaigns = Table(title="campaigns, as the backend reports them")
    for column in ("case", "deployment", "campaign", "time"):
        campaigns.add_column(column, justify="right" if column == "time" else "left")
    for outcome in outcomes:
        campaign = outcome.campaign_state + (
            f": {outcome.campaign_note}" if outcome.campaign_note else ""
        )
        campaigns.add_row(
            outcome.case.title,
            outcome.action_state.replace("_", " "),
            campaign,
            f"{outcome.duration_s:.1f} s",
        )
    console.print(campaigns)
    for outcome in outcomes:
        deployment = outcome.deployment
        if deployment is not None and deployment.failure_step:
            console.print(
                f"{outcome.case.title}: failed at {deployment.failure_step}: "
                f"{deployment.failure_reason}"
            )
    for outcome in outcomes:
        for problem in outcome.problems:
            console.print(f"[red]{outcome.case.title}: {problem}[/red]")
    good = all(o.as_expected for o in outcomes)
    verdict = "every outcome as expected" if good else "[red]some outcomes were not expected[/red]"
    console.print(f"{verdict} ({time.monotonic() - started:.1f} s)")
    return 0 if good else 1
