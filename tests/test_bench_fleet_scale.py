"""The fleet benchmark's bare replay: the same events as the scenario, and its count of them."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Generator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import simpy

BENCH = Path(__file__).resolve().parent.parent / "bench" / "fleet_scale.py"


@pytest.fixture(scope="module")
def fleet_scale() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_scale_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _program(env: simpy.Environment, times: list[tuple[float, str]]) -> None:
    """Processes that make children mid-way, wait on timeouts and end at different times."""

    def child(name: str, delays: list[float]) -> Generator[simpy.Event, Any, None]:
        for delay in delays:
            yield env.timeout(delay)
            times.append((env.now, name))

    def parent() -> Generator[simpy.Event, Any, None]:
        yield env.timeout(1.5)
        env.process(child("a", [2.0, 0.0, 3.0]))
        yield env.timeout(0.5)
        env.process(child("b", [0.25]))
        env.process(child("c", []))
        yield env.timeout(10.0)
        times.append((env.now, "parent"))

    env.process(parent())
    env.timeout(4.0)


def test_the_replay_processes_as_many_events_as_the_recorded_program(
    fleet_scale: ModuleType,
) -> None:
    plain = simpy.Environment()
    _program(plain, [])
    plain.run()
    recording = fleet_scale.RecordingEnvironment()
    times: list[tuple[float, str]] = []
    _program(recording, times)
    recording.run()

    # ``processed`` counts one more on each call: one call per environment.
    expected = fleet_scale.processed(plain)
    assert recording.made == 4
    assert fleet_scale.processed(recording) == expected
    seconds, events = fleet_scale.bare_replay(recording.made, recording.owners, recording.values)
    assert seconds >= 0
    assert events == expected
    # Children were made mid-way: a replay that started every process at once
    # would need a timeout more for each late one.
    assert times == [(2.25, "b"), (3.5, "a"), (3.5, "a"), (6.5, "a"), (12.0, "parent")]


def test_a_process_made_outside_any_process_after_the_start_is_refused(
    fleet_scale: ModuleType,
) -> None:
    recording = fleet_scale.RecordingEnvironment()

    def idle() -> Generator[simpy.Event, Any, None]:
        yield recording.timeout(1.0)

    recording.timeout(2.0).callbacks.append(lambda _event: recording.process(idle()))
    with pytest.raises(SystemExit, match="no exact replay"):
        recording.run()


def test_a_small_fleet_and_its_replay_process_the_same_events(fleet_scale: ModuleType) -> None:
    figures = fleet_scale.child(400, 3, repeat=1)

    assert figures["passed"], figures["error"]
    assert figures["events"] > 400
    assert figures["bare_events"] == figures["events"]
    assert figures["figures"]["targets"] > 0


def test_repeated_runs_are_paired_with_replays_and_reported_by_their_median(
    fleet_scale: ModuleType,
) -> None:
    figures = fleet_scale.child(400, 3, repeat=3)

    assert figures["passed"], figures["error"]
    assert len(figures["walls_s"]) == len(figures["bares_s"]) == len(figures["shares"]) == 3
    pairs = list(zip(figures["walls_s"], figures["bares_s"], strict=True))
    assert figures["shares"] == [bare / wall for wall, bare in pairs]
    assert figures["share"] == sorted(figures["shares"])[1]
    assert figures["wall_s"] == sorted(figures["walls_s"])[1]
    assert figures["events_per_s"] == figures["events"] / figures["wall_s"]
