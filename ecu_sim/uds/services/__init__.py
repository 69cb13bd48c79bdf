"""One module per UDS service, as udsoncan has one class per service."""

from ecu_sim.uds.server import ServiceHandler
from ecu_sim.uds.services.clear_diagnostic_information import ClearDiagnosticInformation
from ecu_sim.uds.services.communication_control import CommunicationControl
from ecu_sim.uds.services.control_dtc_setting import ControlDtcSetting
from ecu_sim.uds.services.diagnostic_session_control import DiagnosticSessionControl
from ecu_sim.uds.services.ecu_reset import EcuReset
from ecu_sim.uds.services.read_data_by_identifier import ReadDataByIdentifier
from ecu_sim.uds.services.read_dtc_information import ReadDtcInformation
from ecu_sim.uds.services.request_download import RequestDownload
from ecu_sim.uds.services.request_transfer_exit import RequestTransferExit
from ecu_sim.uds.services.routine_control import RoutineControl
from ecu_sim.uds.services.security_access import SecurityAccess
from ecu_sim.uds.services.tester_present import TesterPresent
from ecu_sim.uds.services.transfer_data import TransferData
from ecu_sim.uds.services.write_data_by_identifier import WriteDataByIdentifier

_ALL: tuple[ServiceHandler, ...] = (
    DiagnosticSessionControl(),
    EcuReset(),
    ClearDiagnosticInformation(),
    ReadDtcInformation(),
    ReadDataByIdentifier(),
    SecurityAccess(),
    CommunicationControl(),
    WriteDataByIdentifier(),
    RoutineControl(),
    RequestDownload(),
    TransferData(),
    RequestTransferExit(),
    TesterPresent(),
    ControlDtcSetting(),
)

HANDLERS: dict[int, ServiceHandler] = {h.service.request_id(): h for h in _ALL}
"""Service handlers by SID."""

__all__ = ["HANDLERS"]
