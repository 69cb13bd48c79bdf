"""``hil flash``: flash a signed image into one ECU with the UDS flasher."""

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
from hil.cli._bus import add_bus_options
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


def run_flash(args: argparse.Namespace) -> int:
    """Flash one ECU; exit 1 if the flash failed."""
    vehicle = vehicle_from(args)
    ecu = vehicle.ecu(args.ecu)
    try:
        image = args.image.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read image {args.image}: {exc.strerror}") from exc
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
