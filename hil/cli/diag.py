"""``hil diag``: read DIDs and DTCs, change the session, reset an ECU."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table
from udsoncan import services

from gateway import DiagChannel, DiagnosticError, DiagnosticTimeout
from gateway.diag import DID_CODECS, nrc_name
from gateway.flasher import describe_boot
from hil.cli._bus import add_bus_options
from hil.cli._vehicle import add_sim_options, add_vehicle_option, tester_bus, vehicle_from
from hil.errors import UsageError
from ota_formats.uds import BootStatus, Did, Session, bank_name, dtc_text

SESSIONS = {
    "default": Session.DEFAULT,
    "extended": Session.EXTENDED,
    "programming": Session.PROGRAMMING,
}
RESETS = {
    "hard": services.ECUReset.ResetType.hardReset,
    "key-off-on": services.ECUReset.ResetType.keyOffOnReset,
    "soft": services.ECUReset.ResetType.softReset,
}
IDENTITY = (
    Did.PART_NUMBER,
    Did.HARDWARE_ID,
    Did.SERIAL_NUMBER,
    Did.APP_SOFTWARE_VERSION,
    Did.VIN,
    Did.ACTIVE_SESSION,
    Did.BOOT_STATUS,
)


def add_subparser(subparsers: Any) -> None:
    """Register ``hil diag``."""
    parser = subparsers.add_parser("diag", help="read DIDs and DTCs, change session, reset")
    parser.add_argument("--ecu", default="ecm", metavar="NAME", help="target ECU (default ecm)")
    add_vehicle_option(parser)
    add_sim_options(parser)
    add_bus_options(parser)
    actions = parser.add_subparsers(dest="diag_command", metavar="ACTION")
    actions.required = True
    actions.add_parser("info", help="identification DIDs, session and boot status")
    read = actions.add_parser("read", help="read DIDs given in hex, e.g. F189 F1A0")
    read.add_argument("dids", nargs="+", metavar="DID")
    dtc = actions.add_parser("dtc", help="stored DTCs (ReadDTCInformation 0x02)")
    dtc.add_argument("--mask", default="0xFF", metavar="MASK", help="status mask (default 0xFF)")
    actions.add_parser("clear-dtc", help="clear all DTCs (0x14 FFFFFF)")
    session = actions.add_parser("session", help="change the diagnostic session")
    session.add_argument("session", choices=sorted(SESSIONS))
    reset = actions.add_parser("reset", help="reset the ECU")
    reset.add_argument("kind", nargs="?", default="hard", choices=sorted(RESETS))
    parser.set_defaults(run=run_diag)


def _hex(text: str, what: str, limit: int) -> int:
    try:
        value = int(text, 16)
    except ValueError as exc:
        raise UsageError(f"{what} {text!r} is not hexadecimal") from exc
    if not 0 <= value <= limit:
        raise UsageError(f"{what} {text!r} is out of range")
    return value


def _format(value: Any) -> str:
    if isinstance(value, BootStatus):
        pending = bank_name(value.pending_bank) if value.pending_bank != 0xFF else "none"
        return (
            f"active {bank_name(value.active_bank)}, pending {pending}, "
            f"attempts {value.boot_attempts}, anti-rollback {value.anti_rollback_counter}; "
            f"{describe_boot(value)}"
        )
    if isinstance(value, bytes):
        return value.hex(" ")
    if isinstance(value, tuple) and len(value) == 1:
        value = value[0]
    if isinstance(value, int):
        try:
            return f"0x{value:02X} ({Session(value).name.lower()})"
        except ValueError:
            return f"0x{value:02X}"
    return str(value)


def _read_did(channel: DiagChannel, did: int) -> str:
    """Read one DID: decoded if the contract knows it, as hex bytes otherwise."""
    if did in DID_CODECS:
        reply = channel.call(lambda c: c.read_data_by_identifier([did]))
        if reply is None:
            raise DiagnosticError("no reply to ReadDataByIdentifier")
        return _format(reply.service_data.values[did])
    raw = channel.raw(bytes([0x22]) + did.to_bytes(2, "big"), 1.0)
    if raw is None:
        raise DiagnosticTimeout("no response")
    if raw[0] == 0x7F and len(raw) >= 3:
        raise DiagnosticError(f"negative response 0x{raw[2]:02X} ({nrc_name(raw[2])})", nrc=raw[2])
    return raw[3:].hex(" ")


def run_diag(args: argparse.Namespace) -> int:
    """Run one diagnostic action; exit 1 if the ECU refused or did not answer."""
    vehicle = vehicle_from(args)
    ecu = vehicle.ecu(args.ecu)
    console = Console()
    command = args.diag_command
    dids = [_hex(text, "DID", 0xFFFF) for text in getattr(args, "dids", [])]
    mask = _hex(args.mask.removeprefix("0x"), "mask", 0xFF) if command == "dtc" else 0
    with (
        tester_bus(args, vehicle) as tester,
        DiagChannel(tester.bus, tester.notifier, vehicle, ecu) as channel,
    ):
        try:
            if command in ("info", "read"):
                table = Table("DID", "value", title=f"{ecu.name} ({ecu.role or 'ECU'})")
                for did in dids or IDENTITY:
                    try:
                        shown = _read_did(channel, did)
                    except DiagnosticError as exc:
                        if command == "read":
                            raise
                        shown = f"({exc})"
                    table.add_row(f"0x{did:04X}", shown)
                console.print(table)
            elif command == "dtc":
                reply = channel.call(lambda c: c.get_dtc_by_status_mask(mask))
                if reply is None:
                    raise DiagnosticError("no reply to ReadDTCInformation")
                table = Table("DTC", "status", title=f"{ecu.name}: DTCs matching 0x{mask:02X}")
                for dtc in reply.service_data.dtcs:
                    status = dtc.status.get_byte_as_int()
                    table.add_row(f"{dtc.id:06X} ({dtc_text(dtc.id)})", f"0x{status:02X}")
                console.print(table)
                console.print(f"{reply.service_data.dtc_count} DTC(s)")
            elif command == "clear-dtc":
                channel.call(lambda c: c.clear_dtc(0xFFFFFF))
                console.print(f"{ecu.name}: DTCs cleared")
            elif command == "session":
                target = SESSIONS[args.session]
                if target == Session.PROGRAMMING:
                    channel.call(lambda c: c.change_session(Session.EXTENDED))
                channel.call(lambda c: c.change_session(target))
                console.print(f"{ecu.name}: {args.session} session (S3 applies)")
            elif command == "reset":
                channel.call(lambda c: c.ecu_reset(RESETS[args.kind]))
                console.print(f"{ecu.name}: {args.kind} reset accepted")
        except DiagnosticError as exc:
            console.print(f"{ecu.name}: [red]{exc}[/red]")
            return 1
    return 0
