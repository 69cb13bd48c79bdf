"""``hil image``: build and inspect signed software images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hil.cli._vehicle import add_vehicle_option, vehicle_from
from hil.errors import UsageError
from ota_formats import (
    ImageFormatError,
    ImageIntegrityError,
    SignatureError,
    build_image,
    parse_image,
)
from ota_formats.signing import dev_private_key, key_id, load_private_key


def add_subparser(subparsers: Any) -> None:
    """Register ``hil image build`` and ``hil image inspect``."""
    parser = subparsers.add_parser("image", help="build and inspect signed software images")
    actions = parser.add_subparsers(dest="image_command", metavar="ACTION")
    actions.required = True

    build = actions.add_parser(
        "build",
        help="sign a payload into an image",
        description="Sign PAYLOAD into an image for one ECU of the vehicle. The output file is "
        "exactly the byte sequence a tester downloads.",
    )
    build.add_argument("payload", type=Path, metavar="PAYLOAD", help="application binary")
    build.add_argument("--ecu", required=True, metavar="NAME", help="target ECU (hardware id)")
    build.add_argument("--version", required=True, metavar="X", help="software version (ASCII)")
    build.add_argument(
        "--counter", type=int, default=1, metavar="N", help="anti-rollback counter (default 1)"
    )
    build.add_argument(
        "--key", type=Path, metavar="FILE", help="Ed25519 PEM key; default: the development key"
    )
    build.add_argument(
        "--hardware-id", metavar="ID", help="override the hardware id taken from the vehicle file"
    )
    build.add_argument("-o", "--output", required=True, type=Path, metavar="OUT")
    add_vehicle_option(build)
    build.set_defaults(run=run_build)

    inspect = actions.add_parser("inspect", help="show an image's header and verify it")
    inspect.add_argument("image", type=Path, metavar="IMAGE")
    add_vehicle_option(inspect)
    inspect.set_defaults(run=run_inspect)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from exc


def run_build(args: argparse.Namespace) -> int:
    """Build one signed image."""
    vehicle = vehicle_from(args)
    hardware_id = args.hardware_id or vehicle.ecu(args.ecu).hardware_id
    payload = _read(args.payload, "payload")
    if not 0 <= args.counter <= 0xFFFFFFFF:
        raise UsageError("--counter must be between 0 and 4294967295")
    key = load_private_key(args.key) if args.key else dev_private_key()
    data = build_image(
        payload,
        hardware_id=hardware_id,
        version=args.version,
        anti_rollback_counter=args.counter,
        private_key=key,
    )
    try:
        args.output.write_bytes(data)
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror}") from exc
    signer = "development key" if args.key is None else str(args.key)
    print(
        f"{args.output}: {len(data)} bytes, {args.ecu} ({hardware_id}) version {args.version}, "
        f"counter {args.counter}, signed with {signer} "
        f"(key id {key_id(key.public_key()).hex()})"
    )
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    """Print an image's header and check it against the vehicle's trust anchors."""
    vehicle = vehicle_from(args)
    data = _read(args.image, "image")
    image = parse_image(data)
    header = image.header
    table = Table(show_header=False, box=None)
    for name, value in (
        ("hardware id", header.hardware_id),
        ("version", header.version),
        ("anti-rollback counter", str(header.anti_rollback_counter)),
        ("payload", f"{header.payload_length} bytes"),
        ("payload SHA-256", header.payload_sha256.hex()),
        ("signing key id", header.key_id.hex()),
    ):
        table.add_row(name, value)
    console = Console()
    console.print(table)
    verdict = 0
    try:
        image.check_integrity()
        console.print("payload: intact")
    except ImageIntegrityError as exc:
        console.print(f"payload: [red]{exc}[/red]")
        verdict = 1
    try:
        image.check_signature(vehicle.trust_anchor_keys())
        console.print(f"signature: valid for vehicle {vehicle.name!r}")
    except SignatureError as exc:
        console.print(f"signature: [red]{exc}[/red]")
        verdict = 1
    matches = [e.name for e in vehicle.ecus if e.hardware_id == header.hardware_id]
    console.print(f"fits ECU: {', '.join(matches) if matches else 'none of this vehicle'}")
    return verdict


__all__ = ["ImageFormatError", "add_subparser"]
