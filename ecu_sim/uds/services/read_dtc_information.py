"""ReadDTCInformation (0x19): sub-functions 0x01, 0x02 and 0x0A."""

from __future__ import annotations

import struct

from udsoncan import Request, services

from ecu_sim.uds.server import NegativeResponse, Nrc, ServiceHandler, SubFunction, UdsServer
from ota_formats.uds import DTC_FORMAT_ISO14229_1, DTC_STATUS_AVAILABILITY_MASK

_REPORT = services.ReadDTCInformation.Subfunction


class ReadDtcInformation(ServiceHandler):
    """Number of DTCs by status mask, DTCs by status mask, supported DTCs."""

    service = services.ReadDTCInformation
    subfunctions = {
        _REPORT.reportNumberOfDTCByStatusMask: SubFunction(),
        _REPORT.reportDTCByStatusMask: SubFunction(),
        _REPORT.reportSupportedDTCs: SubFunction(),
    }

    def handle(self, server: UdsServer, request: Request, payload: bytes) -> bytes:
        """Status bytes are masked with the availability mask, as ISO 14229-1 asks."""
        subfunction = request.subfunction
        stored = {
            code: status & DTC_STATUS_AVAILABILITY_MASK
            for code, status in server.boot.record.dtcs.items()
        }
        header = bytes([subfunction or 0, DTC_STATUS_AVAILABILITY_MASK])
        if subfunction == _REPORT.reportSupportedDTCs:
            if len(payload) != 2:
                raise NegativeResponse(Nrc.INCORRECT_LENGTH)
            return header + b"".join(
                code.to_bytes(3, "big") + bytes([stored.get(code, 0)])
                for code in server.supported_dtcs()
            )
        if len(payload) != 3:
            raise NegativeResponse(Nrc.INCORRECT_LENGTH)
        mask = payload[2]
        matching = sorted(code for code, status in stored.items() if status & mask)
        if subfunction == _REPORT.reportNumberOfDTCByStatusMask:
            return header + bytes([DTC_FORMAT_ISO14229_1]) + struct.pack(">H", len(matching))
        return header + b"".join(
            code.to_bytes(3, "big") + bytes([stored[code]]) for code in matching
        )
