"""RoutineControl (0x31): the programming routines, confirm image and activate previous."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from udsoncan import Request, services

from ecu_sim.flash import ConditionsNotCorrect, OutOfRange, SequenceError
from ecu_sim.uds.server import (
    NON_DEFAULT_SESSIONS,
    NegativeResponse,
    Nrc,
    Pending,
    ServiceHandler,
    SubFunction,
    UdsServer,
)
from ota_formats.uds import ADDRESS_AND_LENGTH_FORMAT, Routine, SecurityLevel, Session

_CONTROL = services.RoutineControl.ControlType

# Where a routine may run: each session it is available in, with the security level it needs.
_PROGRAMMING_UNLOCKED: Mapping[Session, int | None] = {
    Session.PROGRAMMING: SecurityLevel.PROGRAMMING
}
_NON_DEFAULT_UNLOCKED: Mapping[Session, int | None] = {
    Session.EXTENDED: SecurityLevel.EXTENDED,
    Session.PROGRAMMING: SecurityLevel.PROGRAMMING,
}
_NON_DEFAULT_OPEN: Mapping[Session, int | None] = dict.fromkeys(NON_DEFAULT_SESSIONS)


@dataclass(frozen=True)
class _RoutineRule:
    security: Mapping[Session, int | None]
    """The sessions the routine is available in, each with the level it needs (or ``None``)."""
    record_size: int
    start: Callable[[UdsServer, bytes], bytes | Pending]


def _erase(server: UdsServer, record: bytes) -> bytes | Pending:
    if record[0] != ADDRESS_AND_LENGTH_FORMAT:
        raise NegativeResponse(Nrc.REQUEST_OUT_OF_RANGE, "addressAndLengthFormatIdentifier")
    address, size = struct.unpack(">II", record[1:9])
    try:
        # The bank is marked erased at once; the answer comes when the erase time is over.
        server.boot.erase(address, size)
    except OutOfRange as exc:
        raise NegativeResponse(Nrc.REQUEST_OUT_OF_RANGE, str(exc)) from exc
    slow = server.faults.take_slow_erase()
    duration = slow.duration_s if slow else server.spec.timing.erase_time_ms / 1000
    interval = slow.pending_interval_s if slow else None
    return Pending(duration, lambda: b"\x00", interval)


def _check_memory(server: UdsServer, record: bytes) -> bytes:
    try:
        return bytes([server.boot.check_memory(int.from_bytes(record, "big"))])
    except SequenceError as exc:
        raise NegativeResponse(Nrc.REQUEST_SEQUENCE_ERROR, str(exc)) from exc


def _check_dependencies(server: UdsServer, record: bytes) -> bytes:
    try:
        return bytes([server.boot.check_dependencies()])
    except SequenceError as exc:
        raise NegativeResponse(Nrc.REQUEST_SEQUENCE_ERROR, str(exc)) from exc


def _check_preconditions(server: UdsServer, record: bytes) -> bytes:
    return bytes([server.preconditions()])


def _confirm_image(server: UdsServer, record: bytes) -> bytes:
    try:
        return bytes([server.boot.confirm_image()])
    except ConditionsNotCorrect as exc:
        raise NegativeResponse(Nrc.CONDITIONS_NOT_CORRECT, str(exc)) from exc


def _activate_previous(server: UdsServer, record: bytes) -> bytes:
    return bytes([server.boot.activate_previous()])


ROUTINES: dict[int, _RoutineRule] = {
    Routine.ERASE_MEMORY: _RoutineRule(_PROGRAMMING_UNLOCKED, 9, _erase),
    Routine.CHECK_MEMORY: _RoutineRule(_PROGRAMMING_UNLOCKED, 4, _check_memory),
    Routine.CHECK_DEPENDENCIES: _RoutineRule(_PROGRAMMING_UNLOCKED, 0, _check_dependencies),
    Routine.CHECK_PRECONDITIONS: _RoutineRule(_NON_DEFAULT_OPEN, 0, _check_preconditions),
    Routine.CONFIRM_IMAGE: _RoutineRule(_NON_DEFAULT_UNLOCKED, 0, _confirm_image),
    Routine.ACTIVATE_PREVIOUS: _RoutineRule(_NON_DEFAULT_UNLOCKED, 0, _activate_previous),
}


class RoutineControl(ServiceHandler):
    """startRoutine and requestRoutineResults; the reply carries a 1-byte status record."""

    service = services.RoutineControl
    sessions = NON_DEFAULT_SESSIONS
    subfunctions = {
        _CONTROL.startRoutine: SubFunction(),
        _CONTROL.requestRoutineResults: SubFunction(),
    }

    def handle(self, server: UdsServer, request: Request, payload: bytes) -> bytes | Pending:
        """Check length, routine in session, security, record length, sequence; then run."""
        if len(payload) < 4:
            raise NegativeResponse(Nrc.INCORRECT_LENGTH)
        assert request.subfunction is not None
        control = request.subfunction
        rid = int.from_bytes(payload[2:4], "big")
        rule = ROUTINES.get(rid)
        if rule is None or server.session not in rule.security:
            raise NegativeResponse(Nrc.REQUEST_OUT_OF_RANGE, f"routine 0x{rid:04X}")
        level = rule.security[server.session]
        if level is not None and not server.unlocked(level):
            raise NegativeResponse(Nrc.SECURITY_ACCESS_DENIED)
        echo = bytes([control]) + payload[2:4]
        if control == _CONTROL.requestRoutineResults:
            if len(payload) != 4:
                raise NegativeResponse(Nrc.INCORRECT_LENGTH)
            if rid not in server.vars.routine_results:
                raise NegativeResponse(Nrc.REQUEST_SEQUENCE_ERROR, "routine never started")
            return echo + server.vars.routine_results[rid]
        record = payload[4:]
        if len(record) != rule.record_size:
            raise NegativeResponse(Nrc.INCORRECT_LENGTH)
        result = rule.start(server, record)
        if isinstance(result, Pending):
            finish = result.complete

            def complete() -> bytes:
                status = finish()
                server.vars.routine_results[rid] = status
                return echo + status

            return Pending(result.duration_s, complete, result.pending_interval_s)
        server.vars.routine_results[rid] = result
        return echo + result
