"""``hil bus serve``: one bus shared by processes through python-can-remote's server.

The hub runs as a child process (``hil bus serve --listen 127.0.0.1:0``), the
simulated ECUs in another (``hil ecu run -i remote -c URL``), and testers join
from this process (the real udsoncan client over python-can's ``remote``
interface) and from a third (``hil diag``).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import can
import pytest
from helpers import HilEcuRun, HilRun, wait_for

from ecu_sim import demo_vehicle
from gateway import DiagChannel
from hil.bus_server import parse_listen, serve_bus
from hil.cli import main
from ota_formats.uds import Did

pytestmark = pytest.mark.timeout(120)


class Hub:
    """``hil bus serve`` in a child process, and the URL it printed."""

    def __init__(self, *args: str) -> None:
        self.run = HilRun("bus", "serve", "--listen", "127.0.0.1:0", *args, ready="serving;")
        match = re.search(r"at (ws://127\.0\.0\.1:\d+/)", self.run.text)
        assert match, self.run.text
        self.url = match.group(1)


@pytest.fixture
def hub() -> Iterator[Hub]:
    served = Hub()
    yield served
    if served.run.process.poll() is None:
        served.run.stop(signal.SIGTERM)


@pytest.fixture
def remote_bus(hub: Hub) -> Iterator[can.BusABC]:
    """A client of the hub in this process."""
    bus = can.Bus(interface="remote", channel=hub.url)
    yield bus
    bus.shutdown()


def _frame(arbitration_id: int, data: bytes, **kwargs: object) -> can.Message:
    return can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=False, **kwargs)


def test_the_url_and_how_to_join_are_printed(hub: Hub) -> None:
    text = hub.run.text
    assert f"hil ecu run -i remote -c {hub.url}" in text
    assert f"python -m can.logger -i remote -c {hub.url}" in text
    assert f"cantools monitor -i remote -c {hub.url}" in text
    assert "virtual channel" in text.splitlines()[0]


def test_uds_between_processes_through_the_hub(hub: Hub, remote_bus: can.BusABC) -> None:
    spec = demo_vehicle()
    ecus = HilEcuRun("-i", "remote", "-c", hub.url)
    try:
        notifier = can.Notifier(remote_bus, [], timeout=0.1)
        try:
            with DiagChannel(remote_bus, notifier, spec, spec.ecu("ecm")) as diag:
                reply = diag.call(
                    lambda c: c.read_data_by_identifier([Did.VIN, Did.APP_SOFTWARE_VERSION])
                )
        finally:
            notifier.stop()
        values = reply.service_data.values
        assert values[Did.VIN] == spec.vin
        assert values[Did.APP_SOFTWARE_VERSION] == "1.0.0"
        # A third process: the hil diag command, a tester of its own on the same hub.
        diag = subprocess.run(
            [
                sys.executable,
                "-m",
                "hil",
                "diag",
                "--ecu",
                "bms",
                "-i",
                "remote",
                "-c",
                hub.url,
                "read",
                "F190",
                "F189",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert diag.returncode == 0, diag.stderr
        assert spec.vin in diag.stdout
        assert "1.0.0" in diag.stdout
    finally:
        assert ecus.stop(signal.SIGTERM) == 0, ecus.text
    assert "stopped" in ecus.text


def test_frames_sent_by_one_client_reach_the_others(hub: Hub, remote_bus: can.BusABC) -> None:
    other = can.Bus(interface="remote", channel=hub.url)
    third = can.Bus(interface="remote", channel=hub.url)
    try:
        remote_bus.send(_frame(0x123, b"\x01\x02\x03"))
        for bus in (other, third):
            got = bus.recv(5)
            assert got is not None and got.arbitration_id == 0x123
            assert bytes(got.data) == b"\x01\x02\x03"
        # A client does not get its own frames back (python-can's default).
        assert remote_bus.recv(0.3) is None
        # CAN FD frames cross the hub whole, flags and all.
        other.send(_frame(0x456, bytes(range(64)), is_fd=True, bitrate_switch=True))
        got = remote_bus.recv(5)
        assert got is not None and got.is_fd and got.bitrate_switch
        assert bytes(got.data) == bytes(range(64))
    finally:
        other.shutdown()
        third.shutdown()


def test_sigterm_stops_the_hub_with_status_0(hub: Hub) -> None:
    client = can.Bus(interface="remote", channel=hub.url)
    client.shutdown()
    started = time.monotonic()
    assert hub.run.stop(signal.SIGTERM) == 0, hub.run.text
    assert time.monotonic() - started < 10
    assert hub.run.text.rstrip().endswith("stopped")


def test_sigterm_with_a_client_still_connected(hub: Hub) -> None:
    # This client never reads, so it never answers the hub's close: the hub cuts it off.
    client = can.Bus(interface="remote", channel=hub.url)
    started = time.monotonic()
    assert hub.run.stop(signal.SIGTERM) == 0, hub.run.text
    assert time.monotonic() - started < 10
    # python-can-remote's client cannot shut down cleanly once its server is gone.
    with pytest.raises((OSError, ValueError)):
        client.shutdown()
    client._is_shutdown = True  # or BusABC.__del__ tries again and warns


def test_sigint_stops_the_hub_too() -> None:
    served = Hub()
    assert served.run.stop(signal.SIGINT) == 0, served.run.text


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "192.0.2.1:54701", "example.com:54701"])
def test_non_loopback_listen_needs_allow_remote(capsys, listen: str) -> None:
    assert main(["bus", "serve", "--listen", listen]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "--allow-remote" in lines[0]


@pytest.mark.parametrize("listen", ["127.0.0.1:http", "127.0.0.1:70000", ":54701"])
def test_bad_listen_address_is_a_usage_error(capsys, listen: str) -> None:
    assert main(["bus", "serve", "--listen", listen]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --listen")


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("127.0.0.1") == ("127.0.0.1", 54701)
    assert parse_listen("[::1]:5000") == ("::1", 5000)
    assert parse_listen("::1") == ("::1", 54701)
    assert parse_listen("localhost:1") == ("localhost", 1)


def test_port_in_use_is_one_line(capsys) -> None:
    with serve_bus("127.0.0.1", 0) as running:
        assert main(["bus", "serve", "--listen", f"127.0.0.1:{running.port}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot listen on" in lines[0], lines


class _Adapter(can.BusABC):
    """A stand-in for a hardware interface: one handle on a virtual 'wire'."""

    def __init__(self, channel: str) -> None:
        self._wire = can.Bus(interface="virtual", channel=channel)
        self.channel_info = f"adapter on {channel}"
        super().__init__(channel=channel)

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        assert msg.channel is None  # socketcan would send to the interface msg.channel names
        self._wire.send(msg, timeout)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        return self._wire.recv(timeout), False

    def shutdown(self) -> None:
        super().shutdown()
        self._wire.shutdown()


def test_a_real_interface_is_opened_once_and_bridged(channel: str) -> None:
    adapter = _Adapter(channel)
    wire = can.Bus(interface="virtual", channel=channel)  # another node on the wire
    try:
        with serve_bus("127.0.0.1", 0, bus=adapter) as running:
            assert running.served == f"adapter on {channel}"
            a = can.Bus(interface="remote", channel=running.url)
            b = can.Bus(interface="remote", channel=running.url)
            try:
                wire.send(_frame(0x100, b"from-ecu"))
                for client in (a, b):
                    got = client.recv(5)
                    assert got is not None and bytes(got.data) == b"from-ecu"
                a.send(_frame(0x200, b"tester"))
                got = wire.recv(5)
                assert got is not None and bytes(got.data) == b"tester"
                got = b.recv(5)  # clients see each other directly on the hub
                assert got is not None and bytes(got.data) == b"tester"
                # Exactly once each: no echo loop through the bridge.
                assert wire.recv(0.3) is None
                assert a.recv(0.3) is None
                assert b.recv(0.1) is None
            finally:
                a.shutdown()
                b.shutdown()
            assert wait_for(lambda: running.clients == 0, timeout=5)
    finally:
        wire.shutdown()
        adapter.shutdown()


class _FailingAdapter(_Adapter):
    """An adapter that goes away (unplugged) when told to."""

    unplugged = False

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        if self.unplugged:
            raise can.CanOperationError("adapter unplugged")
        return super()._recv_internal(timeout)


def test_an_interface_that_fails_is_reported(channel: str) -> None:
    adapter = _FailingAdapter(channel)
    try:
        with serve_bus("127.0.0.1", 0, bus=adapter) as running:
            assert not running.wait_failed(0.2)
            adapter.unplugged = True
            assert running.wait_failed(5)
            assert isinstance(running.failure, can.CanOperationError)
    finally:
        adapter.shutdown()
