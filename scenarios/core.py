"""The scenario framework: a world driven by SimPy, an event log, checks and figures.

A scenario is a class with a SimPy process (:meth:`Scenario.main`) that builds
its world, schedules actions and faults, waits for conditions and records
checks on a :class:`Run`. Two time modes:

* ``wire``: :class:`simpy.rt.RealtimeEnvironment` paces the process with the
  wall clock while the real backend, gateways and simulated ECUs run on their
  own threads; what those threads report enters SimPy through a
  :class:`ThreadBridge`, so the log is written from one thread only.
* ``modeled``: a plain :class:`simpy.Environment` in virtual time. Nothing in
  the run reads the wall clock, so the same parameters and seed give the same
  event log, whose SHA-256 is the run's fingerprint.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import queue
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import simpy
import simpy.rt
from pydantic import BaseModel, ConfigDict

Fidelity = Literal["wire", "modeled"]
ProcessGenerator = Generator[simpy.Event, Any, Any]


class ScenarioError(Exception):
    """A scenario cannot be built or run as asked (bad parameters, unknown name)."""


class ScenarioTimeout(ScenarioError):
    """A condition a scenario waited for did not come true in time."""


class ScenarioParams(BaseModel):
    """Base of every scenario's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of a run's event log."""

    at: float
    source: str
    kind: str
    detail: str = ""

    def line(self) -> str:
        """Return the canonical text the log's fingerprint is computed over."""
        return f"{self.at:.6f}\t{self.source}\t{self.kind}\t{self.detail}\n"


class EventLog:
    """An append-only log with a running SHA-256 over its canonical lines.

    ``keep=False`` keeps only the count and the fingerprint (a fleet of a
    million vehicles logs tens of millions of lines).
    """

    def __init__(self, *, keep: bool = True) -> None:
        self.keep = keep
        self.entries: list[LogEntry] = []
        self.count = 0
        self._hash = hashlib.sha256()
        self._pending: list[str] = []

    def add(self, at: float, source: str, kind: str, detail: str = "") -> LogEntry:
        """Append an entry and return it."""
        entry = LogEntry(at, source, kind, detail)
        self.count += 1
        if self.keep:
            self.entries.append(entry)
        self._pending.append(entry.line())
        if len(self._pending) >= 4096:
            self._flush()
        return entry

    def extend(self, lines: Iterator[LogEntry]) -> None:
        """Append many entries."""
        for entry in lines:
            self.add(entry.at, entry.source, entry.kind, entry.detail)

    def add_rows(self, source: str, rows: Iterable[tuple[float, str, str]]) -> None:
        """Append ``(at, kind, detail)`` rows from one source.

        The same lines as :meth:`add`, without an entry object per row when
        entries are not kept: a fleet logs millions of backend events at once.
        """
        if self.keep:
            for at, kind, detail in rows:
                self.add(at, source, kind, detail)
            return
        rows = iter(rows)
        while chunk := [
            f"{at:.6f}\t{source}\t{kind}\t{detail}\n"
            for at, kind, detail in itertools.islice(rows, 4096)
        ]:
            self.add_lines(chunk)

    def add_lines(self, lines: Sequence[str]) -> None:
        """Append lines already in the canonical form of :meth:`LogEntry.line`.

        For a log that keeps only its count and fingerprint (a log that keeps
        its entries takes them whole, through :meth:`add` or :meth:`add_rows`).
        """
        if self.keep:
            raise ValueError("a log that keeps its entries takes them through add or add_rows")
        self._flush()
        self.count += len(lines)
        self._hash.update("".join(lines).encode())

    def _flush(self) -> None:
        self._hash.update("".join(self._pending).encode())
        self._pending.clear()

    def digest(self) -> str:
        """Return the SHA-256 (hex) of every line so far."""
        self._flush()
        return self._hash.hexdigest()


@dataclass(frozen=True)
class Check:
    """One judged expectation of a scenario."""

    name: str
    passed: bool
    detail: str = ""
    at: float = 0.0


@dataclass(frozen=True)
class Span:
    """A step of work on a timeline (a UDS step of one ECU, a phase of a vehicle)."""

    lane: str
    step: str
    start: float
    end: float
    ok: bool = True
    detail: str = ""


@dataclass
class Run:
    """What a scenario works with, and what it leaves for the report."""

    env: simpy.Environment
    name: str
    fidelity: Fidelity
    params: ScenarioParams
    seed: int
    directory: Path
    log: EventLog
    rng: random.Random = field(init=False)
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    spans: list[Span] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    attachments: dict[str, str] = field(default_factory=dict)
    on_status: Callable[[str], None] | None = None
    stack: ExitStack = field(default_factory=ExitStack)
    started_wall: float = field(default_factory=time.perf_counter)
    wall_s: float = 0.0
    error: str = ""

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @property
    def now(self) -> float:
        """Scenario time in seconds (virtual, or since the start for wire runs)."""
        return float(self.env.now)

    def event(self, source: str, kind: str, detail: str = "") -> None:
        """Log an event at the current scenario time."""
        self.log.add(self.now, source, kind, detail)

    def check(self, name: str, passed: bool, detail: str = "") -> bool:
        """Record a check; return whether it held."""
        self.checks.append(Check(name, bool(passed), detail, self.now))
        self.event("check", "passed" if passed else "FAILED", f"{name}: {detail}".rstrip(": "))
        return bool(passed)

    def check_equal(self, name: str, actual: object, expected: object) -> bool:
        """Record that ``actual`` equals ``expected``."""
        passed = actual == expected
        detail = f"{actual!r}" if passed else f"got {actual!r}, expected {expected!r}"
        return self.check(name, passed, detail)

    def figure(self, name: str, value: Any) -> None:
        """Record a figure of the run (a count, a duration, a rate)."""
        self.figures[name] = value

    def sample(self, series: str, **values: float) -> None:
        """Add a point at the current time to a time series (for plots)."""
        self.series.setdefault(series, []).append({"t": self.now, **values})

    def status(self, text: str) -> None:
        """Show a one-line progress status to a person watching."""
        if self.on_status is not None:
            self.on_status(text)

    @property
    def passed(self) -> bool:
        """Whether the run ended without error and every check held (and there was one)."""
        return not self.error and bool(self.checks) and all(c.passed for c in self.checks)


class ThreadBridge:
    """Brings calls from other threads into the SimPy thread, in arrival order.

    Other threads :meth:`call`; a pump process in the environment runs the
    calls every ``interval_s`` of scenario time. :meth:`wait_until` polls a
    condition on the same pace.
    """

    def __init__(self, env: simpy.Environment, interval_s: float = 0.02) -> None:
        self.env = env
        self.interval_s = interval_s
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        env.process(self._pump())

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the SimPy thread soon (safe from any thread)."""
        self._calls.put(fn)

    def drain(self) -> None:
        """Run every call that has arrived."""
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                return
            fn()

    def _pump(self) -> ProcessGenerator:
        while True:
            yield self.env.timeout(self.interval_s)
            self.drain()

    def wait_until(
        self, condition: Callable[[], bool], *, timeout_s: float, what: str
    ) -> ProcessGenerator:
        """SimPy process: return once ``condition()`` holds; :class:`ScenarioTimeout` after."""
        deadline = self.env.now + timeout_s
        while True:
            self.drain()
            if condition():
                return
            if self.env.now >= deadline:
                raise ScenarioTimeout(f"{what}: not seen within {timeout_s:g} s")
            yield self.env.timeout(self.interval_s)


def run_time(env: simpy.Environment, t_mono: float) -> float:
    """Return the scenario time of a ``time.monotonic()`` instant of a wire run."""
    if isinstance(env, simpy.rt.RealtimeEnvironment):
        return float(env.env_start + (t_mono - env.real_start) / env.factor)
    return float(env.now)


def catch_up(env: simpy.Environment) -> ProcessGenerator:
    """SimPy process: bring scenario time up to the wall clock after a blocking call.

    A non-strict real-time environment does not move while the scenario's own
    thread blocks (building a world, an RPC), so events logged afterwards would
    lag the spans taken from the other threads' clocks.
    """
    lag = run_time(env, time.monotonic()) - env.now
    if lag > 0:
        yield env.timeout(lag)


class Scenario(ABC):
    """A built-in or user scenario. Subclasses set the class attributes and ``main``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    fidelity: ClassVar[Fidelity]
    Params: ClassVar[type[ScenarioParams]] = ScenarioParams
    # Seconds of scenario time after which the run is stopped as failed.
    time_limit_s: ClassVar[float] = 600.0

    def __init__(self, run: Run) -> None:
        self.run = run

    @abstractmethod
    def main(self) -> ProcessGenerator:
        """Run the scenario as a SimPy process: build, act, wait, check."""

    def time_limit(self) -> float:
        """Return the time limit for this run (may depend on the parameters)."""
        return self.time_limit_s


def make_environment(fidelity: Fidelity) -> simpy.Environment:
    """Return the SimPy environment of a time mode."""
    if fidelity == "wire":
        # Not strict: a slow gRPC call or a long flash step must not abort the run;
        # the environment simply catches up with the wall clock afterwards.
        return simpy.rt.RealtimeEnvironment(factor=1.0, strict=False)
    return simpy.Environment()


def _collector_back() -> None:
    """Switch the collector on again after a modeled run, with what it made counted as old.

    What the run made either lives on with its results or dies with its
    world, in one piece: scanning it as young (then middle-aged) objects
    first, hundreds of thousands of them, would only repeat the work that the
    next full collection does anyway. A world that died is freed by that
    collection; a modeled fleet runs one before it builds its own world, so
    that runs in one process do not pile up.

    Freezing and unfreezing every object moves them all to the oldest
    generation, but would also release what the caller froze itself
    (``gc.unfreeze`` cannot tell them apart): with frozen objects present,
    the run's objects are left to the young generations.
    """
    if not gc.get_freeze_count():
        gc.freeze()
        gc.unfreeze()  # the frozen objects go to the oldest generation
    gc.enable()


def execute(
    scenario: type[Scenario],
    params: ScenarioParams,
    *,
    seed: int,
    directory: Path,
    on_status: Callable[[str], None] | None = None,
    keep_log: bool = True,
    environment: simpy.Environment | None = None,
) -> Run:
    """Run ``scenario`` with ``params`` and ``seed``; return the finished :class:`Run`.

    Errors inside the scenario (a timeout, a broken world) end the run as
    failed with ``Run.error`` set; they are not raised. ``environment``
    replaces the time mode's own (a benchmark counts its events that way).
    """
    directory.mkdir(parents=True, exist_ok=True)
    env = environment if environment is not None else make_environment(scenario.fidelity)
    run = Run(
        env=env,
        name=scenario.name,
        fidelity=scenario.fidelity,
        params=params,
        seed=seed,
        directory=directory,
        log=EventLog(keep=keep_log),
        on_status=on_status,
    )
    instance = scenario(run)
    run.event("scenario", "started", scenario.name)
    if scenario.fidelity == "modeled" and gc.isenabled():
        # A modeled fleet allocates millions of long-lived objects (actions,
        # events, processes) and makes next to no reference cycles (a few
        # hundred in a 20,000-vehicle run with faults): every automatic
        # collection would only rescan what lives on, about 5 % of the run.
        # The cycles left are collected after the run, as usual.
        gc.disable()
        run.stack.callback(_collector_back)
    with run.stack:
        process = env.process(instance.main())
        limit = instance.time_limit()
        try:
            env.run(until=env.any_of([process, env.timeout(limit)]))
            if not process.triggered:
                run.error = f"time limit of {limit:g} s reached"
            elif not process.ok:
                failure = process.value
                assert isinstance(failure, BaseException)
                raise failure
        except ScenarioError as exc:
            run.error = str(exc)
        except Exception as exc:  # the report must say what broke, whatever it was
            run.error = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, AssertionError):
                run.figures.setdefault("exception", repr(exc))
    if run.error:
        run.event("scenario", "error", run.error)
    run.event("scenario", "finished", "passed" if run.passed else "failed")
    run.wall_s = time.perf_counter() - run.started_wall
    return run


__all__ = [
    "Check",
    "EventLog",
    "Fidelity",
    "LogEntry",
    "ProcessGenerator",
    "Run",
    "Scenario",
    "ScenarioError",
    "ScenarioParams",
    "ScenarioTimeout",
    "Span",
    "ThreadBridge",
    "catch_up",
    "execute",
    "make_environment",
    "run_time",
]
