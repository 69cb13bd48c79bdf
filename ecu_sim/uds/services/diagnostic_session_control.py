"""DiagnosticSessionControl (0x10)."""

from __future__ import annotations

import struct

from udsoncan import Request, services

from ecu_sim.uds.server import (
    ALL_SESSIONS,
    NegativeResponse,
    Nrc,
    ServiceHandler,
    SubFunction,
    UdsServer,
)
from ota_formats.uds import Session


class DiagnosticSessionControl(ServiceHandler):
    """Session changes; the programming session is reached from the extended one only."""

    service = services.DiagnosticSessionControl
    subfunctions = {
        Session.DEFAULT: SubFunction(ALL_SESSIONS),
        Session.PROGRAMMING: SubFunction(frozenset({Session.EXTENDED, Session.PROGRAMMING})),
        Session.EXTENDED: SubFunction(frozenset({Session.DEFAULT, Session.EXTENDED})),
    }

    def handle(self, server: UdsServer, request: Request, payload: bytes) -> bytes:
        """Switch session and announce P2 / P2* (ms, 10 ms units)."""
        if len(payload) != 2:
            raise NegativeResponse(Nrc.INCORRECT_LENGTH)
        assert request.subfunction is not None
        target = Session(request.subfunction)
        if target == Session.PROGRAMMING and server.preconditions():
            raise NegativeResponse(Nrc.CONDITIONS_NOT_CORRECT, "programming preconditions")
        server.change_session(target)
        timing = server.spec.timing
        return bytes([target]) + struct.pack(">HH", timing.p2_ms, timing.p2_star_ms // 10)
