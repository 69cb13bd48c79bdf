"""The UDS flasher: the ISO 14229 reprogramming sequence for one ECU.

::

    functional 10 83          every ECU to the extended session (no replies)
    10 03                     target in the extended session
    31 01 02 03               check programming preconditions
    functional 85 82, 28 83 01  DTC setting off, normal communication off
    10 02, 27 11 / 27 12      programming session, security access
    2E F1 98 / 2E F1 99       fingerprint (tester serial, date)
    31 01 FF 00 ...           erase (NRC 0x78 while it runs)
    34 00 44 ...              RequestDownload (maxNumberOfBlockLength honoured)
    36 nn ...                 TransferData, block counter 1..FF, 00, 01 ...
    37                        RequestTransferExit
    31 01 02 02 <crc32>       check memory
    31 01 FF 01               check programming dependencies (signature, hw, anti-rollback)
    11 01                     reset: the ECU tries its new image
    22 F1 89 / F1 A0          the ECU runs the new version?
    10 03, 27 01 / 27 02      extended session, security access   } unless
    31 01 FF 02               confirm image: anti-rollback rises  } confirm=False
    functional 28 80 01, 85 81, 10 81   restore the vehicle

A functional TesterPresent (3E 80) keeps every ECU in its session meanwhile.
The result says which step failed and why (NRC, timeout, status record) and
what the ECU runs afterwards. Clock and sleep are injected.

A new image runs on trial until it is confirmed: until then the ECU keeps its
stored anti-rollback counter, and :meth:`Flasher.activate_previous` can switch
it back to the image of its other bank. A multi-ECU update flashes with
``confirm=False`` and confirms every ECU (:meth:`Flasher.confirm_image`) only
once all of them run their new images.
"""

from __future__ import annotations

import datetime
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import NoReturn, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from udsoncan import MemoryLocation, services
from udsoncan.client import Client

from gateway.diag import DiagChannel, FunctionalRefused, nrc_name
from gateway.errors import DiagnosticError, DiagnosticTimeout, RoutineRefused
from ota_formats import ImageFormatError, OtaFormatError, parse_image
from ota_formats.uds import (
    ADDRESS_AND_LENGTH_FORMAT,
    APP_ADDRESS,
    DID_SIZES,
    NO_BANK,
    ActivatePreviousStatus,
    BootResult,
    BootStatus,
    CheckMemoryStatus,
    ConfirmStatus,
    DependencyStatus,
    Did,
    PreconditionFlags,
    Routine,
    SecurityLevel,
    Session,
    bank_name,
)

T = TypeVar("T")


class FlashStep(StrEnum):
    """The steps of a flash, in order."""

    CHECK_IMAGE = "check image"
    IDENTIFY = "identify"
    EXTENDED_SESSION = "extended session"
    PRECONDITIONS = "preconditions"
    DISABLE_DTC_SETTING = "DTC setting off"
    DISABLE_COMMUNICATION = "communication off"
    PROGRAMMING_SESSION = "programming session"
    SECURITY_ACCESS = "security access"
    FINGERPRINT = "fingerprint"
    ERASE = "erase"
    REQUEST_DOWNLOAD = "request download"
    TRANSFER = "transfer"
    TRANSFER_EXIT = "transfer exit"
    CHECK_MEMORY = "check memory"
    CHECK_DEPENDENCIES = "check dependencies"
    RESET = "reset"
    VERIFY = "verify"
    CONFIRM = "confirm"
    """Only with ``confirm=True``: the ECU raises its anti-rollback counter to the new image's."""


@dataclass(frozen=True)
class FlashProgress:
    """Reported at the start of each step and after each transferred block."""

    ecu: str
    step: FlashStep
    bytes_sent: int
    bytes_total: int


@dataclass(frozen=True)
class FlashFailure:
    """Where and why a flash failed."""

    step: FlashStep
    reason: str
    nrc: int | None = None
    timeout: bool = False
    status: int | None = None
    """The routine status record byte, when a routine reported the failure."""
    aborted: bool = False
    """The flash was stopped because ``should_abort`` gave a reason."""

    def __str__(self) -> str:
        return f"{self.step}: {self.reason}"


@dataclass
class FlashResult:
    """The outcome of one flash."""

    ecu: str
    image_version: str
    bytes_total: int
    ok: bool = False
    version_before: str | None = None
    version_after: str | None = None
    boot_status_after: BootStatus | None = None
    failure: FlashFailure | None = None
    duration_s: float = 0.0
    transfer_s: float = 0.0
    step_durations_s: dict[FlashStep, float] = field(default_factory=dict)
    retries: int = 0
    confirmed: bool = False
    """Whether the ECU confirmed the new image (its anti-rollback counter rose)."""

    @property
    def throughput_bps(self) -> float:
        """Bytes per second over the transfer (TransferData) phase."""
        return self.bytes_total / self.transfer_s if self.transfer_s > 0 else 0.0

    @property
    def outcome(self) -> str:
        """One line for a report."""
        if self.ok:
            return "flashed"
        assert self.failure is not None
        return f"failed at {self.failure}"

    @property
    def short_outcome(self) -> str:
        """A few words for a table cell."""
        if self.ok:
            return "flashed"
        failure = self.failure
        assert failure is not None
        if failure.aborted:
            return "aborted"
        if failure.step == FlashStep.CHECK_DEPENDENCIES and failure.status is not None:
            return "refused by ECU"
        if failure.step == FlashStep.CHECK_IMAGE:
            return "refused by tester"
        status = self.boot_status_after
        if (
            failure.step == FlashStep.VERIFY
            and status is not None
            and status.last_boot_result == BootResult.REVERTED
        ):
            return "did not boot"
        return f"failed: {failure.step}"


@dataclass(frozen=True)
class RollbackResult:
    """The outcome of :meth:`Flasher.activate_previous`."""

    ecu: str
    ok: bool
    """The ECU runs the image of the bank that was inactive, booted fine, nothing pending."""
    version_before: str | None
    version_after: str | None
    """What the ECU runs afterwards; ``None`` when it did not answer."""
    boot_status_after: BootStatus | None
    reason: str
    """Why it did not work; empty when ``ok``."""
    duration_s: float


class _StepFailed(Exception):
    def __init__(self, failure: FlashFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


ProgressCallback = Callable[[FlashProgress], None]
AbortCheck = Callable[[], str | None]
"""Returns a reason to stop the flash, or ``None`` to go on."""


def bcd_date(day: datetime.date) -> bytes:
    """Encode a date as 3 BCD bytes YY MM DD (DID 0xF199)."""
    return bytes(int(f"{v:02d}", 16) for v in (day.year % 100, day.month, day.day))


class Flasher:
    """Flashes signed images into one ECU over a :class:`~gateway.diag.DiagChannel`.

    With ``confirm`` (the default) a flash ends by confirming the new image, which
    raises the ECU's anti-rollback counter; without it the image stays on trial.
    ``should_abort`` is asked at the start of every step and after every
    TransferData block; a reason fails the flash there (``FlashFailure.aborted``)
    and the usual recovery runs. Once the ECU has accepted the image (from the
    reset step on), leaving the programming session boots it on trial whatever
    happens: ``version_after`` says what runs.
    """

    def __init__(
        self,
        channel: DiagChannel,
        *,
        on_progress: ProgressCallback | None = None,
        keepalive_interval_s: float = 2.0,
        boot_timeout_s: float = 5.0,
        boot_probe_s: float = 0.02,
        transfer_retries: int = 2,
        tester_serial: bytes = b"HILTESTER1",
        check_compatibility: bool = True,
        trust_anchors: Sequence[Ed25519PublicKey] | None = None,
        functional_listen_s: float | None = None,
        confirm: bool = True,
        should_abort: AbortCheck | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        today: Callable[[], datetime.date] = datetime.date.today,
    ) -> None:
        if len(tester_serial) != DID_SIZES[Did.TESTER_SERIAL]:
            raise ValueError(f"tester serial must have {DID_SIZES[Did.TESTER_SERIAL]} bytes")
        self.channel = channel
        self.on_progress = on_progress
        self.keepalive_interval_s = keepalive_interval_s
        self.boot_timeout_s = boot_timeout_s
        self.boot_probe_s = boot_probe_s
        self.transfer_retries = transfer_retries
        self.tester_serial = tester_serial
        self.check_compatibility = check_compatibility
        self.trust_anchors = None if trust_anchors is None else list(trust_anchors)
        self.functional_listen_s = functional_listen_s
        self.confirm = confirm
        self.should_abort = should_abort
        self.clock = clock
        self.sleep = sleep
        self.today = today
        self._keepalive_stop = threading.Event()
        self._keepalive_thread: threading.Thread | None = None
        self._current: tuple[FlashStep, float] | None = None
        self._active_before = NO_BANK
        self._sent = 0

    @property
    def ecu(self) -> str:
        """Name of the target ECU."""
        return self.channel.ecu.name

    # -- public ------------------------------------------------------------------------

    def read_identity(self) -> tuple[str, str, BootStatus]:
        """Return (software version, hardware id, boot status) of the ECU."""
        values = self.channel.call(
            lambda c: c.read_data_by_identifier(
                [Did.APP_SOFTWARE_VERSION, Did.HARDWARE_ID, Did.BOOT_STATUS]
            )
        ).service_data.values
        return (
            values[Did.APP_SOFTWARE_VERSION],
            values[Did.HARDWARE_ID],
            values[Did.BOOT_STATUS],
        )

    def flash(self, image: bytes) -> FlashResult:
        """Run the whole sequence; never raises for ECU-side failures (see the result)."""
        started = self.clock()
        try:
            header = parse_image(image).header
            version = header.version
        except ImageFormatError:
            header = None
            version = "?"
        result = FlashResult(ecu=self.ecu, image_version=version, bytes_total=len(image))
        self._current = None
        self._sent = 0
        comm_disabled = False
        try:
            self._step(result, FlashStep.CHECK_IMAGE, len(image))
            self._check_image(image)
            self._step(result, FlashStep.IDENTIFY, len(image))
            try:
                current, hardware, status = self.read_identity()
            except DiagnosticError as exc:
                raise self._failure(FlashStep.IDENTIFY, exc) from exc
            result.version_before = current
            self._active_before = status.active_bank
            if self.check_compatibility and header is not None and header.hardware_id != hardware:
                self._fail(
                    FlashStep.IDENTIFY,
                    f"image is for hardware {header.hardware_id!r}, the ECU is {hardware!r}",
                )
            comm_disabled = True
            self._program(result, image)
            result.ok = True
        except _StepFailed as failed:
            result.failure = failed.failure
        finally:
            self._step(result, None, len(image))
            self._stop_keepalive()
            if comm_disabled:
                self._restore(result)
            result.duration_s = self.clock() - started
        return result

    def confirm_image(self) -> None:
        """Confirm the image the ECU runs (routine 0xFF02): its anti-rollback counter rises.

        Extended session, security access 0x01, the routine, then the default session
        again. Confirming an image that is already confirmed is harmless. Raises
        :class:`~gateway.errors.DiagnosticError` (a :class:`~gateway.errors.RoutineRefused`
        for a status other than confirmed) saying which request failed.
        """
        try:
            status = self._secure_routine(Routine.CONFIRM_IMAGE)
            if status != ConfirmStatus.CONFIRMED:
                raise RoutineRefused(
                    f"the ECU did not confirm: {_status_text(ConfirmStatus, status)}",
                    routine=Routine.CONFIRM_IMAGE,
                    status=status,
                )
        except DiagnosticError as exc:
            raise _in_context(exc, f"{self.ecu}: confirm image") from exc
        finally:
            self._default_session()

    def activate_previous(self) -> RollbackResult:
        """Switch the ECU back to the image of its other bank and restart it.

        Extended session, security access 0x01, routine 0xFF03, hard reset; then wait
        for the boot and read what runs. The image booted this way runs on trial
        (unconfirmed), and the bank it replaces stays valid. Never raises for ECU-side
        failures: the result says what happened.
        """
        started = self.clock()
        version_before: str | None = None
        version_after: str | None = None
        status_after: BootStatus | None = None
        active_before = NO_BANK
        reason = ""
        try:
            try:
                version_before, _hardware, status_before = self.read_identity()
            except DiagnosticError as exc:
                raise _in_context(exc, "reading the identity") from exc
            active_before = status_before.active_bank
            status = self._secure_routine(Routine.ACTIVATE_PREVIOUS)
            if status != ActivatePreviousStatus.PENDING:
                raise RoutineRefused(
                    "the ECU refused to activate its previous image: "
                    + _status_text(ActivatePreviousStatus, status),
                    routine=Routine.ACTIVATE_PREVIOUS,
                    status=status,
                )
            try:
                self.channel.call(lambda c: c.ecu_reset(services.ECUReset.ResetType.hardReset))
            except DiagnosticError as exc:
                if not exc.timeout:
                    raise _in_context(exc, "ECU reset") from exc
                # The reply may be lost while the reset happened: the boot status will tell.
            version_after, status_after = self._await_boot(FlashStep.VERIFY)
        except DiagnosticError as exc:
            reason = str(exc)
        except _StepFailed as failed:
            reason = failed.failure.reason
        if reason and status_after is None:
            # Leave the session and say what runs (and whether a bank is left pending).
            self._default_session()
            try:
                version_after, _hardware, status_after = self.read_identity()
            except DiagnosticError:
                pass
        if not reason:
            assert status_after is not None
            switched = (
                status_after.active_bank not in (active_before, NO_BANK)
                and status_after.last_boot_result == BootResult.OK
                and status_after.pending_bank == NO_BANK
            )
            if not switched:
                reason = (
                    f"ECU runs {version_after!r} from bank {bank_name(status_after.active_bank)} "
                    f"after reset, expected the image of the other bank "
                    f"({describe_boot(status_after)})"
                )
        return RollbackResult(
            ecu=self.ecu,
            ok=not reason,
            version_before=version_before,
            version_after=version_after,
            boot_status_after=status_after,
            reason=reason,
            duration_s=self.clock() - started,
        )

    # -- the sequence -----------------------------------------------------------------------

    def _check_image(self, image: bytes) -> None:
        """Refuse, before touching the ECU, what the tester can already tell is wrong."""
        if not self.check_compatibility and self.trust_anchors is None:
            return
        try:
            parsed = parse_image(image)
            parsed.check_integrity()
            if self.trust_anchors is not None:
                parsed.check_signature(self.trust_anchors)
        except OtaFormatError as exc:
            self._fail(FlashStep.CHECK_IMAGE, f"the image does not verify: {exc}")

    def _program(self, result: FlashResult, image: bytes) -> None:
        total = len(image)

        self._step(result, FlashStep.EXTENDED_SESSION, total)
        self._functional(FlashStep.EXTENDED_SESSION, lambda c: c.change_session(Session.EXTENDED))
        self._call(FlashStep.EXTENDED_SESSION, lambda c: c.change_session(Session.EXTENDED))
        self._start_keepalive()

        self._step(result, FlashStep.PRECONDITIONS, total)
        status = self._routine(FlashStep.PRECONDITIONS, Routine.CHECK_PRECONDITIONS)
        if status != 0:
            flags = PreconditionFlags(status)
            names = ", ".join(f.name.lower().replace("_", " ") for f in flags if f.name) or "?"
            self._fail(
                FlashStep.PRECONDITIONS, f"programming preconditions not met: {names}", status
            )

        self._step(result, FlashStep.DISABLE_DTC_SETTING, total)
        self._report(FlashStep.DISABLE_COMMUNICATION, self._sent, total)
        # Both go out back to back; one P2 window then catches a refusal of either.
        try:
            self.channel.functional(
                lambda c: c.control_dtc_setting(services.ControlDTCSetting.SettingType.off),
                lambda c: c.communication_control(
                    services.CommunicationControl.ControlType.disableRxAndTx, 0x01
                ),
                listen_s=self._listen_s(),
            )
        except FunctionalRefused as exc:
            step = (
                FlashStep.DISABLE_DTC_SETTING
                if exc.sid == 0x85
                else FlashStep.DISABLE_COMMUNICATION
            )
            raise self._failure(step, exc) from exc
        except DiagnosticError as exc:
            raise self._failure(FlashStep.DISABLE_DTC_SETTING, exc) from exc

        self._step(result, FlashStep.PROGRAMMING_SESSION, total)
        self._call(FlashStep.PROGRAMMING_SESSION, lambda c: c.change_session(Session.PROGRAMMING))

        self._step(result, FlashStep.SECURITY_ACCESS, total)
        self._call(
            FlashStep.SECURITY_ACCESS, lambda c: c.unlock_security_access(SecurityLevel.PROGRAMMING)
        )

        self._step(result, FlashStep.FINGERPRINT, total)
        self._call(
            FlashStep.FINGERPRINT,
            lambda c: c.write_data_by_identifier(Did.TESTER_SERIAL, self.tester_serial),
        )
        self._call(
            FlashStep.FINGERPRINT,
            lambda c: c.write_data_by_identifier(Did.PROGRAMMING_DATE, bcd_date(self.today())),
        )

        self._step(result, FlashStep.ERASE, total)
        record = bytes([ADDRESS_AND_LENGTH_FORMAT]) + struct.pack(">II", APP_ADDRESS, total)
        status = self._routine(FlashStep.ERASE, Routine.ERASE_MEMORY, record)
        if status != 0:
            self._fail(FlashStep.ERASE, f"erase routine reported status 0x{status:02X}", status)

        self._step(result, FlashStep.REQUEST_DOWNLOAD, total)
        location = MemoryLocation(APP_ADDRESS, total, address_format=32, memorysize_format=32)
        reply = self._call(FlashStep.REQUEST_DOWNLOAD, lambda c: c.request_download(location))
        max_length = int(reply.service_data.max_length) if reply is not None else 0
        block = max_length - 2
        if block < 1:
            self._fail(
                FlashStep.REQUEST_DOWNLOAD, f"maxNumberOfBlockLength {max_length} is too small"
            )

        self._step(result, FlashStep.TRANSFER, total)
        transfer_started = self.clock()
        counter = 1
        for offset in range(0, total, block):
            chunk = image[offset : offset + block]
            self._transfer_block(result, counter, chunk)
            counter = (counter + 1) & 0xFF
            self._report(FlashStep.TRANSFER, min(offset + block, total), total)
            self._check_abort(FlashStep.TRANSFER)
        result.transfer_s = self.clock() - transfer_started

        self._step(result, FlashStep.TRANSFER_EXIT, total)
        self._call(FlashStep.TRANSFER_EXIT, lambda c: c.request_transfer_exit())

        self._step(result, FlashStep.CHECK_MEMORY, total)
        crc = struct.pack(">I", zlib.crc32(image) & 0xFFFFFFFF)
        status = self._routine(FlashStep.CHECK_MEMORY, Routine.CHECK_MEMORY, crc)
        if status != CheckMemoryStatus.CORRECT:
            self._fail(
                FlashStep.CHECK_MEMORY,
                f"CRC-32 of the ECU's memory differs from the image's (status 0x{status:02X})",
                status,
            )

        self._step(result, FlashStep.CHECK_DEPENDENCIES, total)
        status = self._routine(FlashStep.CHECK_DEPENDENCIES, Routine.CHECK_DEPENDENCIES)
        if status != DependencyStatus.ACCEPTED:
            try:
                why = DependencyStatus(status).name.lower().replace("_", " ")
            except ValueError:
                why = "unknown reason"
            self._fail(
                FlashStep.CHECK_DEPENDENCIES,
                f"the ECU refused the image: {why} (status 0x{status:02X})",
                status,
            )

        self._step(result, FlashStep.RESET, total)
        try:
            self.channel.call(lambda c: c.ecu_reset(services.ECUReset.ResetType.hardReset))
        except DiagnosticError as exc:
            if not exc.timeout:
                raise self._failure(FlashStep.RESET, exc) from exc
            # The reply may be lost while the reset happened: verification will tell.

        self._step(result, FlashStep.VERIFY, total)
        version, status_after = self._await_boot(FlashStep.VERIFY)
        result.version_after = version
        result.boot_status_after = status_after
        booted_new = (
            status_after.last_boot_result == BootResult.OK
            and status_after.pending_bank == NO_BANK
            and status_after.active_bank != self._active_before
        )
        if version != result.image_version or not booted_new:
            self._fail(
                FlashStep.VERIFY,
                f"ECU runs {version!r} from bank {bank_name(status_after.active_bank)} after "
                f"reset, expected {result.image_version!r} from the other bank "
                f"({describe_boot(status_after)})",
            )
        self._report(FlashStep.VERIFY, total, total)

        if not self.confirm:
            return
        self._step(result, FlashStep.CONFIRM, total)
        try:
            status = self._secure_routine(Routine.CONFIRM_IMAGE)
        except DiagnosticError as exc:
            raise self._failure(FlashStep.CONFIRM, exc) from exc
        if status != ConfirmStatus.CONFIRMED:
            self._fail(
                FlashStep.CONFIRM,
                f"the ECU did not confirm the image: {_status_text(ConfirmStatus, status)}",
                status,
            )
        result.confirmed = True
        try:
            # The counter rose: the result reports the boot status as the ECU keeps it.
            _version, _hardware, result.boot_status_after = self.read_identity()
        except DiagnosticError:
            pass  # confirmed all the same; the status read at VERIFY stands

    def _transfer_block(self, result: FlashResult, counter: int, chunk: bytes) -> None:
        first_timeout: DiagnosticError | None = None
        attempt = 0
        while True:
            try:
                self.channel.call(lambda c: c.transfer_data(counter, chunk))
                return
            except DiagnosticError as exc:
                if exc.timeout and attempt < self.transfer_retries:
                    # The reply may have been lost: send the same block (same counter) again.
                    first_timeout = first_timeout or exc
                    attempt += 1
                    result.retries += 1
                    continue
                context = f"block 0x{counter:02X}"
                if first_timeout is not None and not exc.timeout:
                    # The retry met an ECU that had lost the download (e.g. after a power cut).
                    raise _StepFailed(
                        FlashFailure(
                            FlashStep.TRANSFER,
                            f"{context}: {first_timeout}; the retry got {exc}",
                            nrc=exc.nrc,
                            timeout=True,
                        )
                    ) from exc
                raise self._failure(FlashStep.TRANSFER, exc, context) from exc

    def _await_boot(self, step: FlashStep) -> tuple[str, BootStatus]:
        """Wait for the ECU to answer again after a reset, then read what it runs."""
        deadline = self.clock() + self.boot_timeout_s
        while True:
            # A booting ECU is deaf: probe with short TesterPresent requests, not with P2.
            reply = self.channel.raw(b"\x3e\x00", self.boot_probe_s)
            if reply is not None and reply[:1] == b"\x7e":
                break
            if self.clock() >= deadline:
                raise _StepFailed(
                    FlashFailure(
                        step,
                        f"ECU did not answer within {self.boot_timeout_s:.1f} s after reset",
                        timeout=True,
                    )
                )
            if reply is not None:
                self.sleep(self.boot_probe_s)
        attempt = 0
        while True:
            try:
                version, _hw, status = self.read_identity()
                return version, status
            except DiagnosticError as exc:
                # On a slow link a late reply to an earlier read (the same service,
                # which the channel cannot tell from this one's; replies to other
                # services, such as the probes', it drops) can be taken for this
                # request's reply: ask again.
                if exc.nrc is None and not exc.timeout and attempt < 2:
                    attempt += 1
                    self.sleep(self.boot_probe_s)
                    continue
                raise self._failure(step, exc, "reading the version after reset") from exc

    def _restore(self, result: FlashResult) -> None:
        """Put the vehicle back: communication and DTC setting on, default sessions."""
        if result.failure is not None:
            self._recover(result)
        for action in (
            lambda c: c.communication_control(
                services.CommunicationControl.ControlType.enableRxAndTx, 0x01
            ),
            lambda c: c.control_dtc_setting(services.ControlDTCSetting.SettingType.on),
            lambda c: c.change_session(Session.DEFAULT),
        ):
            try:
                self.channel.functional(action)
            except DiagnosticError:
                pass

    def _recover(self, result: FlashResult) -> None:
        """After a failure: restart the ECU out of its bootloader and record what it runs."""
        if result.failure is not None and result.failure.step not in (
            FlashStep.VERIFY,
            FlashStep.CONFIRM,
            FlashStep.IDENTIFY,
            FlashStep.EXTENDED_SESSION,
            FlashStep.PRECONDITIONS,
        ):
            try:
                with self.channel.timeouts(0.5):
                    self.channel.call(lambda c: c.ecu_reset(services.ECUReset.ResetType.hardReset))
            except DiagnosticError:
                pass
        if result.version_after is None:
            try:
                version, status = self._await_boot(FlashStep.VERIFY)
            except _StepFailed:
                return
            result.version_after = version
            result.boot_status_after = status

    # -- helpers -------------------------------------------------------------------------------

    def _call(self, step: FlashStep, action: Callable[[Client], T]) -> T:
        try:
            return self.channel.call(action)
        except DiagnosticError as exc:
            raise self._failure(step, exc) from exc

    def _functional(self, step: FlashStep, action: Callable[..., object]) -> None:
        try:
            self.channel.functional(action)
        except DiagnosticError as exc:
            raise self._failure(step, exc) from exc

    def _listen_s(self) -> float:
        """How long to wait for a refusal of a functional request: the target's P2."""
        if self.functional_listen_s is not None:
            return self.functional_listen_s
        return self.channel.ecu.timing.p2_ms / 1000

    def _secure_routine(self, routine: int) -> int:
        """Run ``routine`` in the extended session at security level 0x01; return its status.

        Raises :class:`DiagnosticError` naming the request that failed.
        """
        requests: tuple[tuple[str, Callable[[Client], object]], ...] = (
            ("extended session", lambda c: c.change_session(Session.EXTENDED)),
            ("security access", lambda c: c.unlock_security_access(SecurityLevel.EXTENDED)),
        )
        for what, action in requests:
            try:
                self.channel.call(action)
            except DiagnosticError as exc:
                raise _in_context(exc, what) from exc
        name = f"routine 0x{routine:04X}"
        try:
            reply = self.channel.call(lambda c: c.start_routine(routine))
        except DiagnosticError as exc:
            raise _in_context(exc, name) from exc
        record = reply.service_data.routine_status_record if reply is not None else None
        if not record:
            raise DiagnosticError(f"{name} returned no status record")
        return int(record[0])

    def _default_session(self) -> None:
        """Back to the default session, as far as the ECU answers (a clean-up step)."""
        try:
            self.channel.call(lambda c: c.change_session(Session.DEFAULT))
        except DiagnosticError:
            pass

    def _check_abort(self, step: FlashStep) -> None:
        if self.should_abort is None:
            return
        reason = self.should_abort()
        if reason is not None:
            raise _StepFailed(FlashFailure(step, f"aborted: {reason}", aborted=True))

    def _routine(self, step: FlashStep, routine: int, record: bytes = b"") -> int:
        reply = self._call(step, lambda c: c.start_routine(routine, data=record))
        status_record = reply.service_data.routine_status_record if reply is not None else None
        if not status_record:
            self._fail(step, f"routine 0x{routine:04X} returned no status record")
        return int(status_record[0])

    def _failure(self, step: FlashStep, exc: DiagnosticError, context: str = "") -> _StepFailed:
        text = f"{context}: {exc}" if context else str(exc)
        return _StepFailed(FlashFailure(step, text, nrc=exc.nrc, timeout=exc.timeout))

    def _fail(self, step: FlashStep, reason: str, status: int | None = None) -> NoReturn:
        raise _StepFailed(FlashFailure(step, reason, status=status))

    def _step(self, result: FlashResult, step: FlashStep | None, total: int) -> None:
        """Close the running step's timing and start ``step`` (``None``: just close)."""
        now = self.clock()
        if self._current is not None:
            previous, since = self._current
            result.step_durations_s[previous] = (
                result.step_durations_s.get(previous, 0.0) + now - since
            )
        self._current = None if step is None else (step, now)
        if step is not None:
            self._report(step, self._sent, total)
            self._check_abort(step)

    def _report(self, step: FlashStep, sent: int, total: int) -> None:
        self._sent = sent
        if self.on_progress is not None:
            self.on_progress(FlashProgress(self.ecu, step, sent, total))

    # -- keepalive -------------------------------------------------------------------------------

    def _start_keepalive(self) -> None:
        # A fresh event per run: a straggling thread of an earlier run keeps its own, set one.
        self._keepalive_stop = threading.Event()
        thread = threading.Thread(
            target=self._keepalive, args=(self._keepalive_stop,), name=f"tp-{self.ecu}", daemon=True
        )
        thread.start()
        self._keepalive_thread = thread

    def _stop_keepalive(self) -> None:
        self._keepalive_stop.set()
        if self._keepalive_thread is not None:
            self._keepalive_thread.join(2.0)
            self._keepalive_thread = None

    def _keepalive(self, stop: threading.Event) -> None:
        while not stop.wait(self.keepalive_interval_s):
            try:
                self.channel.functional(lambda c: c.tester_present())
            except DiagnosticError:
                pass


def _status_text(kind: type[IntEnum], status: int) -> str:
    """Name a routine status record byte, e.g. ``rollback refused (status 0x02)``."""
    try:
        name = kind(status).name.lower().replace("_", " ")
    except ValueError:
        name = "unknown status"
    return f"{name} (status 0x{status:02X})"


def _in_context(exc: DiagnosticError, context: str) -> DiagnosticError:
    """Return the same failure, its message prefixed with ``context`` (raise it ``from``)."""
    message = f"{context}: {exc}"
    if exc.timeout:
        return DiagnosticTimeout(message)
    if isinstance(exc, RoutineRefused):
        return RoutineRefused(message, routine=exc.routine, status=exc.status)
    return DiagnosticError(message, nrc=exc.nrc)


def describe_boot(status: BootStatus | None) -> str:
    """Explain a boot status record in words."""
    if status is None:
        return "boot status unknown"
    try:
        result = BootResult(status.last_boot_result)
    except ValueError:
        return f"last boot result 0x{status.last_boot_result:02X}"
    active = bank_name(status.active_bank)
    if result == BootResult.REVERTED:
        return f"the new image failed its trial boot; bank {active} runs the previous image"
    if result == BootResult.ACTIVE_INVALID:
        return f"the active image was corrupt; bank {active} was booted instead"
    if result == BootResult.NO_VALID_IMAGE:
        return "no valid application: the ECU stays in its bootloader"
    return f"booted bank {active}"


__all__ = [
    "FlashFailure",
    "FlashProgress",
    "FlashResult",
    "FlashStep",
    "Flasher",
    "RollbackResult",
    "bcd_date",
    "describe_boot",
    "nrc_name",
]
