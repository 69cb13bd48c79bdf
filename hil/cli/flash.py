"""``hil flash``: flash a signed image into one ECU with the UDS flasher.

On a bench (``--bench``, ``$HIL_BENCH`` or hil.toml's ``default_bench``, when no bus
options and no ``--sim`` are given) the bench's bus and ECU settings are used and
the flash is guarded (:mod:`hil.bench.flashing`): the supply must be within the
bench's flashing window, and a real bench asks for confirmation on a terminal
(``--yes`` skips it; without a terminal and without ``--yes`` the flash is refused).
``--dry-run`` prints the UDS sequence and sends nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from gateway import DiagChannel, Flasher, FlashProgress, FlashResult
from gateway.flasher import describe_boot
from hil.bench import Bench, SupplyVoltageError, bench_flasher, check_flash_supply, flash_plan
from hil.bench.flashing import needs_confirmation, prepare_flash, terminal_ask
from hil.cli._bench import add_bench_options, bench_config, bench_from, guarded
from hil.cli._bus import add_bus_options, bus_given
from hil.cli._vehicle import add_sim_options, add_vehicle_option, tester_bus, vehicle_from
from hil.errors import UsageError


def add_subparser(subparsers: Any) -> None:
    """Register ``hil flash``."""
    parser = subparsers.add_parser(
        "flash",
        help="flash a signed image into one ECU",
        description="Run the ISO 14229 reprogramming sequence against one ECU on the bus.",
    )
    parser.add_argument("image", type=Path, metavar="IMAGE", help="signed image (hil image build)")
    parser.add_argument("--ecu", required=True, metavar="NAME", help="target ECU")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (also off when not a TTY)"
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="send the image even if it does not verify against the vehicle's trust anchors "
        "(to test the ECU's own refusal)",
    )
    parser.add_argument(
        "--no-confirm",
        action="store_true",
        help="leave the new image on trial: the anti-rollback counter is not raised and the "
        "previous image can be activated again",
    )
    parser.add_argument(
        "-y",
        "--yes",
        action="store_true",
        help="on a real bench, flash without asking (needed when stdin is not a terminal)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the UDS sequence that would be sent (and check the bench's supply); "
        "send nothing",
    )
    add_bench_options(parser)
    add_vehicle_option(parser)
    add_sim_options(parser)
    add_bus_options(parser)
    parser.set_defaults(run=run_flash)


def progress_bar(console: Console) -> Progress:
    """Return the progress bar of a flash."""
    return Progress(
        TextColumn("{task.fields[ecu]}"),
        TextColumn("{task.description:<20}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def flash_with_progress(
    flasher: Flasher, image: bytes, console: Console, show: bool
) -> FlashResult:
    """Flash ``image``, drawing a progress bar when ``show``."""
    if not show:
        return flasher.flash(image)
    with progress_bar(console) as progress:
        task: TaskID = progress.add_task("identify", total=len(image), ecu=flasher.ecu)

        def update(event: FlashProgress) -> None:
            progress.update(task, description=str(event.step), completed=event.bytes_sent)

        flasher.on_progress = update
        try:
            return flasher.flash(image)
        finally:
            flasher.on_progress = None


def print_result(result: FlashResult, console: Console) -> None:
    """Summarise a flash in a few lines."""
    if result.ok:
        console.print(
            f"{result.ecu}: flashed {result.image_version} "
            f"({result.version_before} -> {result.version_after}) "
            f"in {result.duration_s:.2f} s, {result.throughput_bps / 1024:.1f} KiB/s transfer"
        )
        if not result.confirmed:
            console.print(
                "  not confirmed: the new image runs on trial, the anti-rollback counter "
                "was not raised"
            )
        return
    console.print(f"{result.ecu}: [red]FAILED[/red] at {result.failure}")
    after = result.version_after if result.version_after is not None else "unknown (no answer)"
    console.print(f"  before: {result.version_before}; ECU runs now: {after}")
    console.print(f"  boot: {describe_boot(result.boot_status_after)}")


def selected_bench(args: argparse.Namespace) -> Bench | None:
    """Return the bench to flash on, or ``None`` for a bare bus (bus options, ``--sim``...).

    ``--bench`` is explicit; otherwise bus options, ``--sim`` or ``--vehicle`` on the
    command line beat a bench from the environment or hil.toml's ``default_bench``.
    """
    own = [
        name
        for name, given in (
            ("bus options", bus_given(args)),
            ("--sim", args.sim),
            ("--vehicle", args.vehicle is not None),
            ("--state-dir", args.state_dir is not None),
            ("--fault", bool(args.fault)),
        )
        if given
    ]
    if args.bench:
        if own:
            raise UsageError(f"--bench brings its own bus and ECUs; drop {', '.join(own)}")
        return bench_from(args)
    if own:
        return None
    config = bench_config(args)
    name, origin = config.select(None)
    if origin == "built-in default":
        return None
    return config.bench(name)


def run_flash(args: argparse.Namespace) -> int:
    """Flash one ECU; exit 1 if the flash failed or a bench check stopped it."""
    try:
        image = args.image.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read image {args.image}: {exc.strerror}") from exc
    bench = selected_bench(args)
    if bench is not None:
        return guarded(args, lambda: _flash_on_bench(args, bench, image))
    vehicle = vehicle_from(args)
    ecu = vehicle.ecu(args.ecu)
    if args.dry_run:
        plan = flash_plan(
            vehicle, ecu, image, confirm=not args.no_confirm, verify=not args.no_verify
        )
        print("\n".join(plan.lines()))
        return 0
    console = Console()
    show = not args.no_progress and sys.stdout.isatty()
    with (
        tester_bus(args, vehicle) as tester,
        DiagChannel(tester.bus, tester.notifier, vehicle, ecu) as channel,
    ):
        flasher = Flasher(
            channel,
            trust_anchors=None if args.no_verify else vehicle.trust_anchor_keys(),
            check_compatibility=not args.no_verify,
            confirm=not args.no_confirm,
        )
        result = flash_with_progress(flasher, image, console, show)
    print_result(result, console)
    return 0 if result.ok else 1


def _flash_on_bench(args: argparse.Namespace, bench: Bench, image: bytes) -> int:
    ecu = bench.ecu(args.ecu)
    if args.dry_run:
        return _dry_run(args, bench, image)
    console = Console()
    show = not args.no_progress and sys.stdout.isatty()
    with bench.connect() as rig:
        # The flasher first: a bench without trust anchors is refused before any question.
        flasher = bench_flasher(
            rig, ecu.name, verify=not args.no_verify, confirm_image=not args.no_confirm
        )
        reading = prepare_flash(rig, ecu.name, str(args.image), yes=args.yes, ask=terminal_ask())
        if reading is not None:
            console.print(f"{bench.name}: supply {reading.volts:.2f} V, {reading.amps:.3f} A")
        result = flash_with_progress(flasher, image, console, show)
    print_result(result, console)
    return 0 if result.ok else 1


def _dry_run(args: argparse.Namespace, bench: Bench, image: bytes) -> int:
    """Print the plan and what the bench checks would say; send nothing to any ECU."""
    ecu = bench.ecu(args.ecu)
    if ecu.flash_vehicle is None:
        raise UsageError(
            f"ECU {ecu.name} uses {ecu.addressing} addressing; the flasher speaks "
            "normal_11bits only"
        )
    vehicle = ecu.flash_vehicle
    plan = flash_plan(
        vehicle,
        vehicle.ecu(ecu.name),
        image,
        confirm=not args.no_confirm,
        verify=not args.no_verify,
    )
    print(f"bench {bench.name} ({bench.source})")
    print("\n".join(plan.lines()))
    if needs_confirmation(bench) and not args.yes:
        print("confirmation: would be asked (a real bench; --yes skips it)")
    if bench.power is None:
        print("supply: no power supply configured: no voltage check")
        return 0
    with bench.connect() as rig:
        try:
            reading = check_flash_supply(rig)
        except SupplyVoltageError as exc:
            print(f"supply: {exc}: the flash would stop before sending anything")
            return 1
    assert reading is not None
    print(
        f"supply: {reading.volts:.2f} V, flashing window {bench.power.window_text}: "
        "the flash would go ahead"
    )
    return 0
