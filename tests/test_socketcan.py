"""The same flash over SocketCAN (vcan): ECUs in their own process, the tester in this one.

The ECUs (``hil ecu run -i socketcan``) keep their user-space ISO-TP stack; the tester
flashes one ECU through python-can's ``socketcan`` interface with can-isotp's user-space
stack, and another through the kernel's own ISO-TP sockets (CAN_ISOTP, can-isotp's
``isotp.socket``) as the alternative transport.

Runs where the kernel has AF_CAN and a vcan interface (``HIL_VCAN``, default vcan0; see the
README: ``ip link add dev vcan0 type vcan && ip link set up vcan0``). Elsewhere these tests
are skipped here and tests/test_vcan_vm.py runs them in a QEMU VM (.ci/vcan_vm.py).
"""

from __future__ import annotations

import os
import signal
import socket

import can
import isotp
import pytest
from helpers import HilEcuRun, make_image
from udsoncan.client import Client
from udsoncan.connections import IsoTPSocketConnection

from gateway import DiagChannel, Flasher
from gateway.diag import MatchedReplies
from ota_formats.vehicle import EcuSpec, VehicleSpec

pytestmark = pytest.mark.socketcan
VCAN = os.environ.get("HIL_VCAN", "vcan0")
#: The functional sender's receive id: a kernel ISO-TP socket needs one, and it must not be
#: an ECU's response id (that socket would answer the ECU's first frames with flow control).
FUNCTIONAL_RX_ID = 0x7FE


@pytest.fixture(scope="module")
def vcan_ecus(tmp_path_factory: pytest.TempPathFactory):
    """The demo vehicle's ECUs serving on the vcan interface, in a process of their own."""
    state_dir = tmp_path_factory.mktemp("ecus")
    # Up to a minute to start serving: under TCG emulation in the VM it takes over ten seconds.
    ecus = HilEcuRun("--state-dir", str(state_dir), "-i", "socketcan", "-c", VCAN, timeout=60)
    yield ecus
    assert ecus.stop(signal.SIGTERM) == 0, ecus.text


@pytest.fixture
def vcan_bus():
    """A python-can ``socketcan`` bus on the vcan interface, with its notifier."""
    bus = can.Bus(interface="socketcan", channel=VCAN)
    notifier = can.Notifier(bus, [], timeout=0.05)
    yield bus, notifier
    notifier.stop()
    bus.shutdown()


def isotp_socket_problem() -> str | None:
    """Why the kernel's ISO-TP sockets cannot be used here, or ``None``."""
    if not hasattr(socket, "CAN_ISOTP"):
        return "this Python has no CAN_ISOTP"
    try:
        socket.socket(socket.AF_CAN, socket.SOCK_DGRAM, socket.CAN_ISOTP).close()
    except OSError as exc:
        return f"this kernel has no CAN_ISOTP sockets (modprobe can-isotp): {exc.strerror}"
    return None


def kernel_isotp_socket(ecu: EcuSpec) -> isotp.socket:
    """A kernel ISO-TP socket with the ECU's transport parameters from the vehicle file."""
    spec = ecu.isotp
    sock = isotp.socket(timeout=0.1)
    # Like DiagChannel's blocking_send: send() returns once the whole PDU is out, so
    # udsoncan's P2 timer does not start while a long request is still being sent.
    sock.set_opts(optflag=isotp.socket.flags.WAIT_TX_DONE, txpad=spec.tx_padding)
    sock.set_fc_opts(bs=spec.blocksize, stmin=spec.stmin_ms)
    return sock


class KernelIsoTpChannel(DiagChannel):
    """A :class:`DiagChannel` whose requests cross the kernel's ISO-TP sockets (CAN_ISOTP).

    The udsoncan clients, their configuration and the channel's logic are DiagChannel's;
    only the connections under them are kernel sockets instead of can-isotp's user-space
    stacks (which are built on ``bus`` but never started).
    """

    def __init__(
        self,
        interface: str,
        bus: can.BusABC,
        notifier: can.Notifier,
        vehicle: VehicleSpec,
        ecu: EcuSpec,
    ) -> None:
        assert not vehicle.can.fd, "CAN FD over kernel ISO-TP sockets needs vcan mtu 72"
        super().__init__(bus, notifier, vehicle, ecu)
        mode = isotp.AddressingMode.Normal_11bits
        self._connection = MatchedReplies(
            IsoTPSocketConnection(
                interface,
                isotp.Address(mode, txid=ecu.request_id, rxid=ecu.response_id),
                name=f"{ecu.name}-kernel-physical",
                tpsock=kernel_isotp_socket(ecu),
            ),
            name=f"{ecu.name}-kernel-physical-matched",
        )
        self._functional_connection = IsoTPSocketConnection(
            interface,
            isotp.Address(mode, txid=vehicle.functional_request_id, rxid=FUNCTIONAL_RX_ID),
            name=f"{ecu.name}-kernel-functional",
            tpsock=kernel_isotp_socket(ecu),
        )
        self.client = Client(self._connection, config=self.client.config)
        self._functional_client = Client(
            self._functional_connection, config=self._functional_client.config
        )


def test_flash_over_vcan(vcan_ecus, vcan_bus, demo):
    bus, notifier = vcan_bus
    with DiagChannel(bus, notifier, demo, demo.ecu("bcm")) as channel:
        result = Flasher(channel).flash(make_image(demo.ecu("bcm"), "2.0.0", 2))
    assert result.ok, result.failure
    assert result.version_after == "2.0.0"


def test_flash_over_kernel_isotp_sockets(vcan_ecus, vcan_bus, demo):
    problem = isotp_socket_problem()
    if problem:
        pytest.skip(problem)
    bus, notifier = vcan_bus
    ecu = demo.ecu("ecm")
    requests: list[can.Message] = []

    def record(msg: can.Message) -> None:
        if msg.arbitration_id == ecu.request_id:
            requests.append(msg)

    notifier.add_listener(record)
    image = make_image(ecu, "2.1.0", 3)
    with KernelIsoTpChannel(VCAN, bus, notifier, demo, ecu) as channel:
        result = Flasher(channel).flash(image)
    assert result.ok, result.failure
    assert result.version_after == "2.1.0"
    # The image crossed vcan in frames made by the kernel's ISO-TP layer with the ECU's
    # parameters: 8 bytes each, single frames padded with the vehicle file's 0xCC.
    assert len(requests) > len(image) // 7
    assert {len(msg.data) for msg in requests} == {8}
    single = [bytes(msg.data) for msg in requests if msg.data[0] >> 4 == 0]
    assert single
    assert all(set(data[1 + data[0] :]) <= {0xCC} for data in single)
