"""WriteDataByIdentifier (0x2E)."""

from __future__ import annotations

import re

from udsoncan import Request, services

from ecu_sim.uds.server import (
    NON_DEFAULT_SESSIONS,
    NegativeResponse,
    Nrc,
    ServiceHandler,
    UdsServer,
)
from ota_formats.uds import DID_SIZES, Did, SecurityLevel, Session

_VIN = re.compile(rb"^[A-HJ-NPR-Z0-9]{17}$")

WRITABLE: dict[int, tuple[Session, int]] = {
    Did.VIN: (Session.EXTENDED, SecurityLevel.EXTENDED),
    Did.TESTER_SERIAL: (Session.PROGRAMMING, SecurityLevel.PROGRAMMING),
    Did.PROGRAMMING_DATE: (Session.PROGRAMMING, SecurityLevel.PROGRAMMING),
}
"""Writable DIDs: the session they are writable in and the security level they need."""


class WriteDataByIdentifier(ServiceHandler):
    """The VIN (extended session) and the programming fingerprint (programming session)."""

    service = services.WriteDataByIdentifier
    sessions = NON_DEFAULT_SESSIONS

    def handle(self, server: UdsServer, request: Request, payload: bytes) -> bytes:
        """Check length, DID in session, security, record length and content; then write."""
        if len(payload) < 4:
            raise NegativeResponse(Nrc.INCORRECT_LENGTH)
        did = int.from_bytes(payload[1:3], "big")
        rule = WRITABLE.get(did)
        if rule is None or rule[0] != server.session:
            raise NegativeResponse(Nrc.REQUEST_OUT_OF_RANGE, f"DID 0x{did:04X} not writable")
        if not server.unlocked(rule[1]):
            raise NegativeResponse(Nrc.SECURITY_ACCESS_DENIED)
        value = payload[3:]
        if len(value) != DID_SIZES[did]:
            raise NegativeResponse(Nrc.INCORRECT_LENGTH)
        if did == Did.VIN and not _VIN.match(value):
            raise NegativeResponse(Nrc.REQUEST_OUT_OF_RANGE, "not a VIN")
        if did == Did.PROGRAMMING_DATE and not all((b >> 4) < 10 and (b & 0xF) < 10 for b in value):
            raise NegativeResponse(Nrc.REQUEST_OUT_OF_RANGE, "date is not BCD")
        server.boot.record.dids[did] = value.hex()
        server.boot.save()
        return payload[1:3]
