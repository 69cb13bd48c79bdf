"""The pytest plugin (hil.pytest_plugin): real inner pytest runs against the sim bench."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import can
import pytest

pytest_plugins = ["pytester"]

DEVICE_TESTS = """
import time

import pytest
from udsoncan.exceptions import TimeoutException


def answers(client):
    try:
        client.read_data_by_identifier(0xF189)
    except TimeoutException:
        return False
    return True


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_dids(uds, bench):
    assert bench.name == "sim" and bench.simulated
    assert sorted(uds) == ["bcm", "bms", "ecm"]
    ecm = uds["ecm"]
    vin = ecm.read_data_by_identifier(0xF190).service_data.values[0xF190]
    assert vin == "WHLDMV00000000001"
    assert ecm.read_data_by_identifier(0xF189).service_data.values[0xF189] == "1.0.0"
    assert uds["ecm"] is ecm
    with pytest.raises(KeyError, match="has no ECU 'tcu'"):
        uds["tcu"]


def test_power_cycle(power, uds, vehicle):
    client = uds["ecm"]
    client.set_config("p2_timeout", 0.3)
    try:
        power.off()
        assert not vehicle.ecu("ecm").powered
        assert not answers(client)
        power.on()
        assert wait_for(lambda: answers(client))
        assert vehicle.ecu("ecm").powered
    finally:
        client.set_config("p2_timeout", 1.0)
        power.on()


def test_ignition(ignition, vehicle):
    from ecu_sim import Ignition

    ignition.off()
    assert ignition.state() is False
    assert wait_for(lambda: vehicle.state.ignition == Ignition.OFF)
    ignition.on()
    assert ignition.state() is True
    assert wait_for(lambda: vehicle.state.ignition == Ignition.ON)


def test_traced(trace, uds):
    uds["ecm"].read_data_by_identifier(0xF190)


@pytest.mark.bench
def test_needs_hardware():
    raise AssertionError("runs on a real bench only")


@pytest.mark.socketcan
def test_needs_socketcan():
    import socket

    socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW).close()
"""

BACKEND_TEST = """
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def test_health(backend):
    assert backend.host == "127.0.0.1" and backend.port > 0
    with grpc.insecure_channel(backend.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A pytester whose runs see no bench configuration or running sim bench of this machine."""
    for name in ("HIL_BENCH", "HIL_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HIL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return pytester


def uds_payloads(frames: list[can.Message]) -> list[tuple[int, bytes]]:
    return [(frame.arbitration_id, bytes(frame.data)) for frame in frames]


def test_fixtures_on_the_sim_bench(inner: pytest.Pytester, tmp_path: Path):
    inner.makepyfile(test_device=DEVICE_TESTS)
    traces = tmp_path / "traces"
    junit = tmp_path / "junit.xml"
    result = inner.runpytest_inprocess(
        "-rs", f"--trace-dir={traces}", f"--junitxml={junit}", "-p", "no:cacheprovider"
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()
    assert outcomes["passed"] + outcomes["skipped"] == 6
    assert outcomes["passed"] >= 4
    result.stdout.fnmatch_lines(
        ["SKIPPED ?1? test_device.py:*: needs real bench hardware: bench 'sim' is simulated"]
    )

    stem = "test_device.py_test_traced"
    paths = {fmt: traces / f"{stem}.{fmt}" for fmt in ("blf", "asc", "log")}
    readers = {
        "blf": can.BLFReader(paths["blf"]),
        "asc": can.ASCReader(paths["asc"]),
        "log": can.CanutilsLogReader(paths["log"]),
    }
    for fmt, reader in readers.items():
        frames = list(reader)
        payloads = uds_payloads(frames)
        # The request (sent: Tx) and the first frame of the answer, and nothing of other tests.
        assert any(i == 0x7E0 and d[:4] == bytes.fromhex("0322f190") for i, d in payloads), fmt
        assert any(i == 0x7E8 and d[:5] == bytes.fromhex("101462f190") for i, d in payloads), fmt
        assert not any(bytes.fromhex("22f189") in d for _, d in payloads), fmt
        assert any(not f.is_rx for f in frames if f.arbitration_id == 0x7E0) or fmt == "log", fmt
    assert not list(traces.glob("test_device.py_test_dids.*"))  # only tests that ask for it

    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    skipped = cases["test_needs_hardware"].find("skipped")
    assert skipped is not None
    assert skipped.get("message") == "needs real bench hardware: bench 'sim' is simulated"
    socketcan = cases["test_needs_socketcan"].find("skipped")
    assert socketcan is None or socketcan.get("message", "").startswith("needs SocketCAN: ")

    properties = {
        (case.get("name"), prop.get("name")): prop.get("value")
        for case in cases.values()
        for prop in case.iter("property")
    }
    assert properties == {("test_traced", f"trace_{fmt}"): str(p) for fmt, p in paths.items()}


def test_trace_defaults_to_the_test_tmp_path(inner: pytest.Pytester):
    inner.makepyfile(
        """
        def test_one(trace, uds, tmp_path):
            uds["bms"].read_data_by_identifier(0xF189)
            assert trace.paths["blf"] == tmp_path / "trace.blf"
            assert any(frame.arbitration_id == 0x7E1 for frame in trace.frames)
        """
    )
    result = inner.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_unknown_bench_is_a_usage_error(inner: pytest.Pytester):
    inner.makepyfile("def test_nothing():\n    pass\n")
    result = inner.runpytest_inprocess("--bench", "nosuch", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*hil:*nosuch*"])


def test_backend_answers_a_health_check(inner: pytest.Pytester):
    inner.makepyfile(test_backend=BACKEND_TEST)
    result = inner.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
