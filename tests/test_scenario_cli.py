"""``hil scenario``: list, run (reports, exit status 0/1/2, one-line errors), calibrate."""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path

import pytest
from pydantic import Field

from hil.cli import main
from hil.cli.scenario import apply_settings, parse_value
from hil.errors import UsageError
from scenarios import registry
from scenarios.busmodel import BusModel
from scenarios.calibrate import (
    FlashMeasurement,
    calibrate,
    derive_model,
    geometry,
    predicted_s,
)
from scenarios.core import LogEntry, Scenario, ScenarioError, ScenarioParams


class TinyParams(ScenarioParams):
    vehicles: int = Field(default=3, ge=1)
    fail_every: int = Field(default=0, ge=0, description="every Nth vehicle fails; 0: none")
    failure: dict[str, float] = Field(default_factory=dict)


class Tiny(Scenario):
    """A few vehicles flash one after another in virtual time."""

    name = "test-tiny"
    summary = "tiny modeled fleet"
    fidelity = "modeled"
    Params = TinyParams

    def main(self):
        run = self.run
        params = run.params
        failed = 0
        for index in range(params.vehicles):
            yield run.env.timeout(run.rng.uniform(1.0, 2.0))
            run.status(f"vehicle {index + 1} of {params.vehicles}")
            bad = params.fail_every and (index + 1) % params.fail_every == 0
            failed += bool(bad)
            run.event(f"VIN{index}", "flash_failed" if bad else "flashed")
            run.sample("campaign", pending=params.vehicles - index - 1, failed=failed)
            run.outcomes.append({"vin": f"VIN{index}", "ok": not bad})
        run.figure("vehicles", params.vehicles)
        run.check("every vehicle flashed", failed == 0, f"{failed} failed")


class NoVehicles(Scenario):
    name = "test-novehicles"
    summary = "no vehicle count"
    fidelity = "modeled"

    def main(self):
        yield self.run.env.timeout(1)
        self.run.check("ran", True)


class Broken(Scenario):
    name = "test-broken"
    summary = "its world breaks"
    fidelity = "modeled"

    def main(self):
        yield self.run.env.timeout(1)
        raise RuntimeError("the world broke")


@pytest.fixture(autouse=True)
def test_scenarios(monkeypatch):
    """Only this module's scenarios are known (the built-in ones are not needed here)."""
    known = {cls.name: cls for cls in (Tiny, NoVehicles, Broken)}
    monkeypatch.setattr(registry, "_REGISTRY", known)
    monkeypatch.setattr(registry, "_load_builtins", lambda: None)


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, *texts: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    for text in texts:
        assert text in lines[0], lines[0]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def scenario_file(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- list


def test_list_shows_name_fidelity_and_summary(capsys):
    code, out, _err = run(capsys, "scenario", "list")
    assert code == 0
    rows = [line for line in out.splitlines() if "test-" in line]
    assert len(rows) == 3
    assert "test-broken" in rows[0] and "modeled" in rows[0] and "its world breaks" in rows[0]
    assert "test-tiny" in rows[2] and "tiny modeled fleet" in rows[2]


# ------------------------------------------------------------------------------ run


def test_run_writes_both_reports_and_prints_the_summary(capsys, tmp_path):
    report = tmp_path / "report"
    code, out, err = run(
        capsys, "scenario", "run", "test-tiny", "--seed", "3", "--report", str(report)
    )
    assert code == 0, out + err
    data = read_json(report / "report.json")
    assert (data["scenario"], data["seed"], data["passed"]) == ("test-tiny", 3, True)
    assert data["params"]["vehicles"] == 3
    log = data["log"]
    assert log["count"] == len(log["entries"])
    digest = hashlib.sha256("".join(LogEntry(**e).line() for e in log["entries"]).encode())
    assert log["digest"] == f"sha256:{digest.hexdigest()}"
    # The summary: verdict, checks, figures, the log's digest and count, the report's paths.
    assert "scenario test-tiny (modeled, seed 3): PASSED" in out
    assert "ok   every vehicle flashed: 0 failed" in out
    assert "vehicles = 3" in out
    assert f"log: {log['count']} events, {log['digest']}" in out
    assert str(report / "report.html") in out
    assert str(report / "report.json") in out
    # Not a terminal: progress came as plain lines.
    assert "test-tiny: vehicle 1 of 3" in out
    page = (report / "report.html").read_text(encoding="utf-8")
    assert "every vehicle flashed" in page
    assert "<img " in page and "data:image/png;base64," in page


def test_same_seed_same_digest_other_seed_other_digest(capsys, tmp_path):
    digests = []
    for seed, where in (("1", "a"), ("1", "b"), ("2", "c")):
        code, _out, _err = run(
            capsys,
            "scenario",
            "run",
            "test-tiny",
            "--quiet",
            "--seed",
            seed,
            "--report",
            str(tmp_path / where),
        )
        assert code == 0
        digests.append(read_json(tmp_path / where / "report.json")["log"]["digest"])
    assert digests[0] == digests[1] != digests[2]


def test_quiet_prints_no_progress(capsys, tmp_path):
    code, out, _err = run(
        capsys, "scenario", "run", "test-tiny", "--quiet", "--report", str(tmp_path / "r")
    )
    assert code == 0
    assert "vehicle 1 of 3" not in out
    assert "PASSED" in out


def test_a_failed_check_exits_1_with_a_report(capsys, tmp_path):
    report = tmp_path / "r"
    code, out, _err = run(
        capsys, "scenario", "run", "test-tiny", "--set", "fail_every=2", "--report", str(report)
    )
    assert code == 1
    assert "FAILED" in out
    assert "FAIL every vehicle flashed: 1 failed" in out
    assert read_json(report / "report.json")["passed"] is False


def test_a_broken_run_exits_1_and_says_why(capsys, tmp_path):
    report = tmp_path / "r"
    code, out, err = run(capsys, "scenario", "run", "test-broken", "--report", str(report))
    assert code == 1
    assert err == ""
    assert "error: RuntimeError: the world broke" in out
    assert read_json(report / "report.json")["error"] == "RuntimeError: the world broke"


def test_vehicles_and_set_change_the_parameters(capsys, tmp_path):
    report = tmp_path / "r"
    code, _out, _err = run(
        capsys,
        "scenario",
        "run",
        "test-tiny",
        "--vehicles",
        "5",
        "--set",
        "failure.flash=0.25",
        "--set",
        "failure.boot=1e-3",
        "--report",
        str(report),
    )
    assert code == 0
    data = read_json(report / "report.json")
    assert data["params"] == {
        "vehicles": 5,
        "fail_every": 0,
        "failure": {"flash": 0.25, "boot": 0.001},
    }
    assert len(data["outcomes"]) == 5


def test_a_scenario_file_gives_scenario_seed_and_parameters(capsys, tmp_path):
    path = scenario_file(tmp_path, 'scenario = "test-tiny"\nseed = 7\n[params]\nvehicles = 2\n')
    code, _out, _err = run(capsys, "scenario", "run", str(path), "--report", str(tmp_path / "a"))
    assert code == 0
    data = read_json(tmp_path / "a" / "report.json")
    assert (data["seed"], data["params"]["vehicles"]) == (7, 2)
    # The command line wins over the file.
    code, _out, _err = run(
        capsys,
        "scenario",
        "run",
        str(path),
        "--seed",
        "8",
        "--vehicles",
        "4",
        "--report",
        str(tmp_path / "b"),
    )
    assert code == 0
    data = read_json(tmp_path / "b" / "report.json")
    assert (data["seed"], data["params"]["vehicles"]) == (8, 4)


def test_a_file_without_toml_suffix_is_a_file_when_it_exists(capsys, tmp_path):
    path = scenario_file(tmp_path, 'scenario = "test-tiny"\n', name="tiny-scenario")
    code, _out, _err = run(
        capsys, "scenario", "run", str(path), "--quiet", "--report", str(tmp_path / "r")
    )
    assert code == 0


def test_default_report_directory_is_numbered_when_taken(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        code, _out, _err = run(capsys, "scenario", "run", "test-tiny", "--quiet")
        assert code == 0
    base = tmp_path / "scenario-reports"
    assert sorted(p.name for p in base.iterdir()) == ["test-tiny-0", "test-tiny-0-2"]
    assert (base / "test-tiny-0-2" / "report.html").is_file()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, ["missing.toml: no such file"]),
        ('scenario = "test-tiny"\n[params\n', ["bad.toml: not valid TOML"]),
        ('scenario = "test-tiny"\ncolour = "red"\n', ["bad.toml: colour: unknown key"]),
        ('scenario = "nope"\n', ["bad.toml: scenario: no scenario named 'nope'", "test-tiny"]),
        ("seed = 1\n", ["bad.toml: scenario: required"]),
        ('scenario = "test-tiny"\nseed = -1\n', ["bad.toml: seed: must be a non-negative integer"]),
        (
            'scenario = "test-tiny"\n[params]\ncolour = 1\n',
            ["bad.toml: params.colour: unknown key"],
        ),
        (
            'scenario = "test-tiny"\n[params]\nvehicles = "many"\n',
            ["bad.toml: params.vehicles: Input should be a valid integer"],
        ),
        (
            'scenario = "test-tiny"\n[params]\nvehicles = 0\n',
            ["bad.toml: params.vehicles: Input should be greater than or equal to 1"],
        ),
    ],
)
def test_bad_scenario_files_are_one_line_errors_naming_file_and_key(
    capsys, tmp_path, text, expected
):
    if text is None:
        path = tmp_path / "missing.toml"
    else:
        path = scenario_file(tmp_path, text, name="bad.toml")
    code, _out, err = run(capsys, "scenario", "run", str(path), "--report", str(tmp_path / "r"))
    assert code == 2
    one_line_error(err, *expected)
    assert not (tmp_path / "r").exists()


def test_a_scenario_file_that_is_not_utf8_is_named_in_its_error(capsys, tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes('scenario = "test-tiny"\n# r\u00e9sum\u00e9\n'.encode("latin-1"))
    code, _out, err = run(capsys, "scenario", "run", str(path), "--report", str(tmp_path / "r"))
    assert code == 2
    one_line_error(err, "latin.toml: not UTF-8 text (byte 0xe9 at offset 26)")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["nope"], ["no scenario named 'nope' (known: test-broken, test-novehicles, test-tiny)"]),
        (["test-novehicles", "--vehicles", "3"], ["scenario test-novehicles has no vehicle count"]),
        (
            ["test-tiny", "--set", "vehicles=many"],
            ["command line: params.vehicles: Input should be"],
        ),
        (["test-tiny", "--set", "colour=red"], ["command line: params.colour: unknown key"]),
        (["test-tiny", "--set", "vehicles"], ["--set 'vehicles': expected KEY=VALUE"]),
        (
            ["test-tiny", "--set", "vehicles=3", "--set", "vehicles.front=1"],
            ["--set vehicles.front: params.vehicles is not a table"],
        ),
        (
            ["test-tiny", "--set", "fail_every.x=1"],
            ["command line: params.fail_every: Input should"],
        ),
        (["test-tiny", "--set", "=1"], ["expected KEY=VALUE"]),
    ],
)
def test_bad_names_and_parameters_are_one_line_errors(capsys, tmp_path, args, expected):
    code, _out, err = run(capsys, "scenario", "run", *args, "--report", str(tmp_path / "r"))
    assert code == 2
    one_line_error(err, *expected)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--vehicles", "0"], "argument --vehicles: must be at least 1"),
        (["--seed", "-1"], "argument --seed: must not be negative"),
        (["--seed", "x"], "argument --seed: not an integer: 'x'"),
    ],
)
def test_bad_option_values_are_usage_errors(capsys, args, expected):
    with pytest.raises(SystemExit) as exited:
        main(["scenario", "run", "test-tiny", *args])
    assert exited.value.code == 2
    one_line_error(capsys.readouterr().err, expected)


def test_a_file_with_a_bad_set_names_the_file_and_the_command_line(capsys, tmp_path):
    path = scenario_file(tmp_path, 'scenario = "test-tiny"\n', name="ok.toml")
    code, _out, err = run(capsys, "scenario", "run", str(path), "--set", "vehicles=-2")
    assert code == 2
    one_line_error(err, "ok.toml with the command line's values: params.vehicles")


def test_a_used_report_directory_is_refused(capsys, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "old.txt").write_text("x")
    code, _out, err = run(capsys, "scenario", "run", "test-tiny", "--report", str(tmp_path / "r"))
    assert code == 2
    one_line_error(err, "exists and is not an empty directory")


def test_debug_shows_the_traceback():
    with pytest.raises(UsageError, match="no scenario named 'nope'"):
        main(["--debug", "scenario", "run", "nope"])


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", 1),
        ("0x10", 16),
        ("0.5", 0.5),
        ("true", True),
        ("[1, 2]", [1, 2]),
        ('"two words"', "two words"),
        ("{ flash = 0.1 }", {"flash": 0.1}),
        ("word", "word"),
        ("two words", "two words"),
        ("", ""),
    ],
)
def test_set_values_read_as_toml_or_as_text(text, value):
    assert parse_value(text) == value


def test_set_nests_dotted_keys_without_changing_the_original():
    original = {"failure": {"flash": 0.1}, "vehicles": 3}
    result = apply_settings(original, ["failure.boot=0.2", "vehicles=4", " rounds = 2 "])
    assert result == {"failure": {"flash": 0.1, "boot": 0.2}, "vehicles": 4, "rounds": 2}
    assert original == {"failure": {"flash": 0.1}, "vehicles": 3}


# ------------------------------------------------------------------------ calibrate


def test_calibrate_writes_a_loadable_bus_model(capsys, tmp_path):
    out_file = tmp_path / "models" / "bus.toml"
    code, out, err = run(
        capsys, "scenario", "calibrate", "--out", str(out_file), "--size-kib", "2", "8"
    )
    assert code == 0, out + err
    model = BusModel.load(out_file)
    assert model.source.startswith("hil scenario calibrate, ")
    assert "vehicle demo, ECU ecm" in model.source
    assert (model.bitrate_bps, model.fd, model.frame_bytes, model.block_size) == (
        500_000,
        False,
        8,
        8,
    )
    assert model.transfer_block_bytes == 4093
    assert model.erase_s > 0 and model.boot_s > 0 and model.fixed_s > 0
    assert "measured figures" in out
    assert "model/measured" in out
    assert f"wrote {out_file}" in out


def test_calibrated_model_predicts_the_flashes_it_was_measured_on(tmp_path, demo):
    result = calibrate(sizes_bytes=[1024, 4 * 1024, 8 * 1024])
    assert [m.ecu for m in result.measurements] == ["ecm"] * 3
    path = tmp_path / "bus.toml"
    path.write_text(result.model.dump(), encoding="utf-8")
    loaded = BusModel.load(path)
    assert loaded == result.model
    # The figures follow from the measured numbers alone: derived again, they are the same.
    again = derive_model(result.measurements, geometry(demo, demo.ecu("ecm")), source=loaded.source)
    assert again == loaded
    # Judged on the very numbers the calibration measured, so the machine's speed does
    # not matter; the median row, so that one flash stalled by a busy machine does not.
    ratios = []
    for measured, row in zip(result.measurements, result.comparisons(), strict=True):
        assert row.measured_s == measured.duration_s
        assert row.predicted_s == predicted_s(loaded, measured.image_bytes, paced=False)
        # On the vehicle's real bus the wire time comes on top of what the virtual bus took.
        assert row.bus_s == loaded.flash_s(measured.image_bytes) > row.predicted_s
        ratios.append(row.ratio)
    assert 0.5 < statistics.median(ratios) < 2.0, ratios


def test_calibrate_errors_are_one_line(capsys, tmp_path):
    code, _out, err = run(
        capsys, "scenario", "calibrate", "--out", str(tmp_path / "x.toml"), "--size-kib", "4", "4"
    )
    assert code == 2
    one_line_error(err, "--size-kib: give at least two different sizes")
    code, _out, err = run(
        capsys, "scenario", "calibrate", "--out", str(tmp_path / "x.toml"), "--ecu", "tcu"
    )
    assert code == 2
    one_line_error(err, "has no ECU 'tcu'")
    assert not (tmp_path / "x.toml").exists()


def _synthetic(model: BusModel, sizes, *, paced: bool) -> list[FlashMeasurement]:
    """Flashes that took exactly what ``model`` says (on a paced or an unpaced bus)."""
    bare = model.model_copy(
        update={"frame_overhead_s": 0.0, "request_overhead_s": 0.0, "st_min_s": 0.0}
    )
    per_frame = model.frame_time_s() if paced else model.frame_overhead_s
    short = 2 * per_frame + model.request_overhead_s
    measurements = []
    for size in sizes:
        transfer = model.transfer_s(size) - (0.0 if paced else bare.transfer_s(size))
        steps = {
            "programming session": short,
            "transfer exit": short,
            "erase": model.erase_s,
            "reset": 0.01,
            "verify": model.boot_s - 0.01,
            "identify": 0.02,
        }
        duration = model.fixed_s + model.erase_s + transfer + model.boot_s
        measurements.append(FlashMeasurement("ecm", size, duration, transfer, steps))
    return measurements


@pytest.mark.parametrize("paced", [False, True])
@pytest.mark.parametrize("st_min_s", [0.0, 0.001])
def test_derive_model_recovers_the_figures_it_was_given(paced, st_min_s):
    truth = BusModel(
        st_min_s=st_min_s,
        frame_overhead_s=0.00008,
        request_overhead_s=0.0015,
        fixed_s=0.09,
        erase_s=0.15,
        boot_s=0.07,
        source="truth",
    )
    sizes = [4248, 16536, 65688]
    measured = _synthetic(truth, sizes, paced=paced)
    shape = truth.model_copy(update={"frame_overhead_s": 0.0, "request_overhead_s": 0.0})
    derived = derive_model(measured, shape, paced=paced, source="derived")
    for name in ("frame_overhead_s", "request_overhead_s", "fixed_s", "erase_s", "boot_s"):
        assert getattr(derived, name) == pytest.approx(getattr(truth, name), rel=1e-6, abs=1e-9), (
            name
        )
    assert derived.source == "derived"
    for m in measured:
        assert predicted_s(derived, m.image_bytes, paced=paced) == pytest.approx(
            m.duration_s, rel=1e-6
        )


def test_derive_model_needs_measurements():
    with pytest.raises(ScenarioError, match="no flashes"):
        derive_model([], BusModel())
