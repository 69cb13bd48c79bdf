"""Flashing on a bench, safely: supply window, confirmation, and a dry run.

Before anything is sent to an ECU on a bench (:func:`prepare_flash`):

1. On a real bench (not ``sim``) a flash needs a confirmation; without ``yes``
   and without a way to ask (``ask`` is ``None``: not a terminal) it is refused
   with :class:`~hil.bench.errors.ConfirmationRequired`.
2. With a power supply, its output is measured; off, or outside the bench's
   ``min_volts``/``max_volts``, the flash is stopped with
   :class:`~hil.bench.errors.SupplyVoltageError` (under- or overvoltage).
3. The operator is asked, naming the bench, the ECU and the image (and the supply
   is measured once more after the answer).

:func:`flash_on_bench` does this and runs the gateway's flasher;
:func:`flash_plan` describes the UDS sequence the flasher would send, for
``hil flash --dry-run``, without sending anything.
"""

from __future__ import annotations

import datetime
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from udsoncan import (
    CommunicationType,
    DataFormatIdentifier,
    DidCodec,
    MemoryLocation,
    Request,
    services,
)

from gateway import Flasher, FlashResult
from gateway.diag import DID_CODECS
from gateway.flasher import ProgressCallback, bcd_date
from hil.bench.bench import Bench, BenchConnection, PowerReading
from hil.bench.errors import (
    BenchError,
    ConfirmationRequired,
    FlashDeclined,
    SupplyVoltageError,
)
from ota_formats import ImageFormatError, parse_image
from ota_formats.uds import (
    ADDRESS_AND_LENGTH_FORMAT,
    APP_ADDRESS,
    Did,
    Routine,
    SecurityLevel,
    Session,
)
from ota_formats.vehicle import EcuSpec, VehicleSpec

Ask = Callable[[str], bool]
"""Asks the operator a yes/no question; ``True`` is yes."""

TESTER_SERIAL = b"HILTESTER1"
"""What the flasher writes into DID 0xF198 (its default)."""


def terminal_ask() -> Ask | None:
    """Return a question on the terminal, or ``None`` when stdin is not one (nobody to ask)."""
    if not sys.stdin or not sys.stdin.isatty():
        return None

    def ask(question: str) -> bool:
        try:
            answer = input(question)
        except EOFError:
            return False
        return answer.strip().lower() in ("y", "yes")

    return ask


def needs_confirmation(bench: Bench) -> bool:
    """Whether flashing on ``bench`` needs the operator's confirmation (real benches do)."""
    return not bench.simulated


def check_flash_supply(connection: BenchConnection) -> PowerReading | None:
    """Measure the supply against the flashing window; ``None`` if the bench has no supply.

    Raises:
        SupplyVoltageError: output off, undervoltage or overvoltage.
    """
    if not connection.has_power:
        return None
    return connection.power.check_flash_window()


def prepare_flash(
    connection: BenchConnection,
    ecu: str,
    image_name: str,
    *,
    yes: bool = False,
    ask: Ask | None = None,
) -> PowerReading | None:
    """Every check before flashing ``ecu`` on the connection's bench; nothing is sent to an ECU.

    Returns the supply reading the flash goes ahead with (``None`` without a supply).

    Raises:
        ConfirmationRequired: a real bench, no ``yes`` and no ``ask`` (exit status 2).
        SupplyVoltageError: the supply is off or outside the flashing window.
        FlashDeclined: the operator said no.
    """
    bench = connection.bench
    if not bench.ecu(ecu).flashable:
        raise BenchError(
            f"ECU {ecu} of bench {bench.name} uses {bench.ecu(ecu).addressing} addressing; "
            "the flasher (gateway.DiagChannel) speaks normal_11bits only"
        )
    confirm = needs_confirmation(bench) and not yes
    if confirm and ask is None:
        raise ConfirmationRequired(
            f"refusing to flash {ecu} on bench {bench.name} without confirmation: standard "
            "input is not a terminal to ask on; pass --yes to flash unattended"
        )
    reading = _checked_supply(connection, ecu)
    if confirm:
        assert ask is not None
        supply = f"; supply {reading.volts:.2f} V" if reading is not None else ""
        question = (
            f"Flash {image_name} into ECU {ecu} on bench {bench.name} "
            f"({bench.description or bench.source}{supply})? [y/N] "
        )
        if not ask(question):
            raise FlashDeclined(
                f"flash of {ecu} on bench {bench.name} not confirmed; nothing was sent"
            )
        reading = _checked_supply(connection, ecu)
    return reading


def _checked_supply(connection: BenchConnection, ecu: str) -> PowerReading | None:
    try:
        return check_flash_supply(connection)
    except SupplyVoltageError as exc:
        raise SupplyVoltageError(
            f"{exc}; flash of {ecu} stopped before anything was sent to it",
            problem=exc.problem,
            measured_v=exc.measured_v,
            min_v=exc.min_v,
            max_v=exc.max_v,
        ) from exc


def _trust_anchors(bench: Bench, verify: bool) -> list[Ed25519PublicKey] | None:
    if not verify:
        return None
    anchors = bench.trust_anchor_keys()
    if not anchors:
        raise BenchError(
            f"bench {bench.name} names no trust anchors (no vehicle file, no trust_anchors) "
            "to verify images with; pass --no-verify to send an unverified image"
        )
    return anchors


def bench_flasher(
    connection: BenchConnection,
    ecu: str,
    *,
    verify: bool = True,
    confirm_image: bool = True,
    on_progress: ProgressCallback | None = None,
) -> Flasher:
    """Return the gateway's flasher for ``ecu``, verifying against the bench's trust anchors.

    ``verify`` checks the image against the bench's trust anchors (and the ECU's
    hardware id) before sending it; ``confirm_image`` raises the ECU's anti-rollback
    counter at the end (``hil flash --no-confirm`` leaves the image on trial).
    """
    return Flasher(
        connection.diag(ecu),
        trust_anchors=_trust_anchors(connection.bench, verify),
        check_compatibility=verify,
        confirm=confirm_image,
        on_progress=on_progress,
    )


def flash_on_bench(
    connection: BenchConnection,
    ecu: str,
    image: bytes,
    *,
    image_name: str = "the image",
    yes: bool = False,
    ask: Ask | None = None,
    verify: bool = True,
    confirm_image: bool = True,
    on_progress: ProgressCallback | None = None,
) -> FlashResult:
    """Check the bench (:func:`prepare_flash`), then flash ``image`` into ``ecu``.

    See :func:`bench_flasher` for ``verify`` and ``confirm_image``. ECU-side failures
    are in the result, as :meth:`gateway.Flasher.flash` reports them.
    """
    _trust_anchors(connection.bench, verify)  # before anything else: a configuration error
    prepare_flash(connection, ecu, image_name, yes=yes, ask=ask)
    flasher = bench_flasher(
        connection, ecu, verify=verify, confirm_image=confirm_image, on_progress=on_progress
    )
    return flasher.flash(image)


# ---------------------------------------------------------------------------- dry run


@dataclass(frozen=True)
class PlannedRequest:
    """One request of a flash, as it would be sent."""

    step: str
    to: str
    """``physical`` (the ECU's request id), ``functional`` (every ECU) or ``tester``."""
    request: str
    """Hex bytes; ``<...>`` stands for what only the ECU's answers decide."""
    note: str = ""


@dataclass(frozen=True)
class FlashPlan:
    """The UDS sequence a flash would send, computed without sending anything."""

    ecu: str
    request_id: int
    response_id: int
    functional_id: int
    image_bytes: int
    image_version: str
    block_length: int
    """maxNumberOfBlockLength expected; the ECU announces the real one."""
    transfer_blocks: int
    requests: tuple[PlannedRequest, ...]

    def lines(self) -> list[str]:
        """Return the plan as text, one request per line."""
        out = [
            f"dry run: flash {self.ecu} with image {self.image_version} "
            f"({self.image_bytes} bytes); nothing is sent",
            f"  physical requests to 0x{self.request_id:X} (replies from "
            f"0x{self.response_id:X}), functional ones to 0x{self.functional_id:X}",
        ]
        for request in self.requests:
            note = f"  # {request.note}" if request.note else ""
            out.append(f"  {request.step:<20} {request.to:<10} {request.request}{note}")
        return out


def _hex(request: Request, *, suppress: bool = False) -> str:
    if suppress:
        request.suppress_positive_response = True
    return bytes(request.get_payload()).hex(" ").upper()


def flash_plan(
    vehicle: VehicleSpec,
    ecu: EcuSpec,
    image: bytes,
    *,
    confirm: bool = True,
    verify: bool = True,
    tester_serial: bytes = TESTER_SERIAL,
    today: datetime.date | None = None,
) -> FlashPlan:
    """Return the requests :class:`gateway.Flasher` sends to flash ``image`` into ``ecu``.

    The transfer is counted in blocks of the ECU's expected maxNumberOfBlockLength
    (from the vehicle file); keys depend on the ECU's seeds and stay placeholders.
    """
    try:
        version = parse_image(image).header.version
    except ImageFormatError:
        version = "? (not a signed image)"
    codecs: dict[int | str, str | DidCodec | type[DidCodec]] = {
        did: codec for did, codec in DID_CODECS.items()
    }
    normal_messages = CommunicationType.from_byte(0x01)
    total = len(image)
    block_length = ecu.block_length()
    chunk = max(block_length - 2, 1)
    blocks = -(-total // chunk) if total else 0
    identity = _hex(
        services.ReadDataByIdentifier.make_request(
            [Did.APP_SOFTWARE_VERSION, Did.HARDWARE_ID, Did.BOOT_STATUS], codecs
        )
    )
    session = services.DiagnosticSessionControl.make_request
    seed_mode = services.SecurityAccess.Mode
    routine = services.RoutineControl.make_request
    start = services.RoutineControl.ControlType.startRoutine
    erase_record = bytes([ADDRESS_AND_LENGTH_FORMAT]) + struct.pack(">II", APP_ADDRESS, total)
    location = MemoryLocation(APP_ADDRESS, total, address_format=32, memorysize_format=32)
    crc = struct.pack(">I", zlib.crc32(image) & 0xFFFFFFFF)
    comm = services.CommunicationControl
    dtc = services.ControlDTCSetting.SettingType
    last = total - (blocks - 1) * chunk if blocks else 0
    first_counter = 1
    last_counter = blocks & 0xFF

    def key(level: int) -> str:
        seed = _hex(services.SecurityAccess.make_request(level, seed_mode.RequestSeed))
        send = _hex(services.SecurityAccess.make_request(level + 1, seed_mode.SendKey))
        return f"{seed} / {send} <key>"

    plan: list[PlannedRequest] = []
    if verify:
        plan.append(
            PlannedRequest("check image", "tester", "-", "signature, integrity (nothing sent)")
        )
    plan += [
        PlannedRequest("identify", "physical", identity, "version, hardware id, boot status"),
        PlannedRequest(
            "extended session", "functional", _hex(session(Session.EXTENDED), suppress=True)
        ),
        PlannedRequest("extended session", "physical", _hex(session(Session.EXTENDED))),
        PlannedRequest(
            "keepalive",
            "functional",
            _hex(services.TesterPresent.make_request(), suppress=True),
            "every 2 s until the end",
        ),
        PlannedRequest(
            "preconditions", "physical", _hex(routine(Routine.CHECK_PRECONDITIONS, start))
        ),
        PlannedRequest(
            "DTC setting off",
            "functional",
            _hex(services.ControlDTCSetting.make_request(dtc.off), suppress=True),
        ),
        PlannedRequest(
            "communication off",
            "functional",
            _hex(
                comm.make_request(comm.ControlType.disableRxAndTx, normal_messages), suppress=True
            ),
        ),
        PlannedRequest("programming session", "physical", _hex(session(Session.PROGRAMMING))),
        PlannedRequest("security access", "physical", key(SecurityLevel.PROGRAMMING)),
        PlannedRequest(
            "fingerprint",
            "physical",
            _hex(
                services.WriteDataByIdentifier.make_request(
                    Did.TESTER_SERIAL, tester_serial, codecs
                )
            ),
            "tester serial",
        ),
        PlannedRequest(
            "fingerprint",
            "physical",
            _hex(
                services.WriteDataByIdentifier.make_request(
                    Did.PROGRAMMING_DATE, bcd_date(today or datetime.date.today()), codecs
                )
            ),
            "programming date",
        ),
        PlannedRequest(
            "erase",
            "physical",
            _hex(routine(Routine.ERASE_MEMORY, start, erase_record)),
            f"{total} bytes at 0x{APP_ADDRESS:08X}",
        ),
        PlannedRequest(
            "request download",
            "physical",
            _hex(services.RequestDownload.make_request(location, DataFormatIdentifier(0, 0))),
        ),
        PlannedRequest(
            "transfer",
            "physical",
            f"36 {first_counter:02X} <{min(chunk, total)} bytes> ... 36 {last_counter:02X} "
            f"<{last} bytes>",
            f"{blocks} blocks of up to {chunk} bytes (maxNumberOfBlockLength {block_length} "
            "expected; the ECU announces its own)",
        ),
        PlannedRequest(
            "transfer exit", "physical", _hex(services.RequestTransferExit.make_request())
        ),
        PlannedRequest(
            "check memory",
            "physical",
            _hex(routine(Routine.CHECK_MEMORY, start, crc)),
            "CRC-32 of the image",
        ),
        PlannedRequest(
            "check dependencies",
            "physical",
            _hex(routine(Routine.CHECK_DEPENDENCIES, start)),
            "signature, hardware id, anti-rollback",
        ),
        PlannedRequest(
            "reset",
            "physical",
            _hex(services.ECUReset.make_request(services.ECUReset.ResetType.hardReset)),
        ),
        PlannedRequest(
            "verify",
            "physical",
            f"{_hex(services.TesterPresent.make_request())} ... then {identity}",
            "until the ECU answers after its boot",
        ),
    ]
    if confirm:
        plan += [
            PlannedRequest("confirm", "physical", _hex(session(Session.EXTENDED))),
            PlannedRequest("confirm", "physical", key(SecurityLevel.EXTENDED)),
            PlannedRequest(
                "confirm",
                "physical",
                _hex(routine(Routine.CONFIRM_IMAGE, start)),
                "anti-rollback counter rises",
            ),
            PlannedRequest("confirm", "physical", identity),
        ]
    plan += [
        PlannedRequest(
            "restore",
            "functional",
            _hex(comm.make_request(comm.ControlType.enableRxAndTx, normal_messages), suppress=True),
        ),
        PlannedRequest(
            "restore",
            "functional",
            _hex(services.ControlDTCSetting.make_request(dtc.on), suppress=True),
        ),
        PlannedRequest("restore", "functional", _hex(session(Session.DEFAULT), suppress=True)),
    ]
    return FlashPlan(
        ecu=ecu.name,
        request_id=ecu.request_id,
        response_id=ecu.response_id,
        functional_id=vehicle.functional_request_id,
        image_bytes=total,
        image_version=version,
        block_length=block_length,
        transfer_blocks=blocks,
        requests=tuple(plan),
    )


__all__ = [
    "Ask",
    "FlashPlan",
    "PlannedRequest",
    "bench_flasher",
    "check_flash_supply",
    "flash_on_bench",
    "flash_plan",
    "needs_confirmation",
    "prepare_flash",
    "terminal_ask",
]
