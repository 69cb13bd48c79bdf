"""The UDS (ISO 14229-1) server of one simulated ECU: pure logic, clock injected.

:meth:`UdsServer.handle` takes one request payload (already reassembled by
ISO-TP) and returns the responses to send, each with the time it is due;
:meth:`UdsServer.poll` returns what timers produce (NRC 0x78 reminders, the
end of a slow operation, S3 expiry, power restore). No threads and no
``time.time()`` in here: a threaded endpoint, a SimPy process or a test with a
fake clock drives the same code.

Requests are parsed with udsoncan's :class:`~udsoncan.Request` and answered
with its :class:`~udsoncan.Response`; each service lives in its own module of
:mod:`ecu_sim.uds.services` and raises :class:`NegativeResponse` for an NRC.
The general checks run in the order of ISO 14229-1 (2020) figure 5: service
supported, supported in the active session, service security, minimum length,
sub-function supported, sub-function in the active session, sub-function
security; then the service's own checks.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from udsoncan import Request, Response
from udsoncan.BaseService import BaseService

from ecu_sim.errors import EcuSimError, NvmError
from ecu_sim.faults import FaultInjector
from ecu_sim.flash import Bootloader, BootReport
from ecu_sim.nvm import Nvm
from ecu_sim.state import Ignition, VehicleState
from ota_formats.uds import (
    DTC_BOOT_REVERTED,
    DTC_IMAGE_INVALID,
    DTC_STATUS_RECORDED,
    PreconditionFlags,
    Session,
)
from ota_formats.vehicle import EcuSpec, VehicleSpec

log = logging.getLogger(__name__)

ALL_SESSIONS = frozenset(Session)
NON_DEFAULT_SESSIONS = frozenset({Session.EXTENDED, Session.PROGRAMMING})

FUNCTIONALLY_SUPPRESSED = frozenset({0x11, 0x12, 0x31, 0x7E, 0x7F})
"""NRCs a server does not send in reply to a functionally addressed request."""

RESPONSE_PENDING = 0x78
BUSY_REPEAT_REQUEST = 0x21
TESTER_PRESENT_SID = 0x3E


class Nrc:
    """Negative response codes used by the simulated ECUs (ISO 14229-1 annex A)."""

    GENERAL_REJECT = 0x10
    SERVICE_NOT_SUPPORTED = 0x11
    SUB_FUNCTION_NOT_SUPPORTED = 0x12
    INCORRECT_LENGTH = 0x13
    RESPONSE_TOO_LONG = 0x14
    BUSY_REPEAT_REQUEST = 0x21
    CONDITIONS_NOT_CORRECT = 0x22
    REQUEST_SEQUENCE_ERROR = 0x24
    REQUEST_OUT_OF_RANGE = 0x31
    SECURITY_ACCESS_DENIED = 0x33
    INVALID_KEY = 0x35
    EXCEEDED_NUMBER_OF_ATTEMPTS = 0x36
    REQUIRED_TIME_DELAY_NOT_EXPIRED = 0x37
    UPLOAD_DOWNLOAD_NOT_ACCEPTED = 0x70
    GENERAL_PROGRAMMING_FAILURE = 0x72
    WRONG_BLOCK_SEQUENCE_COUNTER = 0x73
    RESPONSE_PENDING = 0x78
    SUB_FUNCTION_NOT_SUPPORTED_IN_ACTIVE_SESSION = 0x7E
    SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION = 0x7F
    VOLTAGE_TOO_LOW = 0x93


class NegativeResponse(EcuSimError):
    """Raised by a service handler to answer with ``7F SID code``."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"NRC 0x{code:02X}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class SubFunction:
    """Where a sub-function is available and which security level it needs."""

    sessions: frozenset[Session] = ALL_SESSIONS
    security: int | None = None


@dataclass
class Pending:
    """A slow operation: the final response is ``complete()`` after ``duration_s``."""

    duration_s: float
    complete: Callable[[], bytes]
    pending_interval_s: float | None = None


class ServiceHandler(ABC):
    """One UDS service: its udsoncan class, where it is available and its own checks."""

    service: ClassVar[type[BaseService]]
    sessions: ClassVar[frozenset[Session]] = ALL_SESSIONS
    security: ClassVar[int | None] = None
    subfunctions: ClassVar[Mapping[int, SubFunction] | None] = None
    """``None`` for services without a sub-function byte."""

    @abstractmethod
    def handle(self, server: UdsServer, request: Request, payload: bytes) -> bytes | Pending:
        """Return the positive response data (after the SID) or a :class:`Pending`."""


@dataclass(frozen=True)
class Outgoing:
    """A response payload and the clock time it is due."""

    payload: bytes
    at: float


@dataclass
class _Operation:
    service: type[BaseService]
    sid: int
    complete_at: float
    next_pending_at: float
    interval_s: float
    complete: Callable[[], bytes]
    suppress: bool
    functional: bool
    drop: bool
    delay_s: float
    pending_sent: bool = False


@dataclass
class _Volatile:
    session: Session = Session.DEFAULT
    security_level: int | None = None
    seed: tuple[int, bytes] | None = None
    comm_tx_enabled: bool = True
    comm_rx_enabled: bool = True
    dtc_setting_on: bool = True
    last_request_at: float = 0.0
    routine_results: dict[int, bytes] = field(default_factory=dict)


class UdsServer:
    """The diagnostic server, bootloader and power state of one ECU."""

    def __init__(
        self,
        spec: EcuSpec,
        vehicle: VehicleSpec,
        nvm: Nvm,
        state: VehicleState,
        faults: FaultInjector,
        clock: Callable[[], float],
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        from ecu_sim.uds.services import HANDLERS  # the services import this module

        self.spec = spec
        self.vehicle = vehicle
        self.nvm = nvm
        self.state = state
        self.faults = faults
        self.clock = clock
        self.random_bytes = random_bytes
        self.handlers: Mapping[int, ServiceHandler] = HANDLERS
        self.trust_anchors = vehicle.trust_anchor_keys()
        self.powered = False
        self.booting_until = 0.0
        self.app_valid = False
        self.last_boot: BootReport | None = None
        self.bootloader: Bootloader | None = None
        self.vars = _Volatile()
        self._operation: _Operation | None = None
        self._lockout_until: float | None = None
        self._restore_at: float | None = None
        self._reset_requested = False
        self.power_cuts = 0

    # -- power and boot -----------------------------------------------------------

    @property
    def boot(self) -> Bootloader:
        """The bootloader; only while powered."""
        if self.bootloader is None:
            raise EcuSimError(f"ECU {self.spec.name} is powered off")
        return self.bootloader

    def power_on(self) -> BootReport:
        """Apply power: load NVM, boot, stay silent for the boot time."""
        if self.powered:
            raise EcuSimError(f"ECU {self.spec.name} is already powered")
        self._restore_at = None
        self.bootloader = Bootloader(self.spec, self.nvm, self.trust_anchors, self.faults)
        self.powered = True
        now = self.clock()
        if self.bootloader.record.security_lockout:
            # The delay restarts at power-up: power cycling must not shorten a lockout.
            self._lockout_until = now + self.spec.timing.security_lockout_s
        return self._boot(now)

    def power_off(self, restore_after_s: float | None = None) -> None:
        """Remove power: everything volatile is lost; NVM keeps what was written."""
        if self.bootloader is not None:
            self.bootloader.abort_programming()
        self.bootloader = None
        self.powered = False
        self.app_valid = False
        self._operation = None
        self._lockout_until = None
        self.vars = _Volatile()
        now = self.clock()
        self._restore_at = None if restore_after_s is None else now + restore_after_s

    def _boot(self, now: float) -> BootReport:
        self.vars = _Volatile(last_request_at=now)
        self._operation = None
        report = self.boot.boot()
        self.last_boot = report
        self.app_valid = report.app_valid
        self.booting_until = now + report.attempts * self.spec.timing.boot_time_ms / 1000
        return report

    def reset(self) -> BootReport:
        """Reset the ECU as ECUReset does (power stays on)."""
        return self._boot(self.clock())

    def is_booting(self, now: float | None = None) -> bool:
        """Whether the ECU is still starting up and deaf to requests."""
        return (self.clock() if now is None else now) < self.booting_until

    @property
    def app_transmitting(self) -> bool:
        """Whether the application's cyclic frames are on the bus now."""
        return (
            self.powered
            and self.app_valid
            and not self.is_booting()
            and self.vars.session != Session.PROGRAMMING
            and self.vars.comm_tx_enabled
        )

    # -- facts handlers use -------------------------------------------------------

    @property
    def session(self) -> Session:
        """The active diagnostic session."""
        return self.vars.session

    def unlocked(self, level: int) -> bool:
        """Whether security level ``level`` (the requestSeed value) is unlocked."""
        return self.vars.security_level == level

    def change_session(self, session: Session) -> None:
        """Switch session; leaving the programming session restarts the ECU."""
        previous = self.vars.session
        if previous == Session.PROGRAMMING and session != Session.PROGRAMMING:
            self._reset_requested = True
            return
        if session == Session.PROGRAMMING and previous != Session.PROGRAMMING:
            self.boot.abort_programming()
        self.vars.session = session
        self.vars.security_level = None
        self.vars.seed = None
        if session == Session.DEFAULT:
            self.vars.comm_tx_enabled = True
            self.vars.comm_rx_enabled = True
            self.vars.dtc_setting_on = True

    def request_reset(self) -> None:
        """Restart the ECU once the current response has been produced."""
        self._reset_requested = True

    def lockout_active(self, now: float) -> bool:
        """Whether the SecurityAccess delay is running; clears an expired lockout."""
        if self._lockout_until is not None and now < self._lockout_until:
            return True
        if self._lockout_until is not None or self.boot.record.security_lockout:
            self._lockout_until = None
            rec = self.boot.record
            if rec.security_lockout:
                rec.security_lockout = False
                rec.failed_key_attempts = 0
                self.boot.save()
        return False

    def start_lockout(self, now: float) -> None:
        """Begin the SecurityAccess delay after too many invalid keys."""
        self._lockout_until = now + self.spec.timing.security_lockout_s
        self.boot.record.security_lockout = True
        self.boot.save()

    def preconditions(self) -> PreconditionFlags:
        """Return the programming preconditions that do not hold (``NONE`` when all do)."""
        snap = self.state.snapshot()
        flags = PreconditionFlags.NONE
        if snap["vehicle_speed_kph"] > 0.5:
            flags |= PreconditionFlags.VEHICLE_MOVING
        if snap["ignition"] != Ignition.ON:
            flags |= PreconditionFlags.IGNITION_NOT_ON
        if snap["battery_voltage_v"] < self.spec.min_programming_voltage_v:
            flags |= PreconditionFlags.VOLTAGE_LOW
        if snap["engine_speed_rpm"] > 0:
            flags |= PreconditionFlags.ENGINE_RUNNING
        return flags

    def set_dtc(self, code: int, status: int = DTC_STATUS_RECORDED) -> bool:
        """Record a DTC unless DTC setting is off; returns whether it was recorded."""
        if not self.vars.dtc_setting_on:
            return False
        self.boot.record_dtc(code, status)
        return True

    def supported_dtcs(self) -> list[int]:
        """DTC numbers this ECU knows: its own and the bootloader's."""
        codes = {d.code for d in self.spec.dtcs} | {DTC_BOOT_REVERTED, DTC_IMAGE_INVALID}
        return sorted(codes | set(self.boot.record.dtcs))

    # -- the request path ---------------------------------------------------------------

    def handle(self, payload: bytes, *, functional: bool = False) -> list[Outgoing]:
        """Process one request; return the responses due (maybe none)."""
        now = self.clock()
        if not self.powered or self.is_booting(now) or not payload:
            return []
        sid = payload[0]
        self.vars.last_request_at = now
        if self._operation is not None and sid != TESTER_PRESENT_SID:
            # 0x21 is not among the NRCs suppressed for functional requests.
            return [Outgoing(_negative(sid, BUSY_REPEAT_REQUEST), now)]
        forced = self.faults.take_nrc(sid)
        suppress = False
        try:
            if forced is not None:
                raise NegativeResponse(forced, "forced by fault injection")
            request, handler = self._check(payload)
            service = handler.service
            suppress = request.suppress_positive_response
            result = handler.handle(self, request, payload)
            if not self.powered:
                return []
        except NegativeResponse as nrc:
            self._after_request(now)
            if functional and nrc.code in FUNCTIONALLY_SUPPRESSED:
                return []
            return self._emit(sid, _negative(sid, nrc.code), now)
        except Exception as exc:
            # An ECU answers rather than dies: 0x72 for its flash/NVM, 0x10 for anything else.
            log.exception("ECU %s: request %s failed", self.spec.name, payload[:8].hex())
            self._after_request(now)
            if not self.powered:
                return []
            return self._emit(sid, _negative(sid, _internal_failure(exc)), now)
        if isinstance(result, Pending):
            return self._start_operation(service, sid, result, suppress, functional, now)
        out = [] if suppress else self._emit(sid, _positive(service, result), now)
        self._after_request(now)
        return out

    def _check(self, payload: bytes) -> tuple[Request, ServiceHandler]:
        sid = payload[0]
        handler = self.handlers.get(sid)
        if handler is None:
            raise NegativeResponse(Nrc.SERVICE_NOT_SUPPORTED)
        if self.vars.session not in handler.sessions:
            raise NegativeResponse(Nrc.SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION)
        if handler.security is not None and not self.unlocked(handler.security):
            raise NegativeResponse(Nrc.SECURITY_ACCESS_DENIED)
        request = Request.from_payload(payload)
        if handler.subfunctions is not None:
            if len(payload) < 2:
                raise NegativeResponse(Nrc.INCORRECT_LENGTH)
            assert request.subfunction is not None
            rule = handler.subfunctions.get(request.subfunction)
            if rule is None:
                raise NegativeResponse(Nrc.SUB_FUNCTION_NOT_SUPPORTED)
            if self.vars.session not in rule.sessions:
                raise NegativeResponse(Nrc.SUB_FUNCTION_NOT_SUPPORTED_IN_ACTIVE_SESSION)
            if rule.security is not None and not self.unlocked(rule.security):
                raise NegativeResponse(Nrc.SECURITY_ACCESS_DENIED)
        return request, handler

    def _emit(self, sid: int, payload: bytes, now: float) -> list[Outgoing]:
        if self.faults.take_drop(sid):
            return []
        return [Outgoing(payload, now + self.faults.take_delay(sid))]

    def _after_request(self, now: float) -> None:
        if self._reset_requested and self.powered:
            self._reset_requested = False
            self._boot(now)

    def _start_operation(
        self,
        service: type[BaseService],
        sid: int,
        pending: Pending,
        suppress: bool,
        functional: bool,
        now: float,
    ) -> list[Outgoing]:
        interval = pending.pending_interval_s or (
            self.spec.timing.response_pending_interval_ms / 1000
        )
        op = _Operation(
            service=service,
            sid=sid,
            complete_at=now + pending.duration_s,
            next_pending_at=now + interval,
            interval_s=interval,
            complete=pending.complete,
            suppress=suppress,
            functional=functional,
            drop=self.faults.take_drop(sid),
            delay_s=self.faults.take_delay(sid),
        )
        self._operation = op
        out: list[Outgoing] = []
        if pending.duration_s >= self.spec.timing.p2_ms / 2000:
            # The final answer would miss P2: ask the tester to wait (and keep asking).
            op.pending_sent = True
            if not op.drop:
                out.append(Outgoing(_negative(sid, RESPONSE_PENDING), now))
        return out + self.poll()

    # -- timers ---------------------------------------------------------------------

    def poll(self) -> list[Outgoing]:
        """Return what is due now: 0x78 reminders, completed operations; run timeouts."""
        now = self.clock()
        if not self.powered:
            if self._restore_at is not None and now >= self._restore_at:
                self.power_on()
            return []
        out: list[Outgoing] = []
        op = self._operation
        if op is not None:
            if now >= op.complete_at:
                self._operation = None
                out.extend(self._finish(op, now))
            elif op.pending_sent and now >= op.next_pending_at:
                op.next_pending_at = now + op.interval_s
                if not op.drop:
                    out.append(Outgoing(_negative(op.sid, RESPONSE_PENDING), now))
        elif (
            self.vars.session != Session.DEFAULT
            and now - self.vars.last_request_at >= self.spec.timing.s3_ms / 1000
            and not self.is_booting(now)
        ):
            # S3 expired: back to the default session (and out of the bootloader).
            if self.vars.session == Session.PROGRAMMING:
                self._boot(now)
            else:
                self.change_session(Session.DEFAULT)
        return out

    def _finish(self, op: _Operation, now: float) -> list[Outgoing]:
        # S3 restarts when the final response goes out, not when the request came in.
        self.vars.last_request_at = now
        try:
            data = op.complete()
        except NegativeResponse as nrc:
            payload = _negative(op.sid, nrc.code)
            if op.functional and nrc.code in FUNCTIONALLY_SUPPRESSED and not op.pending_sent:
                self._after_request(now)
                return []
        except Exception as exc:
            log.exception("ECU %s: operation of service 0x%02X failed", self.spec.name, op.sid)
            payload = _negative(op.sid, _internal_failure(exc))
        else:
            if op.suppress and not op.pending_sent:
                self._after_request(now)
                return []
            payload = _positive(op.service, data)
        self._after_request(now)
        if op.drop or not self.powered:
            return []
        return [Outgoing(payload, now + op.delay_s)]

    def next_deadline(self) -> float | None:
        """Return the clock time of the next thing :meth:`poll` has to do, if any."""
        if not self.powered:
            return self._restore_at
        candidates: list[float] = []
        op = self._operation
        if op is not None:
            candidates.append(op.complete_at)
            if op.pending_sent:
                candidates.append(op.next_pending_at)
        elif self.vars.session != Session.DEFAULT:
            candidates.append(self.vars.last_request_at + self.spec.timing.s3_ms / 1000)
        if self.booting_until > self.clock():
            candidates.append(self.booting_until)
        return min(candidates) if candidates else None

    def cut_power(self, restore_after_s: float | None) -> None:
        """Lose power now (fault injection)."""
        self.power_cuts += 1
        self.power_off(restore_after_s)


def _internal_failure(exc: Exception) -> int:
    """Return the NRC for an unexpected failure inside the ECU."""
    return Nrc.GENERAL_PROGRAMMING_FAILURE if isinstance(exc, NvmError) else Nrc.GENERAL_REJECT


def _positive(service: type[BaseService], data: bytes) -> bytes:
    payload: bytes = Response(service, code=Response.Code.PositiveResponse, data=data).get_payload()
    return payload


def _negative(sid: int, code: int) -> bytes:
    service = BaseService.from_request_id(sid)
    if service is None:
        # No udsoncan class exists for this SID; the 3-byte form is all there is.
        return bytes((0x7F, sid, code))
    payload: bytes = Response(service, code=code).get_payload()
    return payload
