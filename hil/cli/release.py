"""``hil release create|list``: upload signed images and group them into a signed release."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from backend_stub.api import update_pb2
from hil.cli._backend import (
    CALL_TIMEOUT_S,
    add_backend_options,
    as_dict,
    operator_channel,
    print_json,
)
from hil.errors import UsageError
from scenarios.wire import upload_requests

CHUNK_BYTES = 256 * 1024


def add_subparser(subparsers: Any) -> None:
    """Register ``hil release``."""
    parser = subparsers.add_parser("release", help="upload images and create releases")
    actions = parser.add_subparsers(dest="release_command", metavar="ACTION")
    actions.required = True
    create = actions.add_parser(
        "create",
        help="upload signed images and create a release of them",
        description="Upload each IMAGE (a file from 'hil image build'; skipped if the backend "
        "has it already) and create a release that flashes them in the order given.",
    )
    create.add_argument("--name", required=True)
    create.add_argument("--version", required=True, dest="release_version", metavar="VERSION")
    create.add_argument(
        "--image",
        action="append",
        required=True,
        metavar="ECU=FILE",
        help="an ECU and its signed image (repeat, in flashing order)",
    )
    create.add_argument(
        "--compatible",
        action="append",
        default=[],
        metavar="ECU=HW[,HW...]",
        help="hardware ids an ECU's image fits (default: the image's own)",
    )
    add_backend_options(create)
    create.set_defaults(run=run_create)
    listing = actions.add_parser("list", help="list releases")
    add_backend_options(listing)
    listing.set_defaults(run=run_list)


def _pairs(values: list[str], what: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise UsageError(f"{what} {value!r} is not ECU=VALUE")
        pairs.append((name, rest))
    return pairs


def run_create(args: argparse.Namespace) -> int:
    """Upload the images and create the release."""
    images = _pairs(args.image, "--image")
    compatible = {ecu: hw.split(",") for ecu, hw in _pairs(args.compatible, "--compatible")}
    files = []
    for ecu, name in images:
        path = Path(name)
        try:
            files.append((ecu, path, path.read_bytes()))
        except OSError as exc:
            raise UsageError(f"cannot read image {path}: {exc.strerror}") from exc
    with operator_channel(args) as stubs:
        entries = []
        for ecu, path, data in files:
            artifact = stubs.update.UploadArtifact(
                upload_requests(data, path.name, CHUNK_BYTES), timeout=CALL_TIMEOUT_S
            )
            entries.append(
                update_pb2.ReleaseImage(
                    ecu=ecu,
                    sha256=artifact.sha256,
                    compatible_hardware_ids=compatible.get(ecu, []),
                )
            )
        release = stubs.update.CreateRelease(
            update_pb2.CreateReleaseRequest(
                name=args.name,
                version=args.release_version,
                images=entries,
                request_id=uuid.uuid4().hex,
            ),
            timeout=CALL_TIMEOUT_S,
        )
    if args.json:
        print_json(as_dict(release))
        return 0
    _print_releases([release])
    return 0


def run_list(args: argparse.Namespace) -> int:
    """List releases."""
    with operator_channel(args) as stubs:
        releases = list(
            stubs.update.ListReleases(
                update_pb2.ListReleasesRequest(page_size=1000), timeout=CALL_TIMEOUT_S
            ).releases
        )
    if args.json:
        print_json([as_dict(r) for r in releases])
        return 0
    _print_releases(releases)
    return 0


def _print_releases(releases: list[update_pb2.Release]) -> None:
    table = Table(box=None)
    for column in ("release", "name", "version", "ecu", "image version", "hardware", "sha256"):
        table.add_column(column, no_wrap=True)
    for release in releases:
        for index, image in enumerate(release.images):
            head = (release.release_id, release.name, release.version) if index == 0 else ("",) * 3
            table.add_row(
                *head, image.ecu, image.version, image.hardware_id, image.sha256[:16] + "..."
            )
    Console().print(table)
