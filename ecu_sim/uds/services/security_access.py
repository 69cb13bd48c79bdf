"""SecurityAccess (0x27): levels 0x01/0x02 (extended) and 0x11/0x12 (programming)."""

from __future__ import annotations

import hmac

from udsoncan import Request, services

from ecu_sim.uds.server import (
    NON_DEFAULT_SESSIONS,
    NegativeResponse,
    Nrc,
    ServiceHandler,
    SubFunction,
    UdsServer,
)
from ota_formats.uds import KEY_SIZE, SEED_SIZE, SecurityLevel, Session, security_key

_EXTENDED = frozenset({Session.EXTENDED})
_PROGRAMMING = frozenset({Session.PROGRAMMING})


class SecurityAccess(ServiceHandler):
    """Seed and key; too many invalid keys lock the ECU out, across power cycles too."""

    service = services.SecurityAccess
    sessions = NON_DEFAULT_SESSIONS
    subfunctions = {
        SecurityLevel.EXTENDED: SubFunction(_EXTENDED),
        SecurityLevel.EXTENDED + 1: SubFunction(_EXTENDED),
        SecurityLevel.PROGRAMMING: SubFunction(_PROGRAMMING),
        SecurityLevel.PROGRAMMING + 1: SubFunction(_PROGRAMMING),
    }

    def handle(self, server: UdsServer, request: Request, payload: bytes) -> bytes:
        """Odd sub-functions request a seed, even ones send the key."""
        assert request.subfunction is not None
        sub = request.subfunction
        now = server.clock()
        if sub % 2:
            return self._request_seed(server, sub, payload, now)
        return self._send_key(server, sub - 1, payload, now)

    def _request_seed(self, server: UdsServer, level: int, payload: bytes, now: float) -> bytes:
        if len(payload) != 2:
            raise NegativeResponse(Nrc.INCORRECT_LENGTH)
        if server.lockout_active(now):
            raise NegativeResponse(Nrc.REQUIRED_TIME_DELAY_NOT_EXPIRED)
        if server.unlocked(level):
            return bytes([level]) + bytes(SEED_SIZE)
        seed = bytes(SEED_SIZE)
        while seed == bytes(SEED_SIZE):
            seed = server.random_bytes(SEED_SIZE)
        server.vars.seed = (level, seed)
        return bytes([level]) + seed

    def _send_key(self, server: UdsServer, level: int, payload: bytes, now: float) -> bytes:
        if len(payload) != 2 + KEY_SIZE:
            raise NegativeResponse(Nrc.INCORRECT_LENGTH)
        pending = server.vars.seed
        if pending is None or pending[0] != level:
            raise NegativeResponse(Nrc.REQUEST_SEQUENCE_ERROR, "no seed requested")
        server.vars.seed = None
        record = server.boot.record
        expected = security_key(server.spec.security_secret, pending[1])
        if hmac.compare_digest(expected, payload[2:]):
            server.vars.security_level = level
            if record.failed_key_attempts:
                record.failed_key_attempts = 0
                server.boot.save()
            return bytes([level + 1])
        record.failed_key_attempts += 1
        if record.failed_key_attempts >= server.spec.timing.security_max_attempts:
            server.start_lockout(now)
            raise NegativeResponse(Nrc.EXCEEDED_NUMBER_OF_ATTEMPTS)
        server.boot.save()
        raise NegativeResponse(Nrc.INVALID_KEY)
