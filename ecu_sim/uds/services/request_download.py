"""RequestDownload (0x34)."""

from __future__ import annotations

import struct

from udsoncan import Request, services

from ecu_sim.flash import NotAccepted, OutOfRange
from ecu_sim.uds.server import NegativeResponse, Nrc, ServiceHandler, UdsServer
from ota_formats.uds import ADDRESS_AND_LENGTH_FORMAT, DATA_FORMAT_PLAIN, SecurityLevel, Session


class RequestDownload(ServiceHandler):
    """Starts a download into the erased inactive bank; announces maxNumberOfBlockLength."""

    service = services.RequestDownload
    sessions = frozenset({Session.PROGRAMMING})
    security = SecurityLevel.PROGRAMMING

    def handle(self, server: UdsServer, request: Request, payload: bytes) -> bytes:
        """Check length, format identifiers, range, active download, erase; then start."""
        if len(payload) < 3:
            raise NegativeResponse(Nrc.INCORRECT_LENGTH)
        alfid = payload[2]
        address_size, length_size = alfid & 0x0F, alfid >> 4
        if not (1 <= address_size <= 4 and 1 <= length_size <= 4):
            raise NegativeResponse(Nrc.REQUEST_OUT_OF_RANGE, "addressAndLengthFormatIdentifier")
        if len(payload) != 3 + address_size + length_size:
            raise NegativeResponse(Nrc.INCORRECT_LENGTH)
        if payload[1] != DATA_FORMAT_PLAIN:
            raise NegativeResponse(Nrc.REQUEST_OUT_OF_RANGE, "compression/encryption")
        if alfid != ADDRESS_AND_LENGTH_FORMAT:
            raise NegativeResponse(Nrc.REQUEST_OUT_OF_RANGE, "addressAndLengthFormatIdentifier")
        address, size = struct.unpack(">II", payload[3:11])
        if server.boot.downloading:
            raise NegativeResponse(Nrc.CONDITIONS_NOT_CORRECT, "a download is already active")
        try:
            server.boot.request_download(address, size)
        except OutOfRange as exc:
            raise NegativeResponse(Nrc.REQUEST_OUT_OF_RANGE, str(exc)) from exc
        except NotAccepted as exc:
            raise NegativeResponse(Nrc.UPLOAD_DOWNLOAD_NOT_ACCEPTED, str(exc)) from exc
        return b"\x20" + struct.pack(">H", server.spec.block_length())
