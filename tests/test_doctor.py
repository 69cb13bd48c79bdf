"""``hil doctor``: the report's structure, its exit status, and its checks against real parts."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil import doctor
from hil.cli import main

pytestmark = pytest.mark.timeout(60)

FAST = ("--detect-timeout", "1")


def run_json(capsys, *args: str) -> tuple[int, dict]:
    code = main(["doctor", "--json", *args])
    out = capsys.readouterr().out
    return code, json.loads(out)


def line(report: dict, section: str, name: str) -> dict:
    found = [c for c in report["checks"] if c["section"] == section and c["name"] == name]
    assert len(found) == 1, [(c["section"], c["name"]) for c in report["checks"]]
    return found[0]


def af_can_works() -> bool:
    if not hasattr(socket, "AF_CAN"):
        return False
    try:
        with socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def no_bench_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    """No hil.toml, HIL_BENCH or running sim bench of the user's: the built-in sim bench."""
    for name in ("HIL_BENCH", "HIL_CONFIG", "HIL_BACKEND", "HIL_TLS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HIL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def backend_address(tmp_path: Path) -> Iterator[str]:
    """The bundled backend on a free loopback port (plain gRPC, its health service on)."""
    from backend_stub.server import BackendConfig, serve

    running = serve(
        BackendConfig(data_dir=tmp_path / "backend", listen="127.0.0.1:0", insecure=True)
    )
    yield f"127.0.0.1:{running.port}"
    running.stop(0)


def test_json_report_structure(capsys) -> None:
    code, report = run_json(capsys, "--no-backend", *FAST)
    assert set(report) == {"usable", "bench", "checks"}
    assert report["bench"]["name"] == "sim"
    assert report["bench"]["bus"]["interface"] == "virtual"
    for check in report["checks"]:
        assert set(check) == {"section", "name", "status", "detail", "data"}
        assert check["status"] in ("OK", "MISSING", "FAIL")
        assert check["detail"]
    sections = [c["section"] for c in report["checks"]]
    assert sections[0] == "bench"
    assert {"bench", "kernel", "python-can", "serial"} == set(sections)
    for name in ("AF_CAN", "CAN interfaces", "CAN_ISOTP"):
        line(report, "kernel", name)
    # Every python-can interface has a line of its own.
    import can

    for name in can.VALID_INTERFACES:
        line(report, "python-can", name)
    assert line(report, "python-can", "virtual")["status"] == "OK"
    assert line(report, "bench", "bus")["status"] == "OK"
    assert report["usable"] is True
    assert code == 0


@pytest.mark.skipif(af_can_works(), reason="this machine has SocketCAN")
def test_without_af_can_a_socketcan_bench_is_not_usable_but_sim_is(capsys) -> None:
    code, report = run_json(capsys, "--no-backend", *FAST)
    assert code == 0
    assert line(report, "kernel", "AF_CAN")["status"] == "MISSING"
    assert line(report, "python-can", "socketcan")["status"] == "MISSING"
    assert report["usable"] is True

    code, report = run_json(capsys, "--no-backend", *FAST, "-i", "socketcan", "-c", "vcan0")
    assert code == 1
    assert report["usable"] is False
    assert report["bench"]["bus"] == {
        "interface": "socketcan",
        "channel": "vcan0",
        "single_handle": True,
    }
    bus = line(report, "bench", "bus")
    assert bus["status"] in ("MISSING", "FAIL")
    assert "socketcan" in bus["detail"]
    assert line(report, "bench", "bench")["status"] == "FAIL"
    assert line(report, "kernel", "AF_CAN")["status"] == "MISSING"


def test_the_table_says_ok_missing_fail_and_the_verdict(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per check
    code = main(["doctor", "--no-backend", *FAST, "--serial-port", "psu=/dev/hil-no-such-tty"])
    out = capsys.readouterr().out
    assert code == 1
    assert "AF_CAN" in out
    assert "MISSING" in out
    assert "no such serial port" in out
    assert "bench sim: NOT usable" in out


def test_serial_ports_section_and_the_bench_ports(capsys) -> None:
    code, report = run_json(
        capsys,
        "--no-backend",
        *FAST,
        "--serial-port",
        "relays=loop://",
        "--serial-port",
        "psu=/dev/hil-no-such-tty",
    )
    serial = [c for c in report["checks"] if c["section"] == "serial"]
    assert serial
    for check in serial:
        if check["status"] == "OK":
            assert check["data"]["port"]["device"] == check["name"]
        else:
            assert (check["name"], check["status"]) == ("serial ports", "MISSING")
    assert report["bench"]["serial_ports"] == {
        "relays": "loop://",
        "psu": "/dev/hil-no-such-tty",
    }
    assert line(report, "bench", "serial relays")["status"] == "OK"
    assert line(report, "bench", "serial psu")["status"] == "MISSING"
    assert code == 1

    code, report = run_json(capsys, "--no-backend", *FAST, "--serial-port", "loop://")
    assert line(report, "bench", "serial port1")["status"] == "OK"
    assert code == 0


def test_backend_reachable(capsys, backend_address: str) -> None:
    code, report = run_json(capsys, "--backend", backend_address, *FAST)
    check = line(report, "backend", "backend")
    assert check["status"] == "OK", check
    assert check["data"]["health"] == "SERVING"
    assert code == 0


def test_backend_closed_port_fails_quickly_without_changing_the_status(capsys) -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    check = doctor.check_backend(address, timeout_s=2.0)
    assert time.monotonic() - started < 1.0
    assert check.status == "FAIL"
    assert address in check.detail

    code, report = run_json(capsys, "--backend", address, *FAST)
    assert line(report, "backend", "backend")["status"] == "FAIL"
    assert code == 0  # the bench is what decides the exit status


def test_backend_that_speaks_no_grpc_fails_within_the_deadline() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        started = time.monotonic()
        check = doctor.check_backend(address, timeout_s=0.5)
        assert time.monotonic() - started < 3.0
    assert check.status == "FAIL"


def test_detection_is_bounded_in_time(monkeypatch) -> None:
    # A child that hangs (as a driver probing hardware can) is killed at the deadline.
    monkeypatch.setattr(doctor, "DETECT_CHILD", ("-c", "import time; time.sleep(60)"))
    started = time.monotonic()
    results = doctor.detect_interfaces(["virtual", "pcan"], timeout_s=0.5)
    assert time.monotonic() - started < 3.0
    assert results == {
        "virtual": {"name": "virtual", "timed_out": True},
        "pcan": {"name": "pcan", "timed_out": True},
    }
    checks = doctor.check_python_can(
        0.5, detect=lambda timeout_s: doctor.detect_interfaces(["pcan"], timeout_s)
    )
    assert [(c.name, c.status) for c in checks] == [("version", "OK"), ("pcan", "FAIL")]
    assert "within 0.5 s" in checks[1].detail


def test_detection_reports_each_interface(capsys) -> None:
    results = doctor.detect_interfaces(["virtual", "no-such-interface"], timeout_s=10)
    assert results["virtual"]["imported"] is True
    assert results["virtual"]["timed_out"] is False
    assert results["no-such-interface"]["imported"] is False
    started = time.monotonic()
    code, report = run_json(capsys, "--no-backend", "--detect-timeout", "0.5")
    assert time.monotonic() - started < 5.0
    assert line(report, "python-can", "version")["data"]["detect_elapsed_s"] < 2.0
    assert code == 0


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--detect-timeout", "0"], "--detect-timeout must be above 0"),
        (["--serial-port", "a=x", "--serial-port", "a=y"], "'a' is given twice"),
        (["--serial-port", "a="], "give PORT or NAME=PORT"),
        (["--tls-dir", "/nonexistent-pki"], "/nonexistent-pki"),
        (["-i", "no-such-interface"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(capsys, args: list[str], text: str) -> None:
    try:
        code = main(["doctor", *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert text in lines[0]


def test_can_network_interfaces_from_sysfs(tmp_path: Path) -> None:
    def interface(name: str, kind: int, flags: str) -> None:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "type").write_text(f"{kind}\n")
        (folder / "flags").write_text(f"{flags}\n")

    interface("eth0", 1, "0x1003")
    interface("vcan0", doctor.ARPHRD_CAN, "0xc1")
    interface("can1", doctor.ARPHRD_CAN, "0x80")
    found = doctor.can_network_interfaces(tmp_path)
    assert [(i["name"], i["up"]) for i in found] == [("can1", False), ("vcan0", True)]
    checks = doctor.check_kernel(tmp_path)
    assert checks[1].name == "CAN interfaces" and checks[1].status == "OK"


LAB = """
default_bench = "lab"

[benches.lab]
vehicle = "demo"
bus = { interface = "socketcan", channel = "vcan0" }
power = { kind = "korad", port = "/dev/hil-no-such-tty" }

[benches.virtual]
vehicle = "demo"
bus = { interface = "virtual", channel = "doctor-lab" }
relays.boards.relays = { kind = "lcus", port = "loop://", options = { channels = 2 } }
"""


def test_the_bench_of_the_configuration_file(capsys, tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "hil.toml"
    config.write_text(LAB)
    # default_bench of ./hil.toml
    code, report = run_json(capsys, "--no-backend", *FAST)
    assert report["bench"]["name"] == "lab"
    assert report["bench"]["source"] == "hil.toml:4"
    assert report["bench"]["serial_ports"] == {"power": "/dev/hil-no-such-tty"}
    assert line(report, "bench", "serial power")["status"] == "MISSING"
    if not af_can_works():
        assert line(report, "bench", "bus")["status"] in ("MISSING", "FAIL")
    assert code == 1
    # --bench and --hil-config; bus options replace the bench's bus.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no ./hil.toml here
    code, report = run_json(
        capsys, "--no-backend", *FAST, "--hil-config", str(config), "--bench", "virtual"
    )
    assert report["bench"]["bus"] == {"interface": "virtual", "channel": "doctor-lab"}
    assert line(report, "bench", "serial relays relays")["status"] == "OK"
    assert code == 0
    monkeypatch.setenv("HIL_CONFIG", str(config))
    monkeypatch.setenv("HIL_BENCH", "lab")
    code, report = run_json(capsys, "--no-backend", *FAST, "-i", "virtual", "-c", "doctor-cli")
    assert report["bench"]["name"] == "lab"
    assert report["bench"]["bus"]["channel"] == "doctor-cli"
    assert line(report, "bench", "bus")["status"] == "OK"
    assert code == 1  # the power supply's port is still missing


def test_an_unknown_bench_is_a_usage_error(capsys) -> None:
    assert main(["doctor", "--no-backend", "--bench", "nope"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no bench 'nope'"), lines


def test_a_running_sim_bench_is_checked_through_its_hub_and_ports(capsys) -> None:
    import os

    from hil.bench.simstate import SimBenchState, state_file
    from hil.bus_server import serve_bus

    with serve_bus("127.0.0.1", 0) as hub, socket.socket() as power, socket.socket() as relays:
        for instrument in (power, relays):
            instrument.bind(("127.0.0.1", 0))
            instrument.listen()
        state = SimBenchState(
            pid=os.getpid(),
            bus={"interface": "remote", "channel": hub.url},
            power_port=f"socket://127.0.0.1:{power.getsockname()[1]}",
            relay_port=f"socket://127.0.0.1:{relays.getsockname()[1]}",
            vehicle="demo",
            nvm_dir="nvm",
        )
        state.write(state_file())
        code, report = run_json(capsys, "--no-backend", *FAST)
        assert report["bench"]["name"] == "sim"
        assert "running" in report["bench"]["source"]
        assert line(report, "bench", "bus")["status"] == "OK"
        assert hub.url in line(report, "bench", "bus")["detail"]
        assert line(report, "bench", "serial power")["status"] == "OK"
        assert code == 0
    # The hub and the instruments are gone, the state file is still there.
    code, report = run_json(capsys, "--no-backend", *FAST)
    assert line(report, "bench", "bus")["status"] == "FAIL"
    assert line(report, "bench", "serial power")["status"] == "FAIL"
    assert code == 1
