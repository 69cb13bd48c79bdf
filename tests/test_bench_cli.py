"""``hil bench`` and the guarded ``hil flash`` on benches whose instruments are the simulators.

Real parts throughout: the simulated Korad supply and LCUS board on loopback TCP, the
real drivers, the real CLI (``hil.cli.main``), the simulated vehicle on a virtual bus,
and the ``sim`` bench (:class:`hil.bench.sim.SimBench`) in this process or as a child
process joined over its loopback hub.
"""

from __future__ import annotations

import json
import signal
import socket
import textwrap
import time
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace

import can
import cantools
import pytest
from helpers import HilRun, make_image, wait_for
from udsoncan.exceptions import TimeoutException

import dbc
from ecu_sim import SimulatedVehicle
from hil.bench import (
    BenchError,
    ConfirmationRequired,
    FlashDeclined,
    SupplyVoltageError,
    flash_on_bench,
    prepare_flash,
    resolve_bench,
)
from hil.bench.sim import SimBench
from hil.cli import main
from hil.instruments.sim import SimKoradPsu, SimLcusBoard
from ota_formats.uds import NO_BANK

DIAG_IDS = {0x7E0, 0x7E1, 0x7E2, 0x7DF}
"""Arbitration ids a tester sends on."""

LAB = """
[benches.lab]
description = "rack 3"
vehicle = "demo"

[benches.lab.bus]
interface = "virtual"
channel = "{channel}"

[benches.lab.power]
kind = "korad"
port = "{psu}"
volts = 12.0
amps = 2.0
min_volts = 11.5
max_volts = 14.5

[benches.lab.relays.boards.relays]
kind = "lcus"
port = "{relays}"
options = {{ channels = 2, state_query = true }}

[benches.lab.relays.lines]
ignition = {{ board = "relays", channel = 1 }}
starter = {{ board = "relays", channel = 2 }}

[benches.quiet]
description = "a relay board that cannot say its states, no supply"
relays.boards.old = {{ kind = "lcus", port = "{relays}", options = {{ channels = 2 }} }}
relays.lines.ignition = {{ board = "old", channel = 1 }}

[benches.gone]
power = {{ kind = "korad", port = "socket://127.0.0.1:{closed}", options = {{ timeout_s = 0.3 }} }}
"""


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No configuration, bench or state from the machine: a working directory of our own."""
    for name in ("HIL_CONFIG", "HIL_BENCH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HIL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture(autouse=True)
def _quick_socket_close(monkeypatch):
    """Skip pyserial's 0.3 s sleep after closing a ``socket://`` port (as test_instruments)."""
    if find_spec("serial") is None:
        return
    from serial.urlhandler import protocol_socket

    monkeypatch.setattr(protocol_socket, "time", SimpleNamespace(sleep=lambda _s: None))


@pytest.fixture
def psu():
    with SimKoradPsu(pty=False) as sim:
        sim.load_ohms = 24.0
        yield sim


@pytest.fixture
def board():
    with SimLcusBoard(channels=2, pty=False) as sim:
        yield sim


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def lab(isolated, psu, board, channel):
    """hil.toml with the ``lab`` bench: the simulators' ports and this test's virtual channel."""
    text = LAB.format(channel=channel, psu=psu.tcp_url, relays=board.tcp_url, closed=closed_port())
    (isolated / "hil.toml").write_text(textwrap.dedent(text), encoding="utf-8")
    return channel


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, *texts: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    for text in texts:
        assert text in lines[0], lines[0]
    return lines[0]


def sniffer(channel: str) -> tuple[can.BusABC, can.Notifier, list[can.Message]]:
    bus = can.Bus(interface="virtual", channel=channel)
    frames: list[can.Message] = []
    return bus, can.Notifier(bus, [frames.append], timeout=0.05), frames


def diag_frames(frames: list[can.Message]) -> list[can.Message]:
    return [frame for frame in frames if frame.arbitration_id in DIAG_IDS]


@pytest.fixture
def vehicle(lab, demo, tmp_path):
    """The demo vehicle's simulated ECUs on the lab bench's bus."""
    bus = can.Bus(interface="virtual", channel=lab)
    try:
        with SimulatedVehicle(demo, bus, state_dir=tmp_path / "ecus") as sim:
            yield sim
    finally:
        bus.shutdown()


@pytest.fixture
def image_file(tmp_path, demo) -> Path:
    path = tmp_path / "ecm-2.0.0.img"
    path.write_bytes(make_image(demo.ecu("ecm"), "2.0.0", 2))
    return path


# ---------------------------------------------------------------------------- verbs on a lab bench


def test_power_on_off_set_cycle(lab, psu, capsys):
    code, out, _ = run(capsys, "bench", "power", "on", "--bench", "lab")
    assert code == 0
    assert out.strip() == (
        "lab: power on: output on, 12.00 V 0.500 A measured (set 12.00 V, limit 2.000 A)"
    )
    assert psu.output_on and psu.set_voltage_v == 12.0 and psu.current_limit_a == 2.0

    assert run(capsys, "bench", "power", "off", "--bench", "lab")[0] == 0
    assert not psu.output_on

    code, out, _ = run(capsys, "bench", "power", "set", "--volts", "13.5", "--amps", "1.5")
    assert code == 1  # the default bench is sim, which is not running
    code, out, _ = run(capsys, "bench", "power", "set", "--volts", "13.5", "--amps", "1.5",
                       "--bench", "lab")  # fmt: skip
    assert code == 0 and "set 13.50 V, limit 1.500 A" in out
    assert psu.set_voltage_v == 13.5 and psu.current_limit_a == 1.5 and not psu.output_on

    psu.commands.clear()
    started = time.monotonic()
    code, out, _ = run(capsys, "bench", "power", "cycle", "--off-s", "0.3", "--bench", "lab")
    assert code == 0 and time.monotonic() - started >= 0.3
    assert psu.output_on and psu.set_voltage_v == 12.0  # on sets the nominal values again
    assert psu.commands.index("OUT0") < psu.commands.index("OUT1")
    assert "lab: power off for 0.3 s" in out

    code, _, err = run(capsys, "bench", "power", "set", "--bench", "lab")
    assert code == 2
    one_line_error(err, "power set needs --volts and/or --amps")


def test_power_set_refuses_bad_numbers(lab, capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "power", "set", "--volts", "-1", "--bench", "lab"])
    assert info.value.code == 2
    one_line_error(capsys.readouterr().err, "not a finite, non-negative number")


def test_ignition_and_relay_lines(lab, board, capsys):
    code, out, _ = run(capsys, "bench", "ign", "on", "--bench", "lab")
    assert code == 0 and out.strip() == "lab: ignition on (relays channel 1; reads on)"
    assert board.states == {1: True, 2: False}
    assert run(capsys, "bench", "relay", "starter", "on", "--bench", "lab")[0] == 0
    assert board.states == {1: True, 2: True}
    assert run(capsys, "bench", "ign", "off", "--bench", "lab")[0] == 0
    assert board.states == {1: False, 2: True}
    code, _, err = run(capsys, "bench", "relay", "horn", "on", "--bench", "lab")
    assert code == 2
    one_line_error(err, "bench lab has no relay line 'horn' (it has: ignition, starter)")


def test_status(lab, psu, board, capsys):
    assert run(capsys, "bench", "power", "on", "--bench", "lab")[0] == 0
    board.relays[2] = True
    code, out, _ = run(capsys, "bench", "status", "--bench", "lab")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == "bench lab (hil.toml:2)"
    assert lines[1] == (
        f"power: korad on {psu.tcp_url}: output on, 12.00 V 0.500 A measured "
        "(set 12.00 V, limit 2.000 A); flashing window 11.50..14.50 V"
    )
    assert lines[2:] == ["ignition: off (relays channel 1)", "starter: on (relays channel 2)"]

    code, out, _ = run(capsys, "bench", "status", "--json", "--bench", "lab")
    report = json.loads(out)
    assert report["power"]["volts"] == 12.0 and report["power"]["output_on"] is True
    assert report["lines"]["starter"] == {
        "board": "relays",
        "channel": 2,
        "on": True,
        "reported": True,
    }


def test_status_of_a_board_that_does_not_report(lab, capsys):
    code, out, _ = run(capsys, "bench", "status", "--bench", "quiet")
    assert code == 0
    assert "power: none configured" in out
    assert "ignition: unknown (the board does not report it) (old channel 1)" in out
    code, out, _ = run(capsys, "bench", "ign", "on", "--bench", "quiet")
    assert code == 0 and out.strip() == "quiet: ignition on (old channel 1; reads on)"
    code, _, err = run(capsys, "bench", "power", "on", "--bench", "quiet")
    assert code == 2
    one_line_error(err, "bench quiet has no power supply")


def test_unreachable_port_is_one_line_exit_1(lab, capsys):
    for args in (("power", "on"), ("status",)):
        code, _, err = run(capsys, "bench", *args, "--bench", "gone")
        assert code == 1
        one_line_error(err, "socket://127.0.0.1:")


@pytest.mark.parametrize("fault", ["no_reply", "garble"])
def test_silent_or_garbled_supply_is_one_line_exit_1(lab, psu, capsys, fault):
    getattr(psu.faults, fault)(None)
    code, _, err = run(capsys, "bench", "status", "--bench", "lab")
    assert code == 1
    line = one_line_error(err)
    assert ("no reply" in line) if fault == "no_reply" else ("VOUT1?" in line), line


def test_list_and_show(lab, capsys):
    code, out, _ = run(capsys, "bench", "list")
    assert code == 0
    assert "  lab    hil.toml:2   rack 3" in out
    assert "* sim" in out and "(not running)" in out

    code, out, _ = run(capsys, "bench", "show", "lab")
    assert code == 0
    assert "source: hil.toml:2" in out
    assert "  bms:\n    addressing: normal_11bits\n    request_id: 0x7E1" in out
    assert "security: HMAC-SHA256, secret from demo.toml" in out
    assert "101112131415161718191a1b1c1d1e1f" not in out  # never the secret
    shown = json.loads(run(capsys, "bench", "show", "--json", "--bench", "lab")[1])
    assert shown["bus"]["python-can"] == {"interface": "virtual", "channel": lab}
    assert shown["power"]["min_volts"] == 11.5
    assert shown["relays"]["lines"]["ignition"] == {"board": "relays", "channel": 1}

    code, _, err = run(capsys, "bench", "show", "lab", "--bench", "quiet")
    assert code == 2
    one_line_error(err, "two benches named")


def test_uds_client_from_the_bench(lab, vehicle):
    bench = resolve_bench("lab")
    with bench.connect() as rig:
        client = rig.uds("bms")
        version = client.read_data_by_identifier(0xF189).service_data.values[0xF189]
        assert version == "1.0.0"
        client.change_session(3)
        client.unlock_security_access(1)  # the key from the vehicle file's secret
        assert vehicle.ecu("bms").server.unlocked(1)
        assert rig.uds("bms") is client


# ---------------------------------------------------------------------------- the sim bench


@pytest.fixture
def sim_bench(isolated, tmp_path):
    with SimBench(state_dir=tmp_path / "state") as sim:
        yield sim


def answers(client) -> bool:
    try:
        client.read_data_by_identifier(0xF189)
    except TimeoutException:
        return False
    return True


def test_sim_bench_power_keeps_nvm(sim_bench, capsys):
    bench = resolve_bench()
    assert bench.name == "sim" and bench.unavailable is None
    assert sim_bench.bench().bus == bench.bus
    ecm = sim_bench.vehicle.ecu("ecm")
    assert ecm.set_dtc(0x0A1B2C)
    with bench.connect() as rig:
        client = rig.uds("ecm")
        client.set_config("p2_timeout", 0.3)
        assert answers(client)

        code, out, _ = run(capsys, "bench", "power", "off")
        assert code == 0 and "output off, 0.00 V" in out
        assert not any(ecu.powered for ecu in sim_bench.vehicle.ecus.values())
        assert not answers(client)

        assert run(capsys, "bench", "power", "on", "--bench", "sim")[0] == 0
        assert wait_for(lambda: answers(client), timeout=5)
        dtcs = client.get_dtc_by_status_mask(0xFF).service_data.dtcs
        assert 0x0A1B2C in {dtc.id for dtc in dtcs}  # kept in NVM through the power cut
    assert sim_bench.vehicle_state.battery_voltage_v == 12.0


def test_sim_bench_ignition_sets_kl15(sim_bench, capsys):
    assert sim_bench.channel is not None
    database = cantools.database.load_file(str(dbc.path()))
    status = database.get_message_by_name("BCM_Status")
    bus = can.Bus(interface="virtual", channel=sim_bench.channel)

    def kl15() -> int:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            frame = bus.recv(0.2)
            if frame is not None and frame.arbitration_id == status.frame_id:
                decoded = status.decode(frame.data, decode_choices=False)
                return int(decoded["BCM_KL15"])
        raise AssertionError("no BCM_Status frame")

    try:
        assert kl15() == 2  # On
        assert run(capsys, "bench", "ign", "off")[0] == 0
        assert wait_for(lambda: kl15() == 0, timeout=3)
        assert "ignition: off" in run(capsys, "bench", "status")[1]
        assert run(capsys, "bench", "ign", "on")[0] == 0
        assert wait_for(lambda: kl15() == 2, timeout=3)
    finally:
        bus.shutdown()


def test_undervoltage_stops_a_flash_before_erase(sim_bench, image_file, capsys):
    ecm = sim_bench.vehicle.ecu("ecm")
    before = ecm.boot_status
    assert run(capsys, "bench", "power", "set", "--volts", "10.5")[0] == 0
    assert ecm.powered  # 10.5 V still runs the ECUs; it is not enough to flash them
    assert sim_bench.channel is not None
    bus, notifier, frames = sniffer(sim_bench.channel)
    try:
        code, _, err = run(capsys, "flash", "--bench", "sim", "--ecu", "ecm", str(image_file))
        time.sleep(0.2)
    finally:
        notifier.stop()
        bus.shutdown()
    assert code == 1
    one_line_error(
        err,
        "bench sim: undervoltage: the supply measures 10.50 V",
        "the flashing window is 11.50..14.50 V",
        "stopped before anything was sent",
    )
    assert diag_frames(frames) == []
    assert ecm.boot_status == before and ecm.boot_status.pending_bank == NO_BANK
    assert ecm.version == "1.0.0"

    # At the nominal voltage the same flash goes ahead; the sim bench asks nobody.
    assert run(capsys, "bench", "power", "on")[0] == 0
    code, out, _ = run(capsys, "flash", "--bench", "sim", "--ecu", "ecm", str(image_file))
    assert code == 0, out
    assert "sim: supply 12.00 V" in out and "ecm: flashed 2.0.0 (1.0.0 -> 2.0.0)" in out
    assert ecm.version == "2.0.0"


def test_sim_bench_process(isolated, tmp_path, capsys):
    child = HilRun("bench", "sim", "run", ready="serving")
    try:
        bench = resolve_bench("sim")
        assert bench.unavailable is None
        assert bench.bus.interface == "remote"
        assert run(capsys, "bench", "power", "off")[0] == 0
        with bench.connect() as rig:
            client = rig.uds("bms")
            client.set_config("p2_timeout", 0.3)
            assert not answers(client)
            assert run(capsys, "bench", "power", "on")[0] == 0
            assert wait_for(lambda: answers(client), timeout=5)
        assert "output on, 12.00 V" in run(capsys, "bench", "status")[1]
    finally:
        code = child.stop(signal.SIGTERM)
    assert code == 0 and "stopped" in child.text
    assert not (tmp_path / "state" / "sim-bench.json").exists()
    assert (tmp_path / "state" / "sim-bench" / "nvm" / "bms").is_dir()  # NVM kept
    code, _, err = run(capsys, "bench", "status")
    assert code == 1
    one_line_error(err, "the sim bench is not running", "hil bench sim run")


def test_a_second_sim_bench_is_refused(sim_bench, tmp_path):
    with pytest.raises(BenchError, match="a sim bench is already running"):
        SimBench(state_dir=tmp_path / "state").start()


# ---------------------------------------------------------------------------- flash safety


def test_dry_run_sends_nothing(lab, psu, vehicle, image_file, capsys):
    assert run(capsys, "bench", "power", "on", "--bench", "lab")[0] == 0
    psu.commands.clear()
    bus, notifier, frames = sniffer(lab)
    try:
        code, out, _ = run(
            capsys, "flash", "--bench", "lab", "--ecu", "ecm", str(image_file), "--dry-run"
        )
        time.sleep(0.2)
    finally:
        notifier.stop()
        bus.shutdown()
    assert code == 0
    size = image_file.stat().st_size
    assert f"dry run: flash ecm with image 2.0.0 ({size} bytes); nothing is sent" in out
    assert "physical requests to 0x7E0 (replies from 0x7E8), functional ones to 0x7DF" in out
    erase = f"31 01 FF 00 44 00 01 00 00 {' '.join(f'{b:02X}' for b in size.to_bytes(4, 'big'))}"
    assert f"erase                physical   {erase}" in out
    blocks = -(-size // 4093)
    assert f"{blocks} blocks of up to 4093 bytes" in out
    for text in ("10 02", "27 11 / 27 12 <key>", "11 01", "31 01 FF 02", "functional 10 81"):
        assert text in out
    assert "confirmation: would be asked" in out
    assert "supply: 12.00 V, flashing window 11.50..14.50 V: the flash would go ahead" in out
    assert diag_frames(frames) == []
    assert all(command.endswith("?") for command in psu.commands)  # measured, nothing set
    assert vehicle.ecu("ecm").version == "1.0.0"


def test_dry_run_without_a_bench(image_file, capsys):
    code, out, _ = run(capsys, "flash", "--sim", "--ecu", "bms", str(image_file), "--dry-run")
    assert code == 0
    assert "physical requests to 0x7E1" in out and "31 01 FF 00" in out


def test_real_bench_without_a_terminal_needs_yes(lab, vehicle, image_file, capsys):
    assert run(capsys, "bench", "power", "on", "--bench", "lab")[0] == 0
    bus, notifier, frames = sniffer(lab)
    try:
        code, _, err = run(capsys, "flash", "--bench", "lab", "--ecu", "ecm", str(image_file))
        time.sleep(0.2)
    finally:
        notifier.stop()
        bus.shutdown()
    assert code == 2
    one_line_error(err, "refusing to flash ecm on bench lab without confirmation", "--yes")
    assert diag_frames(frames) == []

    code, out, _ = run(capsys, "flash", "--bench", "lab", "--ecu", "ecm", str(image_file), "--yes")
    assert code == 0, out
    assert vehicle.ecu("ecm").version == "2.0.0"


def test_bench_from_the_environment_and_conflicting_options(
    lab, vehicle, image_file, capsys, monkeypatch
):
    monkeypatch.setenv("HIL_BENCH", "lab")
    code, _, err = run(capsys, "flash", "--ecu", "ecm", str(image_file))
    assert code == 2  # HIL_BENCH picked the lab bench: a real one, no terminal
    one_line_error(err, "pass --yes")
    code, _, err = run(capsys, "flash", "--bench", "lab", "--sim", "--ecu", "ecm", str(image_file))
    assert code == 2
    one_line_error(err, "--bench brings its own bus and ECUs; drop --sim")
    # Bus options on the command line beat the bench from the environment.
    code, out, _ = run(
        capsys, "flash", "-i", "virtual", "-c", lab, "--ecu", "ecm", str(image_file), "--dry-run"
    )
    assert code == 0 and "bench lab" not in out


@pytest.mark.parametrize(
    ("volts", "output", "problem"),
    [(15.0, True, "overvoltage: the supply measures 15.00 V"), (12.0, False, "output off")],
)
def test_supply_outside_the_window(lab, psu, vehicle, image_file, capsys, volts, output, problem):
    with psu.lock:
        psu.channel(1).set_voltage_v = volts
        psu.channel(1).output_on = output
    code, _, err = run(capsys, "flash", "--bench", "lab", "--ecu", "ecm", str(image_file), "--yes")
    assert code == 1
    one_line_error(err, f"bench lab: {problem}", "11.50..14.50 V")
    assert vehicle.ecu("ecm").version == "1.0.0"


def test_confirmation_prompt(lab, vehicle, image_file):
    bench = resolve_bench("lab")
    questions: list[str] = []
    with bench.connect() as rig:
        rig.power.on()
        with pytest.raises(FlashDeclined, match="not confirmed; nothing was sent"):
            prepare_flash(rig, "ecm", "ecm.img", ask=lambda q: questions.append(q) or False)
        assert questions == [
            "Flash ecm.img into ECU ecm on bench lab (rack 3; supply 12.00 V)? [y/N] "
        ]
        with pytest.raises(ConfirmationRequired):
            prepare_flash(rig, "ecm", "ecm.img")  # nobody to ask
        reading = prepare_flash(rig, "ecm", "ecm.img", yes=True)  # --yes: nobody asked
        assert reading is not None and reading.volts == 12.0

        rig.power.set(volts=11.0)
        with pytest.raises(SupplyVoltageError) as info:
            prepare_flash(rig, "ecm", "ecm.img", ask=lambda q: pytest.fail("asked anyway"))
        assert info.value.problem == "undervoltage" and info.value.measured_v == 11.0

        rig.power.on()
        result = flash_on_bench(
            rig, "ecm", image_file.read_bytes(), image_name="ecm.img", ask=lambda q: True
        )
    assert result.ok, result.failure
    assert vehicle.ecu("ecm").version == "2.0.0"
