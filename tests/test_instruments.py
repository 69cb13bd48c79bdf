"""Bench instrument drivers against their simulated instruments, over loopback TCP and a pty."""

from __future__ import annotations

import logging
import os
import socket
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from helpers import wait_for

from hil.errors import HilError
from hil.instruments import (
    BUILTIN_DRIVERS,
    DriverUnavailableError,
    InstrumentPortError,
    InstrumentReplyError,
    InstrumentSettingError,
    InstrumentTimeoutError,
    PowerSupply,
    RelayBoard,
    ScpiError,
    UnknownInstrumentError,
    available_instruments,
    load_driver,
    open_instrument,
    open_power_supply,
    open_relay_board,
)
from hil.instruments.korad import KoradPowerSupply
from hil.instruments.lcus import LcusRelayBoard, lcus_frame, parse_lcus_states
from hil.instruments.link import open_serial_port
from hil.instruments.numato import NumatoRelayBoard, numato_index
from hil.instruments.scpi import ScpiPowerSupply
from hil.instruments.sim import (
    SimInstrument,
    SimKoradPsu,
    SimLcusBoard,
    SimNumatoBoard,
    SimScpiPsu,
)

# Generous against a loaded CI machine, short enough that a missing reply costs little.
TIMEOUT_S = 2.0
SHORT_TIMEOUT_S = 0.2

S = TypeVar("S", bound=SimInstrument)


def _transports() -> list[Any]:
    pty = pytest.param(
        "pty",
        marks=pytest.mark.skipif(
            not hasattr(os, "openpty"), reason="this platform has no os.openpty (no pty)"
        ),
    )
    return ["tcp", pty]


@pytest.fixture(autouse=True)
def _quick_socket_close(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the 0.3 s pyserial sleeps after closing a ``socket://`` port.

    It gives a serial-over-TCP server time to accept the next connection; the sims
    accept at once, and it would add about 10 s to this file.
    """
    if find_spec("serial") is None:
        return
    from serial.urlhandler import protocol_socket

    monkeypatch.setattr(protocol_socket, "time", SimpleNamespace(sleep=lambda _s: None))


@pytest.fixture(params=_transports())
def transport(request: pytest.FixtureRequest) -> str:
    """Each driver test runs over loopback TCP (socket://) and over a pseudo-terminal."""
    return str(request.param)


@pytest.fixture
def pyserial() -> None:
    """Require pyserial (a dependency of the project: the drivers open ports with it)."""
    assert find_spec("serial") is not None, "pyserial is a dependency: pip install -e ."


@pytest.fixture
def serve(pyserial: None, transport: str) -> Iterator[Callable[..., tuple[Any, str]]]:
    """Start a simulated instrument on the transport; return it and the URL to open.

    On teardown every sim must stop its threads and report no internal error.
    """
    sims: list[SimInstrument] = []

    def start(sim_class: type[S], **kwargs: Any) -> tuple[S, str]:
        pty = transport == "pty"
        sim = sim_class(tcp=not pty, pty=pty, **kwargs)
        sim.start()
        sims.append(sim)
        return sim, sim.tcp_url if transport == "tcp" else sim.pty_path

    yield start
    for sim in sims:
        sim.close()
        assert not sim.running
        assert sim.errors == []


# --------------------------------------------------------------------------- Korad


def test_korad_round_trip(serve):
    sim, url = serve(SimKoradPsu)
    with KoradPowerSupply.open(url, command_gap_s=0.0, timeout_s=TIMEOUT_S) as psu:
        assert psu.identify() == "KORAD KA3005P V5.8 SN:00000001"
        psu.set_voltage(12.0)
        psu.set_current_limit(1.5)
        assert (sim.set_voltage_v, sim.current_limit_a) == (12.0, 1.5)
        assert psu.voltage_setpoint() == 12.0
        assert psu.current_limit() == 1.5
        assert not psu.is_on()
        assert psu.measure_voltage() == 0.0

        psu.output(True)
        assert sim.output_on
        assert psu.is_on()
        assert psu.measure_voltage() == 12.0
        assert psu.measure_current() == 0.0  # nothing connected

        psu.output(False)
        assert not sim.output_on
        assert not psu.is_on()
    assert psu.closed
    # Exactly the commands of the protocol, no terminators, nothing the supply ignored.
    assert sim.commands[:3] == ["*IDN?", "VSET1:12.00", "VSET1?"]
    assert sim.unknown == []


def test_korad_constant_current_with_a_load(serve):
    sim, url = serve(SimKoradPsu)
    sim.load_ohms = 2.0
    with KoradPowerSupply.open(url, command_gap_s=0.0, timeout_s=TIMEOUT_S) as psu:
        psu.set_voltage(12.0)
        psu.set_current_limit(1.0)
        psu.output(True)
        # 12 V into 2 ohms would be 6 A: the 1 A limit holds and the voltage drops.
        assert psu.measure_current() == 1.0
        assert psu.measure_voltage() == 2.0
        assert not psu.status().constant_voltage

        sim.load_ohms = 100.0
        assert psu.measure_current() == pytest.approx(0.12)
        assert psu.measure_voltage() == 12.0
        assert psu.status().constant_voltage


def test_korad_set_point_the_supply_refuses(serve):
    sim, url = serve(SimKoradPsu)
    with KoradPowerSupply.open(url, command_gap_s=0.0, timeout_s=TIMEOUT_S) as psu:
        # The KA3005P clamps to 30 V without a word; the read-back catches it.
        with pytest.raises(InstrumentSettingError, match=r"did not take 'VSET1:45.00': VSET1"):
            psu.set_voltage(45)
        assert sim.set_voltage_v == 30.0
        psu.verify = False
        psu.set_voltage(45)


def test_korad_stray_byte_after_iset_is_discarded(serve):
    _sim, url = serve(SimKoradPsu, iset_extra_byte=b"K")
    with KoradPowerSupply.open(url, command_gap_s=0.0, timeout_s=TIMEOUT_S) as psu:
        psu.set_current_limit(2.0)
        assert psu.current_limit() == 2.0
        psu.set_voltage(5.0)
        assert psu.voltage_setpoint() == 5.0


def test_korad_values_outside_the_protocol(pyserial):
    psu = KoradPowerSupply.open("loop://", command_gap_s=0.0)
    with psu, pytest.raises(InstrumentSettingError, match="more voltage"):
        psu.set_voltage(100.0)
    with pytest.raises(InstrumentSettingError, match="non-negative"):
        psu.set_voltage(-1)
    with pytest.raises(InstrumentSettingError, match="number"):
        psu.set_current_limit("1")  # type: ignore[arg-type]


def test_korad_waits_between_commands(pyserial):
    """The gap is waited out between exchanges (sleep injected: the test does not wait)."""
    with SimKoradPsu(pty=False) as sim:
        waits: list[float] = []
        port = open_serial_port(sim.tcp_url, timeout_s=TIMEOUT_S)
        with KoradPowerSupply(
            port, port_name=sim.tcp_url, command_gap_s=30.0, verify=False, sleep=waits.append
        ) as psu:
            psu.set_voltage(12.0)
            psu.output(True)
            assert psu.measure_voltage() == 12.0
        assert len(waits) == 2
        assert all(25.0 < wait <= 30.0 for wait in waits)
        # Sent back to back, still understood: the sim frames by the command's form.
        assert sim.commands == ["VSET1:12.00", "OUT1", "VOUT1?"]


# --------------------------------------------------------------------------- SCPI


def test_scpi_round_trip(serve):
    sim, url = serve(SimScpiPsu)
    sim.load_ohms = 24.0
    with ScpiPowerSupply.open(url, timeout_s=TIMEOUT_S) as psu:
        assert psu.identify() == "HIL,SIM-PSU-3005,0001,1.0"
        psu.set_voltage(12.0)
        psu.set_current_limit(2.0)
        assert psu.voltage_setpoint() == 12.0
        assert psu.current_limit() == 2.0
        psu.output(True)
        assert sim.output_on
        assert psu.is_on()
        assert psu.measure_voltage() == 12.0
        assert psu.measure_current() == 0.5

        # CC: 12 V into 24 ohms with a 0.25 A limit.
        psu.set_current_limit(0.25)
        assert psu.measure_current() == 0.25
        assert psu.measure_voltage() == 6.0

        psu.output(False)
        assert not psu.is_on()
        assert psu.measure_current() == 0.0
    assert "VOLT 12" in sim.commands
    assert "SYST:ERR?" in sim.commands


def test_scpi_channel_selection(serve):
    sim, url = serve(SimScpiPsu, channels=2)
    with ScpiPowerSupply.open(url, channel=2, timeout_s=TIMEOUT_S) as psu:
        psu.set_voltage(5.0)
        psu.output(True)
        assert sim.channel(2).set_voltage_v == 5.0
        assert sim.channel(2).output_on
        assert sim.channel(1).set_voltage_v == 0.0
        assert not sim.channel(1).output_on
    with pytest.raises(ScpiError, match=r"-222,\"Data out of range\" after 'INST:NSEL 3'"):
        ScpiPowerSupply.open(url, channel=3, timeout_s=TIMEOUT_S)
    # The failed open closed its port: the next one gets through.
    with ScpiPowerSupply.open(url, channel=1, timeout_s=TIMEOUT_S) as psu:
        assert psu.voltage_setpoint() == 0.0


def test_scpi_error_queue_raises_with_the_instruments_message(serve):
    sim, url = serve(SimScpiPsu)
    with ScpiPowerSupply.open(url, timeout_s=TIMEOUT_S) as psu:
        psu.set_voltage(12.0)
        with pytest.raises(ScpiError) as raised:
            psu.set_voltage(99.0)
        error = raised.value
        assert (error.code, error.message, error.command) == (-222, "Data out of range", "VOLT 99")
        assert str(error) == (
            f"the power supply on {url} reported -222,\"Data out of range\" after 'VOLT 99'"
        )
        assert isinstance(error, HilError)
        assert sim.set_voltage_v == 12.0
        assert not sim.error_queue  # drained

        with pytest.raises(ScpiError, match=r'-113,"Undefined header" after \'FOO 1\''):
            psu.write("FOO 1")
        psu.set_voltage(13.0)  # the queue is empty again: no stale error
        assert sim.set_voltage_v == 13.0


def test_scpi_rejected_query_reports_the_queued_error(serve):
    _sim, url = serve(SimScpiPsu)
    expected = r"-113,\"Undefined header\" after 'MEAS:POW\?'"
    # Short enough to wait out the missing reply, long enough for SYST:ERR? after it.
    with (
        ScpiPowerSupply.open(url, timeout_s=0.5) as psu,
        pytest.raises(ScpiError, match=expected),
    ):
        psu.query("MEAS:POW?")


def test_scpi_errors_unchecked(serve):
    sim, url = serve(SimScpiPsu)
    with ScpiPowerSupply.open(url, timeout_s=TIMEOUT_S, check_errors=False) as psu:
        psu.set_voltage(99.0)  # nothing waits for the instrument to take it
        assert wait_for(lambda: sim.error_queue)
        assert list(sim.error_queue) == [(-222, "Data out of range")]
        assert psu.read_errors() == [(-222, "Data out of range")]
        assert psu.read_errors() == []


def test_scpi_over_loop_url(pyserial):
    """``loop://`` works too: the port hands the query back as its own reply."""
    with open_instrument("scpi", "loop://", check_errors=False) as psu:
        assert isinstance(psu, ScpiPowerSupply)
        assert psu.query("*IDN?") == "*IDN?"


# --------------------------------------------------------------------------- relays


def test_lcus_frames():
    assert lcus_frame(1, True) == bytes.fromhex("A0 01 01 A2")
    assert lcus_frame(1, False) == bytes.fromhex("A0 01 00 A1")
    assert lcus_frame(2, True) == bytes.fromhex("A0 02 01 A3")
    assert lcus_frame(8, False) == bytes.fromhex("A0 08 00 A8")
    assert parse_lcus_states(b"CH1:ON\r\nCH2:OFF\r\n") == {1: True, 2: False}


def test_lcus_set_and_query(serve):
    sim, url = serve(SimLcusBoard, channels=4)
    with LcusRelayBoard.open(
        url, channels=4, state_query=True, command_gap_s=0.0, timeout_s=TIMEOUT_S
    ) as board:
        assert board.reports_state
        assert list(board.channel_numbers) == [1, 2, 3, 4]
        board.set(1, True)
        board.set(3, True)
        board.set(4, True)
        board.set(4, False)
        assert [board.get(ch) for ch in (1, 2, 3, 4)] == [True, False, True, False]
        assert sim.states == {1: True, 2: False, 3: True, 4: False}
        sim.relays[2] = True  # switched behind the driver's back: the board says so
        assert board.read_states() == {1: True, 2: True, 3: True, 4: False}
    assert sim.commands[:2] == ["A0 01 01 A2", "A0 03 01 A4"]
    assert sim.bad_frames == 0


def test_lcus_without_query_recalls_the_last_state_set(serve):
    sim, url = serve(SimLcusBoard, channels=2, answers_query=False)
    with LcusRelayBoard.open(url, channels=2, command_gap_s=0.0) as board:
        assert not board.reports_state
        assert board.get(2) is False  # never set
        board.set(2, True)
        assert board.get(2) is True
        assert wait_for(lambda: sim.states[2])
        assert "FF" not in sim.commands
        with pytest.raises(InstrumentSettingError, match=r"channels 1\.\.2, not 0"):
            board.set(0, True)


def test_lcus_query_unsupported_by_the_board_times_out(serve):
    _sim, url = serve(SimLcusBoard, channels=2, answers_query=False)
    with (
        LcusRelayBoard.open(
            url, channels=2, state_query=True, command_gap_s=0.0, timeout_s=SHORT_TIMEOUT_S
        ) as board,
        pytest.raises(InstrumentTimeoutError, match=r"to 'FF' within 0\.2 s"),
    ):
        board.get(1)


def test_lcus_sim_ignores_bad_frames(pyserial):
    with SimLcusBoard(channels=2, pty=False) as sim:
        port = open_serial_port(sim.tcp_url)
        try:
            port.write(bytes.fromhex("A0 01 01 A3") + b"junk" + lcus_frame(2, True))
        finally:
            assert wait_for(lambda: sim.states[2])
            port.close()
        assert sim.states == {1: False, 2: True}
        assert sim.bad_frames == 1 + len(b"junk")


def test_numato_set_and_read_with_letters_above_nine(serve):
    sim, url = serve(SimNumatoBoard, channels=16)
    with NumatoRelayBoard.open(url, channels=16, timeout_s=TIMEOUT_S) as board:
        assert board.reports_state
        assert board.identify() == "00000008"
        assert list(board.channel_numbers) == list(range(16))
        for channel in (0, 5, 9, 10, 12, 15):
            board.set(channel, True)
        board.set(5, False)
        assert [board.get(ch) for ch in (0, 1, 5, 9, 10, 12, 15)] == [
            True,
            False,
            False,
            True,
            True,
            True,
            True,
        ]
        assert {ch for ch, on in sim.states.items() if on} == {0, 9, 10, 12, 15}
        with pytest.raises(InstrumentSettingError, match=r"channels 0\.\.15, not 16"):
            board.set(16, True)
    assert "relay on A" in sim.commands
    assert "relay on C" in sim.commands
    assert "relay read F" in sim.commands


def test_numato_index():
    assert [numato_index(ch) for ch in (0, 9, 10, 15, 31)] == ["0", "9", "A", "F", "V"]
    with pytest.raises(InstrumentSettingError):
        numato_index(32)


# --------------------------------------------------------------------------- registry


def test_builtin_kinds():
    kinds = available_instruments()
    assert {"korad", "scpi", "lcus", "numato"} <= set(kinds)
    for kind, value in BUILTIN_DRIVERS.items():
        assert kinds[kind] == value
    assert load_driver("korad") is KoradPowerSupply
    assert load_driver("scpi") is ScpiPowerSupply
    assert load_driver("lcus") is LcusRelayBoard
    assert load_driver("numato") is NumatoRelayBoard


def test_builtins_without_package_metadata(pyserial, monkeypatch):
    """A checkout whose metadata is stale (no entry points at all) still has the built-ins."""
    monkeypatch.setattr(metadata, "entry_points", lambda **_: metadata.EntryPoints(()))
    assert set(available_instruments()) == set(BUILTIN_DRIVERS)
    with SimNumatoBoard(pty=False) as sim, open_instrument("numato", sim.tcp_url) as board:
        assert isinstance(board, NumatoRelayBoard)


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(UnknownInstrumentError) as raised:
        open_instrument("tenma-xyz", "loop://")
    assert str(raised.value) == (
        "unknown instrument kind 'tenma-xyz'; known kinds: korad, lcus, numato, scpi"
    )


def test_options_are_checked(pyserial):
    with pytest.raises(InstrumentSettingError, match=r"unknown option baud for the 'korad'"):
        open_instrument("korad", "loop://", baud=9600)
    with pytest.raises(InstrumentSettingError, match="'numato' is not a power supply"):
        open_power_supply("numato", "loop://")
    with pytest.raises(InstrumentSettingError, match="'scpi' is not a relay board"):
        open_relay_board("scpi", "loop://")


def test_open_by_kind(serve):
    sim, url = serve(SimKoradPsu)
    with open_power_supply("korad", url, command_gap_s=0.0, timeout_s=TIMEOUT_S) as psu:
        assert isinstance(psu, PowerSupply)
        psu.set_voltage(13.5)
    assert sim.set_voltage_v == 13.5


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed distribution (on sys.path) that registers drivers by entry point."""
    (tmp_path / "fake_bench_drivers.py").write_text(
        textwrap.dedent(
            """
            from hil.instruments.korad import KoradPowerSupply

            class FakePsu(KoradPowerSupply):
                kind = "fakepsu"

            NOT_A_DRIVER = 42
            """
        )
    )
    dist_info = tmp_path / "fake_bench_drivers-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-bench-drivers\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [hil.instruments]
            fakepsu = fake_bench_drivers:FakePsu
            notadriver = fake_bench_drivers:NOT_A_DRIVER
            missing = fake_bench_drivers_gone:Driver
            korad = fake_bench_drivers:FakePsu
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("fake_bench_drivers", None)


def test_entry_point_added_at_runtime(fake_distribution, serve, caplog):
    _sim, url = serve(SimKoradPsu)
    with caplog.at_level(logging.WARNING, logger="hil.instruments.registry"):
        kinds = available_instruments()
    assert kinds["fakepsu"] == "fake_bench_drivers:FakePsu"
    # A built-in kind cannot be taken over by another package.
    assert kinds["korad"] == BUILTIN_DRIVERS["korad"]
    assert "ignoring entry point korad" in caplog.text

    with open_instrument("fakepsu", url, command_gap_s=0.0) as psu:
        assert type(psu).__name__ == "FakePsu"
        assert psu.identify().startswith("KORAD")

    with pytest.raises(DriverUnavailableError, match=r"'missing' instrument driver .* cannot"):
        open_instrument("missing", url)
    with pytest.raises(HilError, match=r"'notadriver' instrument driver .* is not an Instrument"):
        open_instrument("notadriver", url)


def test_without_pyserial(monkeypatch):
    monkeypatch.setitem(sys.modules, "serial", None)
    with pytest.raises(DriverUnavailableError, match=r"need pyserial \(pip install pyserial\)"):
        open_instrument("korad", "loop://")


# --------------------------------------------------------------------------- faults


def test_missing_port(pyserial, tmp_path):
    port = tmp_path / "ttyUSB9"
    with pytest.raises(InstrumentPortError) as raised:
        open_power_supply("korad", str(port))
    assert str(raised.value) == f"could not open port {port}: No such file or directory"
    assert isinstance(raised.value, OSError)


def test_nothing_listening_on_the_socket(pyserial):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        free_port = listener.getsockname()[1]
    url = f"socket://127.0.0.1:{free_port}"
    with pytest.raises(InstrumentPortError, match=f"could not open port {url}: .*refused"):
        open_relay_board("numato", url)


@pytest.mark.parametrize(
    ("sim_class", "kind", "options", "act", "command"),
    [
        (SimKoradPsu, "korad", {"command_gap_s": 0.0}, lambda i: i.measure_voltage(), "VOUT1?"),
        (SimScpiPsu, "scpi", {}, lambda i: i.measure_current(), "MEAS:CURR?"),
        (SimLcusBoard, "lcus", {"state_query": True, "command_gap_s": 0}, lambda i: i.get(1), "FF"),
        (SimNumatoBoard, "numato", {}, lambda i: i.get(1), "relay read 1"),
    ],
    ids=["korad", "scpi", "lcus", "numato"],
)
def test_no_reply_times_out(serve, sim_class, kind, options, act, command):
    sim, url = serve(sim_class)
    with open_instrument(kind, url, timeout_s=TIMEOUT_S, **options) as instrument:
        sim.faults.no_reply()
        instrument.timeout_s = SHORT_TIMEOUT_S
        started = time.monotonic()
        with pytest.raises(InstrumentTimeoutError) as raised:
            act(instrument)
        assert time.monotonic() - started < 5.0  # bounded: no hang
        assert str(raised.value) == (
            f"no reply from {instrument.device} on {url} to {command!r} within 0.2 s"
        )
        instrument.timeout_s = TIMEOUT_S
        act(instrument)  # the next exchange is fine


def test_garbled_reply(serve):
    sim, url = serve(SimKoradPsu)
    with KoradPowerSupply.open(url, command_gap_s=0.0, timeout_s=TIMEOUT_S) as psu:
        psu.set_voltage(12.0)
        psu.output(True)
        sim.faults.garble()
        with pytest.raises(InstrumentReplyError) as raised:
            psu.measure_voltage()
        assert str(raised.value) == (
            f"unexpected reply 'x2.00' to 'VOUT1?' from the power supply on {url}"
        )
        assert psu.measure_voltage() == 12.0


def test_garbled_numato_echo(serve):
    sim, url = serve(SimNumatoBoard)
    with NumatoRelayBoard.open(url, timeout_s=TIMEOUT_S) as board:
        sim.faults.garble()
        with pytest.raises(InstrumentReplyError, match=r"'xelay read 3.*no echo"):
            board.get(3)


def test_garbled_scpi_number(serve):
    sim, url = serve(SimScpiPsu)
    with ScpiPowerSupply.open(url, timeout_s=TIMEOUT_S) as psu:
        sim.faults.garble()
        with pytest.raises(
            InstrumentReplyError, match=r"unexpected reply 'x.000' to 'MEAS:VOLT\?'"
        ):
            psu.measure_voltage()


def test_slow_reply(serve):
    sim, url = serve(SimScpiPsu)
    with ScpiPowerSupply.open(url, timeout_s=TIMEOUT_S, check_errors=False) as psu:
        sim.faults.slow(0.1)
        assert psu.identify().startswith("HIL,")  # late, but within the timeout

        sim.faults.slow(2 * SHORT_TIMEOUT_S)
        psu.timeout_s = SHORT_TIMEOUT_S
        with pytest.raises(InstrumentTimeoutError):
            psu.identify()
        psu.timeout_s = TIMEOUT_S
        # Once the late reply is in, it is discarded rather than read as the next answer.
        # (The sim counts a reply once written, which can be after the driver has read it,
        # so count from the start: two *IDN? replies.)
        assert wait_for(lambda: sim.replies_sent == 2)
        time.sleep(0.05)  # a pty hands written bytes to the reader asynchronously
        assert psu.voltage_setpoint() == 0.0


def test_sim_closing_under_a_connected_driver(pyserial, transport):
    pty = transport == "pty"
    sim = SimKoradPsu(tcp=not pty, pty=pty or False).start()
    url = sim.pty_path if pty else sim.tcp_url
    psu = KoradPowerSupply.open(url, command_gap_s=0.0, timeout_s=SHORT_TIMEOUT_S)
    try:
        assert psu.measure_voltage() == 0.0
        started = time.monotonic()
        sim.close()
        assert time.monotonic() - started < 5.0
        assert not sim.running
        assert sim.errors == []
        sim.close()  # twice is harmless
        with pytest.raises((InstrumentPortError, InstrumentTimeoutError)):
            psu.measure_voltage()
    finally:
        psu.close()
    if not pty:
        with pytest.raises(InstrumentPortError, match="refused"):
            KoradPowerSupply.open(url)


def test_driver_closed(pyserial):
    psu = open_power_supply("scpi", "loop://", check_errors=False)
    with psu:
        pass
    assert psu.closed
    psu.close()
    with pytest.raises(InstrumentPortError, match="the port loop:// is closed"):
        psu.measure_voltage()


def test_sims_serve_both_transports_at_once(pyserial):
    with SimNumatoBoard(channels=4) as sim:
        if not sim.has_pty:
            pytest.skip(f"no pseudo-terminal: {sim.pty_problem}")
        with (
            NumatoRelayBoard.open(sim.tcp_url, channels=4) as tcp_board,
            NumatoRelayBoard.open(sim.pty_path, channels=4) as pty_board,
        ):
            tcp_board.set(1, True)
            assert pty_board.get(1)
            pty_board.set(2, True)
            assert tcp_board.get(2)
    assert not sim.running
    assert sim.errors == []


def test_relay_board_interface():
    assert issubclass(LcusRelayBoard, RelayBoard)
    assert issubclass(NumatoRelayBoard, RelayBoard)
    assert LcusRelayBoard.first_channel == 1
    assert NumatoRelayBoard.first_channel == 0
