"""Bench configuration: resolution order, the built-in sim bench, validation with file:line:key."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import can
import pytest

from hil.bench import (
    BenchBusError,
    BenchConfig,
    BenchConfigError,
    BenchNotRunningError,
    UnknownBenchError,
    load_config_file,
    resolve_bench,
)
from hil.bench.paths import ConfigLocation, find_config_file
from hil.bench.tomlpos import TomlPositions
from hil.cli import main
from ota_formats.uds import security_key

BMS_SECRET = "101112131415161718191a1b1c1d1e1f"


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


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def line_of(text: str, snippet: str) -> int:
    """The 1-based line of the first line of ``text`` (dedented) holding ``snippet``."""
    lines = textwrap.dedent(text).lstrip("\n").splitlines()
    matches = [number for number, line in enumerate(lines, 1) if snippet in line]
    assert matches, snippet
    return matches[0]


def bench_file(name: str, default: str | None = None) -> str:
    top = f'default_bench = "{default}"\n' if default else ""
    return top + f'[benches.{name}]\ndescription = "{name} bench"\nvehicle = "demo"\n'


# ---------------------------------------------------------------------------- resolution


def test_sim_bench_exists_without_any_file(isolated):
    config = BenchConfig.load()
    assert config.file is None
    assert config.names() == ["sim"]
    assert config.select() == ("sim", "built-in default")
    bench = config.bench()
    assert bench.name == "sim" and bench.simulated and bench.source == "built-in"
    assert list(bench.ecus) == ["ecm", "bms", "bcm"]
    bms = bench.ecu("bms")
    assert (bms.request_id, bms.response_id, bms.functional_id) == (0x7E1, 0x7E9, 0x7DF)
    assert bms.seed_key is not None
    seed = b"\x01\x02\x03\x04"
    assert bms.seed_key.key(0x11, seed) == security_key(bytes.fromhex(BMS_SECRET), seed)
    assert bench.power is not None and bench.power.kind == "korad"
    assert (bench.power.min_volts, bench.power.max_volts) == (11.5, 14.5)
    assert bench.relays.lines["ignition"].channel == 1
    # Not running: it resolves, but its parts cannot be reached, with a clear error.
    assert "hil bench sim run" in (bench.unavailable or "")
    with bench.connect() as rig, pytest.raises(BenchNotRunningError, match="not running"):
        rig.power.read()


def test_sim_bench_cannot_be_redefined(isolated):
    text = """
    [benches.sim]
    vehicle = "demo"
    """
    write(isolated / "hil.toml", text)
    with pytest.raises(BenchConfigError) as info:
        BenchConfig.load()
    assert str(info.value).startswith(f"hil.toml:{line_of(text, '[benches.sim]')}: benches.sim: ")
    assert "built-in simulated bench" in str(info.value)


def test_file_search_order(isolated, tmp_path, monkeypatch):
    user = write(tmp_path / "xdg" / "hil" / "hil.toml", bench_file("user"))
    assert find_config_file() == ConfigLocation(user, "user config dir", explicit=False)
    assert BenchConfig.load().names() == ["sim", "user"]

    write(isolated / "hil.toml", bench_file("local"))
    assert BenchConfig.load().names() == ["sim", "local"]  # ./hil.toml beats the user dir

    from_env = write(tmp_path / "env.toml", bench_file("envfile"))
    monkeypatch.setenv("HIL_CONFIG", str(from_env))
    assert BenchConfig.load().names() == ["sim", "envfile"]  # HIL_CONFIG beats ./hil.toml

    given = write(tmp_path / "cli.toml", bench_file("clifile"))
    config = BenchConfig.load(given)  # --hil-config beats HIL_CONFIG
    assert config.names() == ["sim", "clifile"]
    assert config.file is not None and config.file.location.origin == "--hil-config"


def test_a_named_file_must_exist(isolated, monkeypatch):
    monkeypatch.setenv("HIL_CONFIG", "missing.toml")
    with pytest.raises(BenchConfigError, match=r"^missing.toml: no such configuration file"):
        BenchConfig.load()


def test_bench_selection_order(isolated, monkeypatch):
    write(isolated / "hil.toml", bench_file("a", default="a") + bench_file("b"))
    assert BenchConfig.load().select() == ("a", "default_bench in hil.toml")
    assert resolve_bench().name == "a"
    monkeypatch.setenv("HIL_BENCH", "b")
    assert BenchConfig.load().select() == ("b", "HIL_BENCH")  # environment beats the file
    assert resolve_bench().name == "b"
    assert resolve_bench("sim").name == "sim"  # the command line beats the environment
    assert BenchConfig.load().select("a") == ("a", "--bench")


def test_selection_shown_by_the_cli(isolated, monkeypatch, capsys):
    write(isolated / "hil.toml", bench_file("a", default="a") + bench_file("b"))
    assert main(["bench", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert (listed["default"], listed["default_from"]) == ("a", "default_bench in hil.toml")
    assert [b["name"] for b in listed["benches"]] == ["sim", "a", "b"]
    assert listed["benches"][1]["source"] == "hil.toml:2"
    assert listed["benches"][0]["status"] == "not running"
    monkeypatch.setenv("HIL_BENCH", "b")
    assert main(["bench", "list", "--json", "--bench", "sim"]) == 0
    assert json.loads(capsys.readouterr().out)["default_from"] == "--bench"
    assert main(["bench", "list"]) == 0
    out = capsys.readouterr().out
    assert "* b" in out and "default: b (from HIL_BENCH)" in out


def test_unknown_bench(isolated, monkeypatch, capsys):
    write(isolated / "hil.toml", bench_file("lab"))
    monkeypatch.setenv("HIL_BENCH", "lba")
    with pytest.raises(UnknownBenchError, match=r"no bench 'lba' \(HIL_BENCH\); benches: sim, lab"):
        resolve_bench()
    assert main(["bench", "show"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no bench 'lba'")


# ---------------------------------------------------------------------------- ECUs


def test_ecus_from_the_vehicle_file_with_overrides_and_additions(isolated):
    write(
        isolated / "hil.toml",
        """
        [benches.lab]
        vehicle = "demo"

        [benches.lab.ecus.bms]
        isotp = { stmin_ms = 5 }
        uds = { p2_timeout_s = 2.5 }

        [benches.lab.ecus.gw]
        addressing = "normal_29bits"
        request_id = 0x18DA10F1
        response_id = 0x18DAF110
        security = { secret = "00112233" }
        isotp = { tx_padding = 0x55, blocksize = 0 }

        [benches.lab.ecus.tcu]
        addressing = "extended_11bits"
        request_id = 0x6F1
        response_id = 0x612
        target_address = 0x12
        source_address = 0xF1
        """,
    )
    bench = resolve_bench("lab")
    assert list(bench.ecus) == ["ecm", "bms", "bcm", "gw", "tcu"]
    bms = bench.ecu("bms")
    assert bms.isotp.stmin_ms == 5 and bms.isotp.blocksize == 8  # the rest from demo.toml
    assert bms.uds.p2_timeout_s == 2.5 and bms.uds.p2_star_timeout_s == 6.0
    assert bms.request_id == 0x7E1 and bms.flashable
    params = bms.isotp_params()
    assert params["stmin"] == 5 and params["blocking_send"] is True
    config = bms.client_config()
    assert config["p2_timeout"] == 2.5 and config["p2_star_timeout"] == 6.0

    gw = bench.ecu("gw")
    address = gw.address()
    assert address.is_tx_29bits() and address.get_tx_arbitration_id() == 0x18DA10F1
    assert gw.functional_id is None and not gw.flashable
    assert gw.isotp.tx_padding == 0x55 and gw.isotp.blocksize == 0
    assert gw.uds.p2_star_timeout_s == 6.0
    assert gw.seed_key is not None and gw.seed_key.description.startswith("HMAC-SHA256")
    tcu = bench.ecu("tcu").address()
    assert not tcu.is_tx_29bits() and tcu.get_tx_arbitration_id() == 0x6F1
    assert tcu.get_tx_payload_prefix() == b"\x12" and tcu.requires_rx_extension_byte()


def test_secret_from_the_environment(isolated, monkeypatch):
    write(
        isolated / "hil.toml",
        """
        [benches.lab]
        vehicle = "demo"
        ecus.bms.security.secret = "env:HIL_TEST_BMS_SECRET"
        """,
    )
    monkeypatch.setenv("HIL_TEST_BMS_SECRET", "A0A1A2A3A4A5")
    key = resolve_bench("lab").ecu("bms").seed_key
    assert key is not None and key.description == "HMAC-SHA256, secret from env:HIL_TEST_BMS_SECRET"
    assert key.key(1, b"seed") == security_key(bytes.fromhex("A0A1A2A3A4A5"), b"seed")


def test_seed_key_plugin(isolated, tmp_path, monkeypatch):
    write(
        tmp_path / "plugins" / "bench_seedkey.py",
        """
        def xor_key(level, seed, params):
            return bytes(b ^ params["mask"] ^ level for b in seed)


        def reversed_key(seed):
            return seed[::-1]
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    write(
        isolated / "hil.toml",
        """
        [benches.lab.ecus.ecu1]
        request_id = 0x700
        response_id = 0x708
        security = { plugin = "bench_seedkey:xor_key", params = { mask = 0x0F } }
        """,
    )
    ecu = resolve_bench("lab").ecu("ecu1")
    assert ecu.seed_key is not None and ecu.seed_key.description == "plugin bench_seedkey:xor_key"
    assert ecu.seed_key.key(1, b"\x00\x10") == b"\x0e\x1e"
    assert ecu.client_config()["security_algo_params"] == {"mask": 0x0F}
    assert ecu.functional_id == 0x7DF and ecu.flashable
    # udsoncan passes only the arguments a function names; SeedKey.key does the same.
    other = resolve_spec_with_plugin("bench_seedkey:reversed_key")
    assert other.key(1, b"\x01\x02") == b"\x02\x01"


def resolve_spec_with_plugin(plugin: str):
    write(
        Path("hil.toml"),
        f"""
        [benches.lab.ecus.ecu1]
        request_id = 0x700
        response_id = 0x708
        security = {{ plugin = "{plugin}" }}
        """,
    )
    key = resolve_bench("lab").ecu("ecu1").seed_key
    assert key is not None
    return key


# ---------------------------------------------------------------------------- validation

BUS_TYPO = """
[benches.lab]
vehicle = "demo"

[benches.lab.bus]
interface = "virtual"
bitrat = 500000
"""

WRONG_TYPE = """
[benches.lab]
vehicle = "demo"

[benches.lab.ecus.bms]
request_id = "0x7E1"
"""

UNKNOWN_KIND = """
[benches.lab]
power = { kind = "agilent", port = "/dev/ttyUSB0" }
"""

MISSING_PORT = """
[benches.lab]
vehicle = "demo"

[benches.lab.power]
kind = "korad"
volts = 12.0
"""

INLINE_TABLE = """
[benches.lab.relays.boards.relays]
kind = "lcus"
port = "/dev/ttyUSB1"

[benches.lab.relays.lines]
starter = { board = "relays", channel = 2 }
ignition = { board = "relays", channel = "one" }
"""

UNKNOWN_BOARD = """
[benches.lab.relays]
boards.main = { kind = "numato", port = "COM3" }
lines.ignition = { board = "relays", channel = 1 }
"""

DOTTED_KEY = """
[benches.lab]
description = "rack"
power.kind = "scpi"
power.port = "/dev/ttyACM0"
power.min_volts = 14.0
power.max_volts = 11.0
"""

BAD_ANCHOR = """
[benches.lab]
trust_anchors = [
    "00",
]
"""

RELAY_AS_SUPPLY = """
[benches.lab]
power = { kind = "lcus", port = "/dev/ttyUSB0" }
"""

TOML_SYNTAX = """
[benches.lab]
vehicle = "demo"
bus = { interface = "virtual" channel = "x" }
"""


@pytest.mark.parametrize(
    ("text", "marker", "key", "message"),
    [
        (
            BUS_TYPO,
            "bitrat",
            "benches.lab.bus.bitrat",
            "unknown key (known keys: interface, channel, bitrate,",
        ),
        (WRONG_TYPE, "request_id", "benches.lab.ecus.bms.request_id", "Input should be a valid"),
        (UNKNOWN_KIND, "agilent", "benches.lab.power.kind", "unknown instrument kind 'agilent'"),
        (MISSING_PORT, "[benches.lab.power]", "benches.lab.power.port", "missing required key"),
        (
            INLINE_TABLE,
            "ignition",
            "benches.lab.relays.lines.ignition.channel",
            "Input should be a valid integer",
        ),
        (
            UNKNOWN_BOARD,
            "lines.ignition",
            "benches.lab.relays.lines.ignition.board",
            "no relay board 'relays' in this bench (boards: main)",
        ),
        (DOTTED_KEY, "power.kind", "benches.lab.power", "min_volts 14 is not below max_volts 11"),
        (BAD_ANCHOR, '"00"', "benches.lab.trust_anchors[0]", "Ed25519 public key has 32 bytes"),
    ],
)
def test_file_errors_name_file_line_and_key(isolated, text, marker, key, message):
    path = write(isolated / "hil.toml", text)
    with pytest.raises(BenchConfigError) as info:
        load_config_file(find_config_file())
    first = str(info.value).splitlines()[0]
    expected = f"hil.toml:{line_of(text, marker)}: {key}: "
    assert first.startswith(expected), first
    assert message in first, first
    assert info.value.issues[0].file == "hil.toml"
    assert path.exists()


def test_toml_syntax_error_has_its_line(isolated, capsys):
    write(isolated / "hil.toml", TOML_SYNTAX)
    assert main(["bench", "show", "lab"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"error: hil.toml:{line_of(TOML_SYNTAX, 'bus =')}: invalid TOML: ")


@pytest.mark.parametrize(
    ("security", "message"),
    [
        ('{ plugin = "no_such_module_for_hil:key" }', "cannot import seed/key plugin module"),
        ('{ plugin = "json:no_such_function" }', "module 'json' has no 'no_such_function'"),
        ('{ plugin = "math:pi" }', "math:pi is not callable"),
        ('{ plugin = "math:sqrt" }', "math:sqrt takes no parameter named 'seed'"),
        ('{ plugin = "json.loads" }', "a seed/key plugin is named 'module:function'"),
        (
            '{ secret = "env:HIL_TEST_UNSET_SECRET" }',
            "environment variable HIL_TEST_UNSET_SECRET is not set",
        ),
        ('{ secret = "xyz" }', "a secret is hexadecimal, or env:VARNAME"),
        ('{ secret = "00", plugin = "json:loads" }', "give either secret or plugin"),
    ],
)
def test_security_errors_at_resolution(isolated, monkeypatch, capsys, security, message):
    monkeypatch.delenv("HIL_TEST_UNSET_SECRET", raising=False)
    text = f"""
    [benches.lab]
    vehicle = "demo"

    [benches.lab.ecus.bms]
    uds = {{ p2_timeout_s = 1.5 }}
    security = {security}
    """
    write(isolated / "hil.toml", text)
    with pytest.raises(BenchConfigError) as info:
        resolve_bench("lab")
    first = str(info.value).splitlines()[0]
    assert first.startswith(f"hil.toml:{line_of(text, 'security =')}: benches.lab.ecus.bms."), first
    assert message in first
    # The command line says the same, on one line, with exit status 2.
    assert main(["bench", "show", "lab"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"error: {first}"


def test_resolution_errors_for_instrument_drivers(isolated):
    text = """
    [benches.lab]
    power = { kind = "korad", port = "COM1", options = { baud = 9600 } }
    relays.boards.main = { kind = "lcus", port = "COM2" }
    relays.lines.ignition = { board = "main", channel = 1 }
    """
    write(isolated / "hil.toml", text)
    load_config_file(find_config_file())  # the file itself is fine
    with pytest.raises(BenchConfigError) as info:
        resolve_bench("lab")
    first = str(info.value).splitlines()[0]
    assert first.startswith(f"hil.toml:{line_of(text, 'power =')}: benches.lab.power.options.baud")
    assert "unknown option for the 'korad' instrument (it takes: baudrate, channel," in first

    write(isolated / "hil.toml", RELAY_AS_SUPPLY)
    with pytest.raises(BenchConfigError, match=r"hil.toml:2: benches.lab.power.kind: 'lcus' is"):
        resolve_bench("lab")


def test_several_errors_are_all_listed(isolated):
    write(
        isolated / "hil.toml",
        """
        [benches.lab.bus]
        interface = "pcann"
        fd = "maybe"
        """,
    )
    with pytest.raises(BenchConfigError) as info:
        BenchConfig.load()
    assert len(info.value.issues) == 2
    lines = str(info.value).splitlines()
    assert lines[0] == (
        "hil.toml:2: benches.lab.bus.interface: unknown python-can interface 'pcann' (and 1 more)"
    )
    assert lines[2].strip().startswith("hil.toml:3: benches.lab.bus.fd: Input should be")


def test_ids_and_addressing_checked_at_resolution(isolated):
    text = """
    [benches.lab.ecus.body]
    request_id = 0x800
    response_id = 0x7E8

    [benches.lab.ecus.gw]
    addressing = "extended_29bits"
    request_id = 0x18DA10F1
    response_id = 0x18DAF110
    """
    write(isolated / "hil.toml", text)
    with pytest.raises(BenchConfigError) as info:
        resolve_bench("lab")
    issues = [str(issue) for issue in info.value.issues]
    assert issues[0] == (
        f"hil.toml:{line_of(text, '0x800')}: benches.lab.ecus.body.request_id: "
        "0x800 is not an 11-bit CAN id (normal_11bits)"
    )
    gw = line_of(text, "[benches.lab.ecus.gw]")
    assert issues[1] == (
        f"hil.toml:{gw}: benches.lab.ecus.gw.target_address: "
        "missing: extended_29bits addressing needs it"
    )


# ---------------------------------------------------------------------------- bus


def test_python_can_config_context(isolated, monkeypatch, channel):
    write(
        isolated / "hil.toml",
        """
        [benches.lab]
        bus = { context = "benchctx" }
        """,
    )
    monkeypatch.setenv("CAN_INTERFACE_benchctx", "virtual")
    monkeypatch.setenv("CAN_CHANNEL_benchctx", channel)
    bench = resolve_bench("lab")
    assert bench.bus_kwargs() == {"config_context": "benchctx"}
    resolved = bench.resolved_bus_config()
    assert (resolved["interface"], resolved["channel"]) == ("virtual", channel)
    bus = bench.open_bus()
    try:
        assert bus.channel_info == f"Virtual bus channel {channel}"
    finally:
        bus.shutdown()


def test_python_can_config_file(isolated, channel):
    ini = f"[rig]\ninterface = virtual\nchannel = {channel}\nbitrate = 250000\n"
    write(isolated / "can.ini", ini)
    write(
        isolated / "hil.toml",
        """
        [benches.lab.bus]
        config_file = "can.ini"
        context = "rig"
        options = { receive_own_messages = true }
        """,
    )
    bench = resolve_bench("lab")
    kwargs = bench.bus_kwargs()
    assert kwargs["channel"] == channel and kwargs["bitrate"] == 250000
    assert kwargs["receive_own_messages"] is True
    with bench.connect() as rig:
        rig.bus.send(can.Message(arbitration_id=0x123, data=b"\x01", is_extended_id=False))
        echoed = rig.bus.recv(1.0)
    assert echoed is not None and echoed.arbitration_id == 0x123


def test_bus_open_failure_is_one_line(isolated):
    write(
        isolated / "hil.toml",
        """
        [benches.lab.bus]
        interface = "socketcan"
        channel = "hilnosuchcan0"
        """,
    )
    bench = resolve_bench("lab")
    with pytest.raises(BenchBusError, match=r"^bench lab: cannot open the CAN bus .*hilnosuchcan0"):
        bench.open_bus()


# ---------------------------------------------------------------------------- positions


def test_toml_positions():
    text = textwrap.dedent(
        '''
        # comment
        top = 1
        [a.b]  # header
        s = """multi
        line"""
        c.d = { e = 1, f = [1, { g = 2 }] }
        "quoted.key" = 'x'
        [[arr]]
        name = "first"
        [[arr]]
        name = "second"
        [arr.sub]
        x = 3
        '''
    ).lstrip("\n")
    positions = TomlPositions(text)
    assert positions.exact_line(("top",)) == 2
    assert positions.exact_line(("a", "b")) == 3
    assert positions.exact_line(("a", "b", "s")) == 4
    assert positions.exact_line(("a", "b", "c", "d", "e")) == 6
    assert positions.exact_line(("a", "b", "c", "d", "f", 1, "g")) == 6
    assert positions.exact_line(("a", "b", "quoted.key")) == 7
    assert positions.exact_line(("arr", 0, "name")) == 9
    assert positions.exact_line(("arr", 1, "name")) == 11
    assert positions.exact_line(("arr", 1, "sub", "x")) == 13
    assert positions.line_of(("a", "b", "missing")) == 3
    assert positions.line_of(("nowhere",)) is None


def test_the_documented_example_is_valid(isolated, monkeypatch, capsys):
    docs = Path(__file__).resolve().parents[1] / "docs" / "bench.md"
    example = docs.read_text(encoding="utf-8").split("```toml\n", 1)[1].split("```", 1)[0]
    (isolated / "hil.toml").write_text(example, encoding="utf-8")
    monkeypatch.setenv("LAB_BMS_SECRET", "5A" * 16)
    bench = resolve_bench()
    assert bench.name == "lab" and bench.bus.thread_safe
    assert list(bench.ecus) == ["ecm", "bms", "bcm", "inverter"]
    assert bench.ecu("bms").uds.p2_star_timeout_s == 8.0
    assert bench.relays.lines["kl30_cut"].channel == 2
    assert main(["bench", "show"]) == 0
    assert "security: HMAC-SHA256, secret from env:LAB_BMS_SECRET" in capsys.readouterr().out
