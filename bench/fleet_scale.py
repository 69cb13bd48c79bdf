"""The ``fleet`` scenario at 100,000 and 1,000,000 vehicles, beside bare SimPy on the same events.

Each size runs in its own child process, so that its peak memory (the
child's maximum resident set) is its own. The child runs the built-in
``fleet`` scenario in virtual time with ``on_pause = "resume"`` (the operator
accepts each automatic pause after a review), so that every wave runs and
every targeted vehicle goes through check-in, download, installation and its
report: the whole campaign, not only its first waves.

The timed run is the scenario as ``hil scenario run fleet`` runs it, in a
plain SimPy environment; the events it processed are counted afterwards from
the environment's own bookkeeping (:func:`processed`). A second, untimed run
with the same seed records what every process did, in order: each timeout
it asked for and each process it made; its log digest and event count must
equal the timed run's, which shows both runs processed the same events.
Then, in the same child, a bare SimPy model replays exactly that, each
process making its timeouts and its children in the recorded order, with no
logic at all (no backend, no vehicle model). It schedules the same events in
the same order, and must process as many as the scenario did; the ratio of
the two event rates is the share of SimPy's own speed that the scenario
keeps.

Wall time covers the whole scenario (building the world, the campaign, the
final checks), while the bare model times only its event loop. Both run with
the garbage collector off, as a modeled scenario runs (at SimPy's defaults
the collector would take almost half the bare replay's speed at 100,000
vehicles, and flatter the share). Peak memory is read after the first timed
run, the first thing the child does.

With ``--repeat N`` (3 by default), the child then runs the scenario and the
bare replay N - 1 times more, in turns, and reports the median wall time,
bare time and share, and each pair: the speed of a shared machine drifts
from minute to minute, by more than a few percent.

    python bench/fleet_scale.py [--sizes 100000 1000000] [--seed 0] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Generator
from pathlib import Path
from typing import Any

import simpy


def processed(env: simpy.Environment) -> int:
    """Return how many events ``env`` has processed, at no cost while it runs.

    Every event SimPy processes was scheduled once and taken off its queue
    (one stopping a run is put back, and counted again as scheduled), so the
    count is what was scheduled less what is still queued. Counting in an
    overridden ``step`` instead would add a Python call to every event of
    both runs, and flatter the share of the slower one.
    """
    # ``_eid`` hands out one id per scheduling; taking the next one is harmless
    # once the run is over, but each call counts one more.
    scheduled: int = next(env._eid)  # type: ignore[attr-defined]
    return scheduled - len(env._queue)  # type: ignore[attr-defined]


class RecordingEnvironment(simpy.Environment):
    """Records, for every process, what it did in order: each timeout, each process it made.

    ``owners`` and ``values`` hold one entry per operation, in the order they
    happened: ``owners[i]`` is the process that did it (-1: none, such as code before
    the run), ``values[i]`` a timeout's delay, or ``-(child + 1)`` for the
    making of process ``child`` (processes are numbered as they are made).
    """

    def __init__(self) -> None:
        super().__init__()
        self.made = 0
        self.owners: array[int] = array("i")
        self.values: array[float] = array("d")

    def _owner(self) -> int:
        active = self.active_process
        return active.bench_id if active is not None else -1  # type: ignore[attr-defined]

    def process(self, generator: Generator[Any, Any, Any]) -> simpy.Process:  # type: ignore[override]
        owner = self._owner()
        if owner < 0 and self.now > 0:
            raise SystemExit("a process made outside any process after the start: no exact replay")
        proc = super().process(generator)
        proc.bench_id = self.made  # type: ignore[attr-defined]
        self.owners.append(owner)
        self.values.append(-(self.made + 1))
        self.made += 1
        return proc

    def timeout(self, delay: float = 0, value: Any = None) -> simpy.Timeout:  # type: ignore[override]
        self.owners.append(self._owner())
        self.values.append(delay)
        return super().timeout(delay, value)


def bare_replay(made: int, owners: array[int], values: array[float]) -> tuple[float, int]:
    """Replay the recorded processes with no logic; return (seconds, events).

    Each process makes its timeouts and its child processes in the order and
    at the moments the scenario's did, so the replay schedules the same
    events in the same order: SimPy's work for the scenario, and nothing else.
    """
    per_process: list[list[float]] = [[] for _ in range(made)]
    unowned: list[float] = []
    for owner, value in zip(owners, values, strict=True):
        (per_process[owner] if owner >= 0 else unowned).append(value)
    env = simpy.Environment()

    def make(value: float) -> None:
        # ``value`` is ``-(child + 1)``, as ``RecordingEnvironment.process`` wrote it.
        env.process(replay(per_process[-int(value) - 1]))

    def replay(steps: list[float]) -> Generator[simpy.Event, Any, None]:
        for value in steps:
            if value < 0:
                make(value)
            else:
                yield env.timeout(value)

    # The collector is off while it runs, as it is for the modeled scenario
    # (``scenarios.core.execute``), so that both are timed alike.
    gc.disable()
    try:
        began = time.perf_counter()
        for value in unowned:
            if value < 0:
                make(value)
            else:
                env.timeout(value)
        env.run()
        took = time.perf_counter() - began
    finally:
        gc.enable()
    return took, processed(env)


def fleet_run(size: int, seed: int, env: simpy.Environment) -> tuple[float, Any]:
    """Run the scenario in ``env`` as ``hil scenario run fleet`` runs it; return (seconds, run)."""
    from scenarios.core import execute
    from scenarios.registry import get_scenario, make_params

    scenario = get_scenario("fleet")
    params = make_params(scenario, {"vehicles": size, "on_pause": "resume", "expect": "any"})
    with tempfile.TemporaryDirectory() as directory:
        began = time.perf_counter()
        run = execute(
            scenario, params, seed=seed, directory=Path(directory), keep_log=False, environment=env
        )
        return time.perf_counter() - began, run


def child(size: int, seed: int, repeat: int) -> dict[str, Any]:
    """Run one size ``repeat`` times beside the bare replay; return its figures.

    The first timed run comes first in the process, so that the peak memory
    read after it is the scenario's own; its bare replay follows the
    recording run. Further pairs (the scenario, then the bare replay) follow
    one another, so that each share compares two runs made close in time: on
    a shared machine, speed drifts from minute to minute. The figures are the
    medians, the spread is reported.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    counted = simpy.Environment()
    wall, run = fleet_run(size, seed, counted)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    figures = {k: v for k, v in run.figures.items() if not isinstance(v, dict)}
    calls = run.figures.get("backend calls", {})
    passed, error, digest = run.passed, run.error, run.log.digest()
    events = processed(counted)
    del run, counted
    gc.collect()

    recording = RecordingEnvironment()
    _, again = fleet_run(size, seed, recording)
    recorded = processed(recording)
    if again.log.digest() != digest or recorded != events:
        raise SystemExit(
            f"the recording run differs from the timed run: {recorded} events, "
            f"log {again.log.digest()[:16]}, against {events} and {digest[:16]}"
        )
    del again
    gc.collect()
    walls, bares = [wall], []
    while True:
        bare_s, bare_events = bare_replay(recording.made, recording.owners, recording.values)
        if bare_events != events:
            raise SystemExit(
                f"the bare replay processed {bare_events} events, the scenario {events}"
            )
        bares.append(bare_s)
        if len(walls) == repeat:
            break
        gc.collect()
        env = simpy.Environment()
        wall, run = fleet_run(size, seed, env)
        if run.log.digest() != digest or processed(env) != events:
            raise SystemExit("a repeated run differs from the first one")
        walls.append(wall)
        del run, env
        gc.collect()
    shares = [bare / wall for bare, wall in zip(bares, walls, strict=True)]
    wall, bare_s = statistics.median(walls), statistics.median(bares)
    return {
        "vehicles": size,
        "passed": passed,
        "error": error,
        "wall_s": wall,
        "walls_s": walls,
        "events": events,
        "events_per_s": events / wall,
        "peak_gib": peak_gib,
        "bare_s": bare_s,
        "bares_s": bares,
        "bare_events": events,
        "bare_events_per_s": events / bare_s,
        "share": statistics.median(shares),
        "shares": shares,
        "digest": digest,
        "figures": figures,
        "calls": calls,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="timed runs per size, each beside a bare replay; medians are reported (default 3)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.child:
        print(json.dumps(child(args.child, args.seed, args.repeat)))
        return 0
    results = []
    for size in args.sizes:
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(size),
                "--seed",
                str(args.seed),
                "--repeat",
                str(args.repeat),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            # A child stops with its reason (say, a replay that does not match): show it.
            why = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
            print(f"error: {size:,} vehicles: {why[0]}", file=sys.stderr)
            return 1
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"fleet scenario, seed {args.seed}, on_pause=resume; "
        "baseline: bare SimPy replay of the same events; garbage collector off in both; "
        f"median of {args.repeat} run(s) each"
    )
    header = (
        f"{'vehicles':>10} {'wall s':>8} {'events':>10} {'events/s':>10} "
        f"{'bare/s':>10} {'share':>7} {'peak GiB':>9} {'checks':>7}"
    )
    print(header)
    for r in results:
        share = r["share"]
        print(
            f"{r['vehicles']:>10,} {r['wall_s']:>8.1f} "
            f"{r['events']:>10,} "
            f"{r['events_per_s']:>10,.0f} {r['bare_events_per_s']:>10,.0f} {share:>7.1%} "
            f"{r['peak_gib']:>9.2f} {'held' if r['passed'] else 'FAILED':>7}"
        )
    for r in results:
        calls = ", ".join(f"{k} {v:,}" for k, v in sorted(r["calls"].items()))
        print(
            f"  {r['vehicles']:,}: {r['figures'].get('targets', 0):,} targets, "
            f"{r['figures'].get('succeeded', 0):,} succeeded, "
            f"{r['figures'].get('failed or rolled back', 0):,} failed or rolled back, "
            f"{r['figures'].get('virtual time (days)', 0)} days; backend calls: {calls}; "
            f"bare replay {r['bare_s']:.1f} s for {r['bare_events']:,} events; "
            f"log sha256:{r['digest'][:16]}"
        )
        if len(r["shares"]) > 1:
            pairs = "; ".join(
                f"{wall:.1f} s / {bare:.1f} s = {bare / wall:.1%}"
                for wall, bare in zip(r["walls_s"], r["bares_s"], strict=True)
            )
            print(f"    runs (scenario / bare, in order): {pairs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
