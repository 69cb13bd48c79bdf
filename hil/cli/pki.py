"""``hil pki``: development certificates and keys for the backend, operators and vehicles."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from rich.console import Console
from rich.table import Table

from backend_stub.errors import PkiError
from backend_stub.pki import DEFAULT_OPERATOR_NAME, DEFAULT_VALID_DAYS, init_pki, load_pki
from ecu_sim import demo_vehicle
from hil.errors import UsageError
from ota_formats.signing import key_id, load_public_key


def add_subparser(subparsers: Any) -> None:
    """Register ``hil pki init`` and ``hil pki vehicle``."""
    parser = subparsers.add_parser(
        "pki", help="make development certificates and keys for the OTA backend"
    )
    actions = parser.add_subparsers(dest="pki_command", metavar="ACTION")
    actions.required = True

    init = actions.add_parser(
        "init",
        help="create a CA, the backend's, an operator's and vehicles' certificates",
        description="Create a development PKI in DIR: a CA, the backend's server certificate, "
        "an operator and one client certificate per vehicle, and the Ed25519 key that signs "
        "release metadata. The private keys are not encrypted: keep DIR private.",
    )
    init.add_argument("directory", type=Path, metavar="DIR")
    init.add_argument(
        "--vin",
        action="append",
        dest="vins",
        metavar="VIN",
        help="a vehicle to issue a certificate for (repeat for more); "
        "default: the bundled demo vehicle",
    )
    init.add_argument(
        "--server-name",
        action="append",
        dest="server_names",
        default=[],
        metavar="NAME",
        help="another DNS name or IP address of the backend besides localhost, 127.0.0.1 "
        "and ::1 (repeat for more)",
    )
    init.add_argument(
        "--operator",
        default=DEFAULT_OPERATOR_NAME,
        metavar="NAME",
        help=f"the operator's common name (default {DEFAULT_OPERATOR_NAME!r})",
    )
    _add_days_option(init)
    init.add_argument("--force", action="store_true", help="replace a PKI that DIR holds already")
    init.set_defaults(run=run_init)

    vehicle = actions.add_parser(
        "vehicle",
        help="issue a certificate for one more vehicle",
        description="Issue a client certificate for vehicle VIN, signed by the CA in DIR.",
    )
    vehicle.add_argument("directory", type=Path, metavar="DIR")
    vehicle.add_argument("vin", metavar="VIN")
    _add_days_option(vehicle)
    vehicle.add_argument(
        "--force", action="store_true", help="replace the vehicle's existing certificate"
    )
    vehicle.set_defaults(run=run_vehicle)


def _add_days_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--days",
        type=int,
        default=DEFAULT_VALID_DAYS,
        metavar="N",
        help=f"validity of the certificates in days (default {DEFAULT_VALID_DAYS})",
    )


def run_init(args: argparse.Namespace) -> int:
    """Create a development PKI and list what was made."""
    vins = args.vins if args.vins else [demo_vehicle().vin]
    try:
        pki = init_pki(
            args.directory,
            vins,
            server_names=args.server_names,
            operator_name=args.operator,
            valid_days=args.days,
            force=args.force,
        )
    except PkiError as exc:
        raise UsageError(str(exc)) from exc
    table = _certificate_table(
        pki.directory,
        [
            pki.ca_path,
            pki.server_cert_path,
            pki.operator_cert_path,
            *(pki.vehicle_cert_path(vin) for vin in pki.vins()),
        ],
    )
    release_key_id = key_id(load_public_key(pki.release_public_key_path)).hex()
    table.add_row(
        pki.release_key_path.name, f"Ed25519 release signing key, id {release_key_id}", "-"
    )
    console = Console()
    console.print(f"{pki.directory}:")
    console.print(table)
    console.print(
        f"private keys (*.key, {pki.release_key_path.name}) are unencrypted: keep them private"
    )
    return 0


def run_vehicle(args: argparse.Namespace) -> int:
    """Issue a certificate for one vehicle with an existing CA."""
    try:
        pki = load_pki(args.directory)
        cert_path = pki.add_vehicle(args.vin, valid_days=args.days, force=args.force)
    except PkiError as exc:
        raise UsageError(str(exc)) from exc
    console = Console()
    console.print(f"{pki.directory}:")
    console.print(_certificate_table(pki.directory, [cert_path]))
    return 0


def _certificate_table(directory: Path, paths: Iterable[Path]) -> Table:
    table = Table(box=None)
    table.add_column("file", no_wrap=True)
    table.add_column("subject")
    table.add_column("valid until", no_wrap=True)
    for path in paths:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        table.add_row(
            str(path.relative_to(directory)),
            _short_subject(cert.subject),
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        )
    return table


def _short_subject(subject: x509.Name) -> str:
    # CN and OU say who it is; O and the vehicles' serialNumber (= CN) only repeat it.
    parts = [
        f"{label}={attribute.value!s}"
        for label, oid in (("CN", NameOID.COMMON_NAME), ("OU", NameOID.ORGANIZATIONAL_UNIT_NAME))
        for attribute in subject.get_attributes_for_oid(oid)
    ]
    return ", ".join(parts)
