"""rollout-policies: one fleet and bad batch under waves, a rate with abort criteria, and phases."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from backend_stub.model import FAILURE_STATES
from scenarios.builtin.rollout_scenarios import RolloutPoliciesScenario, _Track
from scenarios.core import Run, ScenarioError, execute
from scenarios.registry import builtin_scenarios, get_scenario, load_scenario_file, make_params

VEHICLES = 3000


class _Keeping(RolloutPoliciesScenario):
    """The scenario, keeping its worlds for the test to read."""

    kept: ClassVar[list[_Track]] = []

    def _judge(self, tracks: list[_Track]) -> None:
        super()._judge(tracks)
        type(self).kept = tracks


def run_policies(tmp_path: Path, seed: int = 3, **values: object) -> Run:
    scenario = get_scenario("rollout-policies")
    params = make_params(scenario, {"vehicles": VEHICLES, **values})
    return execute(scenario, params, seed=seed, directory=tmp_path / f"run-{seed}")


def test_listed_as_modeled() -> None:
    assert builtin_scenarios()["rollout-policies"].fidelity == "modeled"


def test_each_policy_stops_or_completes_by_its_own_rules(tmp_path: Path) -> None:
    run = run_policies(tmp_path)
    assert run.error == ""
    assert run.passed, [c for c in run.checks if not c.passed]
    f = run.figures
    # Waves with thresholds: an automatic pause, then (resumed) the campaign completes.
    assert f["waves: automatic stop"] == "pause"
    assert f["waves: end state"] == "completed"
    assert f["waves: days to complete"] > f["waves: days to automatic stop"]
    # A rate with abort criteria: aborted early, having reached few vehicles.
    assert f["rate: automatic stop"] == "abort"
    assert f["rate: end state"] == "aborted"
    assert "rate: days to complete" not in f
    # Phases: no rule stops it; every target is reached, failures and all.
    assert "phases: automatic stop" not in f
    assert f["phases: end state"] == "completed"
    assert f["phases: reached before the automatic stop"] == f["phases: targets"]
    # What the comparison is for: the stopping rules hit fewer vehicles.
    for name in ("waves", "rate"):
        assert (
            f[f"{name}: failed before the automatic stop"]
            < f["phases: failed before the automatic stop"]
        )
        assert (
            f[f"{name}: reached before the automatic stop"]
            < f["phases: reached before the automatic stop"] / 4
        )
    assert f["rate: peak backend calls per minute"] > 0
    names = {c.name for c in run.checks}
    for expected in (
        "waves: pause justified",
        "rate: abort justified",
        "rate: no vehicle notified after the abort",
        "rate: releases within the maximum rate",
        "phases: timed waves started no earlier than their time",
        "phases: no automatic stop without stop rules",
        "phases: every vehicle runs what its action says",
        "rate: backend inventory matches every vehicle",
    ):
        assert expected in names
    rows = {row["policy"]: row for row in run.outcomes}
    assert set(rows) == {"waves", "rate", "phases"}
    # The backend histories of all three are in the log.
    sources = {e.source for e in run.log.entries}
    assert {"backend waves", "backend rate", "backend phases"} <= sources


def test_the_policies_meet_the_same_failures(tmp_path: Path) -> None:
    scenario = _Keeping
    params = make_params(scenario, {"vehicles": VEHICLES})
    run = execute(scenario, params, seed=5, directory=tmp_path)
    assert run.passed, [c for c in run.checks if not c.passed]
    failed: dict[str, set[str]] = {}
    for track in _Keeping.kept:
        states = track.world.action_states()
        failed[track.policy.name] = {vin for vin, s in states.items() if s in FAILURE_STATES}
    # Waves (resumed) and phases both try every target once, at different times,
    # and the same vehicles fail.
    assert failed["waves"] == failed["phases"]
    assert len(failed["phases"]) > 10
    # The aborted one failed a subset of those.
    assert failed["rate"] <= failed["phases"]


def test_same_seed_same_log_other_seed_differs(tmp_path: Path) -> None:
    first = run_policies(tmp_path / "a", seed=11, vehicles=1500)
    again = run_policies(tmp_path / "b", seed=11, vehicles=1500)
    other = run_policies(tmp_path / "c", seed=12, vehicles=1500)
    assert first.log.digest() == again.log.digest()
    assert [e.line() for e in first.log.entries] == [e.line() for e in again.log.entries]
    assert first.log.digest() != other.log.digest()


def test_policies_from_a_scenario_file(tmp_path: Path) -> None:
    path = tmp_path / "policies.toml"
    path.write_text(
        """
scenario = "rollout-policies"
seed = 4

[params]
vehicles = 1500

[[params.policies]]
name = "slow-rate"
[params.policies.campaign]
waves = []
success_threshold_pct = 0
error_threshold_pct = 100
max_retries = 0
rollout_rate = { base_per_minute = 1 }

[[params.policies]]
name = "two-phases"
[params.policies.campaign]
waves = [{ percent = 20 }, { percent = 80, start_after_h = 12 }]
success_threshold_pct = 0
error_threshold_pct = 100

[[params.policies]]
name = "tonight"
[params.policies.campaign]
waves = [{ percent = 100, start_after_h = 6 }]
success_threshold_pct = 0
error_threshold_pct = 100
""",
        encoding="utf-8",
    )
    loaded = load_scenario_file(path)
    params = make_params(loaded.scenario, loaded.params)
    run = execute(loaded.scenario, params, seed=loaded.seed or 0, directory=tmp_path / "run")
    assert run.passed, [c for c in run.checks if not c.passed]
    assert {row["policy"] for row in run.outcomes} == {"slow-rate", "two-phases", "tonight"}
    # A first wave held back to its time is woken then, and completes.
    assert run.figures["tonight: end state"] == "completed"
    assert run.figures["tonight: days to complete"] > 0.25
    # At one vehicle a minute, about 1,100 targets take most of a day to release.
    assert run.figures["slow-rate: days to complete"] > 0.7
    assert "two-phases: timed waves started no earlier than their time" in {
        c.name for c in run.checks
    }


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        (
            {"policies": [{"name": "x", "campaign": {"rollout_rate": {"base_per_minute": 0}}}]},
            "base_per_minute must be between 1 and 100000",
        ),
        (
            {
                "policies": [
                    {"name": "x", "campaign": {}},
                    {"name": "x", "campaign": {}},
                ]
            },
            "policy names must differ",
        ),
        (
            {
                "policies": [
                    {"name": "x", "campaign": {"waves": [{"percent": 10, "start_after_h": -1}]}}
                ]
            },
            "start_after_h",
        ),
        (
            {"policies": [{"name": "has space", "campaign": {}}]},
            "policies.0.name",
        ),
    ],
)
def test_bad_policies_are_refused_before_the_run(values: dict, fragment: str) -> None:
    scenario = get_scenario("rollout-policies")
    with pytest.raises(ScenarioError) as caught:
        make_params(scenario, values)
    assert fragment in str(caught.value)
