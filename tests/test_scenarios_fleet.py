"""The modeled fleet: the real campaign engine in virtual time, determinism, the bus model."""

from __future__ import annotations

import gc
from collections import Counter
from pathlib import Path

import pytest

from scenarios.busmodel import BusModel
from scenarios.core import Run, ScenarioError, execute
from scenarios.registry import builtin_scenarios, get_scenario, load_scenario_file, make_params


def run_fleet(tmp_path: Path, seed: int = 1, **values: object) -> Run:
    scenario = get_scenario("fleet")
    params = make_params(scenario, {"vehicles": 3000, **values})
    return execute(scenario, params, seed=seed, directory=tmp_path / f"run-{seed}")


def checks(run: Run) -> dict[str, bool]:
    return {c.name: c.passed for c in run.checks}


def test_fleet_is_listed_as_modeled() -> None:
    known = builtin_scenarios()
    assert "fleet" in known
    assert known["fleet"].fidelity == "modeled"


def test_bad_batch_trips_the_error_threshold(tmp_path: Path) -> None:
    run = run_fleet(tmp_path)
    assert run.error == ""
    assert run.passed, [c for c in run.checks if not c.passed]
    names = checks(run)
    assert names["paused automatically by the error threshold"]
    assert names["every vehicle runs what its action says"]
    assert names["backend inventory matches every vehicle"]
    assert any(name.startswith("pause at day") for name in names)
    assert run.figures["campaign state"] == "paused"
    # The per-vehicle outcomes agree with the figures.
    states = Counter(o["state"] for o in run.outcomes)
    assert states["succeeded"] == run.figures["succeeded"]
    assert states["failed"] + states["rolled_back"] == run.figures["failed or rolled back"]
    assert states["not targeted"] == run.figures["excluded"]
    # Vehicles the release does not fit keep their software; failed ones run the old one.
    for outcome in run.outcomes:
        expected = "2.0.0" if outcome["state"] == "succeeded" else "1.0.0"
        assert set(outcome["versions"].values()) == {expected}, outcome
    # The bad batch fails far more often than the rest.
    by_group = Counter((o["group"], o["state"] in ("failed", "rolled_back")) for o in run.outcomes)
    bad = by_group[("demo-batch-b", True)] / max(
        1, by_group[("demo-batch-b", True)] + by_group[("demo-batch-b", False)]
    )
    good = by_group[("demo", True)] / max(1, by_group[("demo", True)] + by_group[("demo", False)])
    assert bad > good
    kinds = Counter((e.source, e.kind) for e in run.log.entries)
    assert kinds[("backend", "paused")] >= 1
    assert kinds[("backend", "wave_started")] >= 1


def test_resume_after_review_completes_the_campaign(tmp_path: Path) -> None:
    run = run_fleet(tmp_path, on_pause="resume", expect="completed")
    assert run.passed, [c for c in run.checks if not c.passed]
    assert run.figures["campaign state"] == "completed"
    assert run.figures["succeeded"] + run.figures["failed or rolled back"] == run.figures["targets"]
    resumes = [e for e in run.log.entries if e.source == "operator" and e.kind == "resume"]
    assert resumes, "the operator resumed after each automatic pause"


def test_a_healthy_fleet_completes_without_a_pause(tmp_path: Path) -> None:
    population = [
        {
            "label": "healthy",
            "share": 1.0,
            "ecus": [
                {"name": "ecm", "hardware_id": "HIL-ECM-HW01"},
                {"name": "bms", "hardware_id": "HIL-BMS-HW01"},
                {"name": "bcm", "hardware_id": "HIL-BCM-HW01"},
            ],
        }
    ]
    run = run_fleet(
        tmp_path,
        vehicles=800,
        population=population,
        failure={"download": 0.0, "flash": 0.0, "boot": 0.0},
        expect="completed",
    )
    assert run.passed, [c for c in run.checks if not c.passed]
    assert run.figures["succeeded"] == 800
    assert not [e for e in run.log.entries if e.kind == "paused"]


def test_retries_are_the_engines(tmp_path: Path) -> None:
    # Every first boot of bms fails, every second succeeds: with one retry each
    # vehicle is offered the deployment twice and ends updated.
    population = [
        {
            "label": "flaky",
            "share": 1.0,
            "ecus": [
                {"name": "ecm", "hardware_id": "HIL-ECM-HW01"},
                {"name": "bms", "hardware_id": "HIL-BMS-HW01"},
                {"name": "bcm", "hardware_id": "HIL-BCM-HW01"},
            ],
        }
    ]
    run = run_fleet(
        tmp_path,
        vehicles=200,
        population=population,
        failure={"download": 0.0, "flash": 0.0, "boot": 0.0, "boot_by_ecu": {"bms": 1.0}},
        campaign={"max_retries": 1, "error_threshold_pct": 100.0, "success_threshold_pct": 0},
        on_pause="resume",
        expect="completed",
    )
    assert run.error == ""
    assert all(o["state"] == "rolled_back" for o in run.outcomes), Counter(
        o["state"] for o in run.outcomes
    )
    retries = [e for e in run.log.entries if e.source == "backend" and "retry 1 of 1" in e.detail]
    assert len(retries) == 200


def test_same_seed_same_log_other_seed_differs(tmp_path: Path) -> None:
    first = run_fleet(tmp_path / "a", seed=7, vehicles=1500)
    second = run_fleet(tmp_path / "b", seed=7, vehicles=1500)
    other = run_fleet(tmp_path / "c", seed=8, vehicles=1500)
    assert first.log.count == second.log.count
    assert [e.line() for e in first.log.entries] == [e.line() for e in second.log.entries]
    assert first.log.digest() == second.log.digest()
    assert other.log.digest() != first.log.digest()
    # Not only the digest: what happened to the vehicles differs.
    assert [o["state"] for o in other.outcomes] != [o["state"] for o in first.outcomes]


def test_a_modeled_run_gives_the_collector_back_even_when_it_fails(tmp_path: Path) -> None:
    assert gc.isenabled()
    run = run_fleet(tmp_path, vehicles=200)
    assert run.passed and gc.isenabled()
    # A run cut short by its horizon ends in an error, and still re-enables it.
    cut = run_fleet(tmp_path, seed=2, vehicles=200, horizon_days=0.01)
    assert cut.error.startswith("time limit") and gc.isenabled()
    gc.disable()
    try:
        # A caller that disabled the collector keeps it disabled.
        run_fleet(tmp_path, seed=3, vehicles=200)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_modeled_run_leaves_what_its_caller_froze_frozen(tmp_path: Path) -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        run = run_fleet(tmp_path, vehicles=200)
        assert run.passed and gc.isenabled()
        # The run neither unfroze the caller's objects nor froze its own for good.
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("vin", ["", "SMFLEET0000000001"])
@pytest.mark.parametrize("state", [None, "downloading"])
@pytest.mark.parametrize("detail", ["", "attempt 2"])
def test_event_lines_are_the_log_lines_of_event_text(
    vin: str, state: str | None, detail: str
) -> None:
    from backend_stub.model import ActionState, CampaignEvent
    from scenarios.core import LogEntry
    from scenarios.fleet import event_lines, event_text

    event = CampaignEvent(
        0, 1, 12.5, "action", vin, ActionState(state) if state else None, None, detail
    )
    expected = LogEntry(12.5, "backend x", "action", event_text(event)).line()
    assert event_lines("backend x", [event]) == [expected]


def test_a_fleet_run_without_its_log_entries_has_the_same_fingerprint(tmp_path: Path) -> None:
    from scenarios.core import execute
    from scenarios.registry import get_scenario, make_params

    scenario = get_scenario("fleet")
    params = make_params(scenario, {"vehicles": 600, "on_pause": "resume", "expect": "any"})
    runs = [
        execute(scenario, params, seed=4, directory=tmp_path / str(keep), keep_log=keep)
        for keep in (True, False)
    ]
    kept, dropped = runs
    assert kept.passed and dropped.passed
    backend = [e for e in kept.log.entries if e.source == "backend"]
    assert len(backend) > 600  # the backend's events are in the log, each on its line
    assert dropped.log.count == kept.log.count
    assert dropped.log.digest() == kept.log.digest()
    assert dropped.log.entries == []


def test_worlds_of_modeled_runs_in_one_process_do_not_pile_up(tmp_path: Path) -> None:
    from scenarios.fleet import FleetWorld

    def worlds() -> int:
        return sum(isinstance(o, FleetWorld) for o in gc.get_objects())

    for seed in range(4):
        run = run_fleet(tmp_path, seed=seed, vehicles=300)
        assert run.error == ""
        # This run's world may wait for a collection; earlier ones were freed.
        assert worlds() <= 1, seed
        if seed == 0:
            assert worlds() == 1  # (the count does see a world)
        del run  # its environment still holds the world's processes


def test_fleet_parameters_are_validated(tmp_path: Path) -> None:
    scenario = get_scenario("fleet")
    with pytest.raises(ScenarioError, match=r"params\.connectivity\.warp: unknown key"):
        make_params(scenario, {"connectivity": {"warp": 9}})
    with pytest.raises(ScenarioError, match=r"params\.campaign\.waves\.0"):
        make_params(scenario, {"campaign": {"waves": [{"count": 5, "percent": 10}]}})
    with pytest.raises(ScenarioError, match=r"params\.vehicles"):
        make_params(scenario, {"vehicles": 0})
    path = tmp_path / "bad.toml"
    path.write_text('scenario = "fleet"\n[params]\nfailure = { boot = 2.0 }\n')
    with pytest.raises(ScenarioError, match=r"bad\.toml: params\.failure\.boot"):
        load_scenario_file(path)
    path.write_text('scenario = "fleet"\nseed = 3\n[params]\nvehicles = 50\n')
    loaded = load_scenario_file(path)
    assert loaded.seed == 3 and loaded.params == {"vehicles": 50}


def test_bus_model_timing_follows_the_bus() -> None:
    classic = BusModel()
    fd = BusModel(fd=True, frame_bytes=64)
    slow = BusModel(bitrate_bps=125_000)
    spaced = BusModel(st_min_s=0.001)
    size = 256 * 1024
    assert fd.transfer_s(size) < classic.transfer_s(size) / 4
    assert slow.transfer_s(size) > classic.transfer_s(size) * 3
    assert spaced.transfer_s(size) > classic.transfer_s(size) + (size / 7 - 1) * 0.001 * 0.9
    assert classic.flash_s(size) == pytest.approx(
        classic.fixed_s + classic.erase_s + classic.transfer_s(size) + classic.boot_s
    )
    # One ISO-TP frame for a short message; first + consecutive + flow control beyond 7 bytes.
    assert classic.isotp_time_s(7) == pytest.approx(classic.frame_time_s())
    assert classic.isotp_time_s(8) == pytest.approx(3 * classic.frame_time_s())


def test_bus_model_file_round_trip_and_errors(tmp_path: Path) -> None:
    model = BusModel(bitrate_bps=250_000, frame_overhead_s=0.0002, source="test bench")
    path = tmp_path / "bus.toml"
    path.write_text(model.dump())
    assert BusModel.load(path) == model
    path.write_text("[bus_model]\nbitrate_bps = 5\n")
    with pytest.raises(ValueError, match=r"bus\.toml: bitrate_bps"):
        BusModel.load(path)
    path.write_text("[bus_model]\nfd = false\nframe_bytes = 64\n")
    with pytest.raises(ValueError, match="frame_bytes"):
        BusModel.load(path)


def test_a_slower_bus_makes_installs_longer(tmp_path: Path) -> None:
    slow = tmp_path / "slow.toml"
    slow.write_text(BusModel(bitrate_bps=50_000, frame_overhead_s=0.001).dump())
    population = [
        {
            "label": "healthy",
            "share": 1.0,
            "ecus": [
                {"name": "ecm", "hardware_id": "HIL-ECM-HW01"},
                {"name": "bms", "hardware_id": "HIL-BMS-HW01"},
                {"name": "bcm", "hardware_id": "HIL-BCM-HW01"},
            ],
        }
    ]
    common = {
        "vehicles": 300,
        "population": population,
        "failure": {"download": 0.0, "flash": 0.0, "boot": 0.0},
        "expect": "completed",
    }
    fast_run = run_fleet(tmp_path / "fast", **common)
    slow_run = run_fleet(tmp_path / "slow", bus_model=str(slow), **common)
    assert fast_run.passed and slow_run.passed

    def install_time(run: Run) -> float:
        started: dict[str, float] = {}
        total = 0.0
        for entry in run.log.entries:
            if entry.source != "backend":
                continue
            vin, _, rest = entry.detail.partition(" ")
            if rest.startswith("installing"):
                started[vin] = entry.at
            elif rest.startswith("succeeded") and vin in started:
                total += entry.at - started.pop(vin)
        return total

    assert install_time(slow_run) > 2 * install_time(fast_run)
