"""The same flash over SocketCAN (vcan): ECUs in their own process, the tester in this one.

Runs where the kernel has AF_CAN and a vcan interface (``HIL_VCAN``, default
vcan0, e.g. ``ip link add dev vcan0 type vcan && ip link set up vcan0``).
"""

from __future__ import annotations

import os
import signal

import can
import pytest
from helpers import HilEcuRun, make_image

from gateway import DiagChannel, Flasher

pytestmark = pytest.mark.socketcan
VCAN = os.environ.get("HIL_VCAN", "vcan0")


def test_flash_over_vcan(tmp_path, demo):
    ecus = HilEcuRun("--state-dir", str(tmp_path), "-i", "socketcan", "-c", VCAN)
    try:
        bus = can.Bus(interface="socketcan", channel=VCAN)
        notifier = can.Notifier(bus, [], timeout=0.05)
        try:
            with DiagChannel(bus, notifier, demo, demo.ecu("bcm")) as channel:
                result = Flasher(channel).flash(make_image(demo.ecu("bcm"), "2.0.0", 2))
            assert result.ok, result.failure
            assert result.version_after == "2.0.0"
        finally:
            notifier.stop()
            bus.shutdown()
    finally:
        assert ecus.stop(signal.SIGTERM) == 0, ecus.text
