"""ControlDTCSetting (0x85)."""

from __future__ import annotations

from udsoncan import Request, services

from ecu_sim.uds.server import NON_DEFAULT_SESSIONS, ServiceHandler, SubFunction, UdsServer


class ControlDtcSetting(ServiceHandler):
    """Stops (0x02) or resumes (0x01) the recording of DTCs until the default session."""

    service = services.ControlDTCSetting
    sessions = NON_DEFAULT_SESSIONS
    subfunctions = {
        services.ControlDTCSetting.SettingType.on: SubFunction(),
        services.ControlDTCSetting.SettingType.off: SubFunction(),
    }

    def handle(self, server: UdsServer, request: Request, payload: bytes) -> bytes:
        """Any DTCSettingControlOptionRecord is accepted and ignored."""
        assert request.subfunction is not None
        server.vars.dtc_setting_on = (
            request.subfunction == services.ControlDTCSetting.SettingType.on
        )
        return bytes([request.subfunction])
