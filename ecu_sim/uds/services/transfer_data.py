"""TransferData (0x36)."""

from __future__ import annotations

from udsoncan import Request, services

from ecu_sim.errors import NvmError
from ecu_sim.flash import OutOfRange, SequenceError, WrongBlockCounter
from ecu_sim.uds.server import NegativeResponse, Nrc, ServiceHandler, UdsServer
from ota_formats.uds import SecurityLevel, Session


class TransferData(ServiceHandler):
    """Writes one block into the bank being downloaded; a repeated block is acknowledged."""

    service = services.TransferData
    sessions = frozenset({Session.PROGRAMMING})
    security = SecurityLevel.PROGRAMMING

    def handle(self, server: UdsServer, request: Request, payload: bytes) -> bytes:
        """Check length, download, block counter, range, supply voltage; then write."""
        if len(payload) < 3 or len(payload) > server.spec.block_length():
            raise NegativeResponse(Nrc.INCORRECT_LENGTH)
        counter = payload[1]
        try:
            server.boot.check_block(counter, len(payload) - 2)
        except SequenceError as exc:
            raise NegativeResponse(Nrc.REQUEST_SEQUENCE_ERROR, str(exc)) from exc
        except WrongBlockCounter as exc:
            raise NegativeResponse(Nrc.WRONG_BLOCK_SEQUENCE_COUNTER, str(exc)) from exc
        except OutOfRange as exc:
            raise NegativeResponse(Nrc.REQUEST_OUT_OF_RANGE, str(exc)) from exc
        if server.state.battery_voltage_v < server.spec.min_programming_voltage_v:
            raise NegativeResponse(Nrc.VOLTAGE_TOO_LOW)
        try:
            cut = server.boot.transfer(counter, bytes(payload[2:]))
        except NvmError as exc:
            raise NegativeResponse(Nrc.GENERAL_PROGRAMMING_FAILURE, str(exc)) from exc
        if cut is not None:
            server.cut_power(cut.restore_after_s)
        return bytes([counter])
