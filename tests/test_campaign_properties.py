"""Properties of the campaign engine under random operation sequences.

A hypothesis state machine drives one :class:`CampaignEngine` with a fake clock
over a small fleet: operator verbs (start, pause, resume, abort, also on
unknown campaign ids), clock advances and timeout ticks, vehicle check-ins and
deployment reports (legal and illegal states, other vehicles' deployments,
unknown and malformed ids, progress outside 0..100, reused and resent report
ids). Operations are data (:class:`Op`), so one sequence can be replayed on
two stores.

``check_step`` judges each operation on its own: the error it raised (always a
:class:`BackendError`, exactly when the rules say so, and then nothing
changed), what it returned, and the exact change it made to the campaign and
every action; ``check_generic_changes`` holds what must hold across any step
(campaigns and actions move only along their transition tables, terminal
states are final, attempts only grow and stay within the retries, history is
never rewritten, the current wave never goes back). ``check_state`` holds what must
hold of the whole state after every rule (counts add up, waves start in order,
one deployment per vehicle at a time, attempts, completion and pauses), read
back through the store and ``engine.status``.

The machine runs over the in-memory store and over SQLite; another test runs
the same sequences over both side by side. Two regression tests pin the rule
that a campaign completes only once every action of every wave has ended.

Campaigns may have timed waves (a wave starts when its predecessor passed and
its time has come) and abort criteria (over all waves, after every final
outcome); the rollout rate has a property test of its own.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from backend_helpers import seed, vehicle, vin
from helpers import FakeClock
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from backend_stub.engine import CampaignEngine, Offer, ReportOutcome
from backend_stub.errors import (
    BackendError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from backend_stub.model import (
    ABORT_FAILURES,
    ACTION_TRANSITIONS,
    ACTIVE_ACTION_STATES,
    CAMPAIGN_TRANSITIONS,
    CANCELABLE_STATES,
    FAILURE_STATES,
    REPORTABLE_STATES,
    TERMINAL_ACTION_STATES,
    TERMINAL_CAMPAIGN_STATES,
    AbortCriterion,
    Action,
    ActionState,
    Campaign,
    CampaignEvent,
    CampaignSpec,
    CampaignState,
    DeploymentReport,
    RolloutRate,
    WaveSpec,
)
from backend_stub.store import MemoryStore
from backend_stub.store.sql import SqlStore, sqlite_url

S = ActionState
C = CampaignState
STRANGER = "WHLZZZ00000000000"  # a VIN nobody registered

# Campaign state changes one successful operation may make (the engine may
# chain two transitions in one call, e.g. resume -> RUNNING -> COMPLETED).
CAMPAIGN_CHANGES: dict[str, frozenset[tuple[C, C]]] = {
    "start": frozenset({(C.DRAFT, C.RUNNING)}),
    "pause": frozenset({(C.RUNNING, C.PAUSED)}),
    "resume": frozenset({(C.PAUSED, C.RUNNING), (C.PAUSED, C.COMPLETED)}),
    "abort": frozenset({(C.DRAFT, C.ABORTED), (C.RUNNING, C.ABORTED), (C.PAUSED, C.ABORTED)}),
    "report": frozenset(
        {
            (C.RUNNING, C.PAUSED),
            (C.RUNNING, C.COMPLETED),
            (C.RUNNING, C.ABORTED),
            (C.PAUSED, C.ABORTED),
        }
    ),
    "tick": frozenset(
        {
            (C.RUNNING, C.PAUSED),
            (C.RUNNING, C.COMPLETED),
            (C.RUNNING, C.ABORTED),
            (C.PAUSED, C.ABORTED),
        }
    ),
}


def campaign_path_ok(old: C, new: C, hops: int = 2) -> bool:
    """Whether ``new`` is reachable from ``old`` in at most ``hops`` legal transitions."""
    frontier = {old}
    for _ in range(hops):
        frontier |= {t for s in frontier for t in CAMPAIGN_TRANSITIONS[s]}
    return new in frontier


def test_campaign_change_table_follows_the_transition_table():
    for pairs in CAMPAIGN_CHANGES.values():
        for old, new in pairs:
            assert campaign_path_ok(old, new), (old, new)


# --------------------------------------------------------------------- model
@dataclass(frozen=True)
class Config:
    fleet: int
    waves: tuple[WaveSpec, ...]
    success: float
    error: float
    max_retries: int
    timeout: int
    delays: tuple[int, ...] = ()  # start_after_s of the listed waves (0: none)
    criteria: tuple[AbortCriterion, ...] = ()

    def wave_specs(self) -> tuple[WaveSpec, ...]:
        return tuple(
            replace(w, start_after_s=self.delays[i] if i < len(self.delays) else None)
            for i, w in enumerate(self.waves)
        )


@dataclass(frozen=True)
class Op:
    """One operation, as data, so that two stores can replay the same sequence."""

    kind: str
    n: int = 0
    state: ActionState = S.SUCCEEDED
    progress: int = 0
    target: str = "active"  # report: "active", "any" or "key" (n is the action key)
    who: str = "own"  # report: "own", "other" (another fleet vehicle), "stranger"
    dep: str = "real"  # report: "real", "unknown" or "malformed" deployment id
    text: str = ""  # operator reason; resend variant; verb for "bad_campaign"


@dataclass(frozen=True)
class Snapshot:
    campaign: Campaign
    actions: tuple[Action, ...]
    events: tuple[CampaignEvent, ...]
    wave_counts: dict[int, dict[ActionState, int]]

    def by_key(self) -> dict[int, Action]:
        return {a.key: a for a in self.actions}


@dataclass
class Step:
    op: Op
    before: Snapshot
    after: Snapshot
    now: float
    result: Any
    error: BaseException | None
    expected: type[BackendError] | None  # what the rules say the call raises
    target: Action | None = None  # report: the action the report is about (before)
    report: DeploymentReport | None = None
    duplicate: bool = False  # report: its id had been applied before


@dataclass
class Plan:
    call: Callable[[], Any]
    expected: type[BackendError] | None = None
    target: Action | None = None
    report: DeploymentReport | None = None
    duplicate: bool = False


def vehicle_number(vin_: str) -> int:
    return int(vin_[6:])


class Driver:
    """One engine over one store, applying :class:`Op` values and recording each step."""

    def __init__(self, store: Any, config: Config) -> None:
        self.store = store
        self.config = config
        self.clock = FakeClock()
        self.engine = CampaignEngine(store, self.clock)
        (rel,) = seed(store, [vehicle(i) for i in range(config.fleet)])
        self.campaign = self.engine.create(
            CampaignSpec(
                name="prop",
                release_id=rel.release_id,
                waves=config.wave_specs(),
                success_threshold_pct=config.success,
                error_threshold_pct=config.error,
                max_retries=config.max_retries,
                action_timeout_s=config.timeout,
                abort_criteria=config.criteria,
            )
        )
        self.cid = self.campaign.campaign_id
        self.applied: list[DeploymentReport] = []  # reports applied (id claimed), in order
        self.applied_ids: set[str] = set()
        self.refused_ids: list[str] = []  # ids of refused reports (never claimed)
        self._ids = itertools.count()
        self.last = self.snapshot()
        self.gates_checked_at = self.clock.now  # the last successful tick, start or resume

    def snapshot(self) -> Snapshot:
        key = self.campaign.key

        def work(tx: Any) -> Snapshot:
            campaign = tx.get_campaign(key)
            actions = tuple(tx.list_actions(key, limit=100_000))
            events = tuple(tx.events_after(key, after_key=0, limit=100_000))
            return Snapshot(campaign, actions, events, tx.wave_counts(key))

        return self.store.run(work, write=False)

    # ---------------------------------------------------------------- planning
    def _plan(self, op: Op, before: Snapshot) -> Plan:
        engine, state = self.engine, before.campaign.state
        if op.kind == "start":
            bad = None if state is C.DRAFT else FailedPrecondition
            return Plan(lambda: engine.start(self.cid), bad)
        if op.kind == "pause":
            bad = None if state is C.RUNNING else FailedPrecondition
            return Plan(lambda: engine.pause(self.cid, op.text), bad)
        if op.kind == "resume":
            bad = None if state is C.PAUSED else FailedPrecondition
            return Plan(lambda: engine.resume(self.cid), bad)
        if op.kind == "abort":
            bad = None if state not in TERMINAL_CAMPAIGN_STATES else FailedPrecondition
            return Plan(lambda: engine.abort(self.cid, op.text), bad)
        if op.kind == "bad_campaign":
            other = f"cmp-{before.campaign.key + 1 + op.n}" if op.n % 2 else "campaign-1"
            verb = getattr(engine, op.text)
            return Plan(lambda: verb(other), NotFound)
        if op.kind == "advance":
            return Plan(lambda: self.clock.advance(op.n))
        if op.kind == "tick":
            return Plan(lambda: (self.clock.advance(op.n), engine.tick())[1])
        if op.kind == "check_in":
            who = vin(op.n % self.config.fleet) if op.n >= 0 else STRANGER
            return Plan(lambda: engine.check_in(who), None if who != STRANGER else NotFound)
        if op.kind == "report":
            return self._plan_report(op, before)
        if op.kind == "resend":
            return self._plan_resend(op, before)
        raise AssertionError(f"unknown op {op}")

    def _plan_report(self, op: Op, before: Snapshot) -> Plan:
        actions = list(before.actions)
        if op.target == "key":
            (target,) = [a for a in actions if a.key == op.n]
        else:
            pool = actions
            if op.target == "active":
                pool = [a for a in actions if a.state in ACTIVE_ACTION_STATES] or actions
            target = pool[op.n % len(pool)]
        if op.who == "own":
            sender = target.vin
        elif op.who == "other":
            shift = 1 + op.n % (self.config.fleet - 1)
            sender = vin((vehicle_number(target.vin) + shift) % self.config.fleet)
        else:
            sender = STRANGER
        if op.dep == "real":
            dep = target.deployment_id
        elif op.dep == "unknown":
            dep = f"dep-{max(a.key for a in actions) + 1 + op.n}"
        else:
            dep = ("deployment-1", "dep-", "dep-x1", "")[op.n % 4]
        if op.text == "reuse" and self.refused_ids:
            report_id = self.refused_ids[op.n % len(self.refused_ids)]
        else:
            report_id = f"rep-{next(self._ids)}"
        report = DeploymentReport(
            vin=sender,
            deployment_id=dep,
            report_id=report_id,
            state=op.state,
            progress_pct=op.progress,
            failure_step="flash",
            failure_reason=f"why {report_id}",
        )
        duplicate = report_id in self.applied_ids
        expected: type[BackendError] | None = None
        if report.state not in REPORTABLE_STATES or not 0 <= report.progress_pct <= 100:
            expected = InvalidArgument
        elif op.dep != "real":
            expected = NotFound
        elif sender != target.vin:
            expected = PermissionDenied
        elif duplicate:
            expected = None
        elif target.state is S.CANCELED:
            expected = FailedPrecondition
        elif report.state is target.state and target.state not in TERMINAL_ACTION_STATES:
            expected = None
        elif report.state not in ACTION_TRANSITIONS[target.state]:
            expected = FailedPrecondition
        return Plan(
            lambda: self.engine.report(report),
            expected,
            target=target,
            report=report,
            duplicate=duplicate and expected is None,
        )

    def _plan_resend(self, op: Op, before: Snapshot) -> Plan:
        original = self.applied[op.n % len(self.applied)]
        report = original
        if op.text != "same":
            # Same id, different content: still the report that was applied already.
            state = op.state if op.state in REPORTABLE_STATES else S.SUCCEEDED
            report = replace(original, state=state, progress_pct=min(100, max(0, op.progress)))
        (target,) = [a for a in before.actions if a.deployment_id == original.deployment_id]
        return Plan(
            lambda: self.engine.report(report),
            None,
            target=target,
            report=report,
            duplicate=True,
        )

    # --------------------------------------------------------------- applying
    def apply(self, op: Op) -> Step:
        before = self.last
        plan = self._plan(op, before)
        error: BaseException | None = None
        result = None
        try:
            result = plan.call()
        except BackendError as exc:  # anything else fails the test as it is
            error = exc
        after = self.snapshot()
        if error is None and op.kind in ("tick", "start", "resume"):
            self.gates_checked_at = self.clock.now
        if plan.report is not None:
            if error is None and not result.duplicate:
                self.applied.append(plan.report)
                self.applied_ids.add(plan.report.report_id)
            elif error is not None:
                self.refused_ids.append(plan.report.report_id)
        self.last = after
        return Step(
            op,
            before,
            after,
            self.clock.now,
            result,
            error,
            plan.expected,
            plan.target,
            plan.report,
            plan.duplicate,
        )


@dataclass(frozen=True)
class Delivery:
    """Vehicles check in and run what they are offered through to ``outcome``.

    Without an outcome they fall silent after ``via`` (for the timeout to find).
    """

    vehicles: tuple[int, ...]
    outcome: ActionState | None
    via: tuple[ActionState, ...]
    wait: int

    def run(self, apply: Callable[[Op], Step]) -> None:
        for n in self.vehicles:
            step = apply(Op("check_in", n))
            if step.error is not None or not step.result:
                continue
            key = step.result[0].action.key
            for state in (*self.via, *([self.outcome] if self.outcome else [])):
                if self.wait:
                    apply(Op("advance", self.wait))
                apply(Op("report", key, state=state, progress=50, target="key"))


# ------------------------------------------------------------------ the rules
@dataclass(frozen=True)
class WaveStats:
    size: int
    succeeded: int
    failed: int
    ended: int
    accepted: bool


def wave_stats(snap: Snapshot, wave: int) -> WaveStats:
    states = Counter(a.state for a in snap.actions if a.wave == wave)
    return WaveStats(
        size=snap.campaign.wave_sizes[wave],
        succeeded=states[S.SUCCEEDED],
        failed=sum(states[s] for s in FAILURE_STATES),
        ended=sum(states[s] for s in TERMINAL_ACTION_STATES),
        accepted=wave in snap.campaign.accepted_waves,
    )


def gate_open(c: Campaign, wave: int, now: float) -> bool:
    """Whether ``wave``'s start time (if it has one) has come."""
    gates = c.wave_start_after_s
    if wave >= len(gates) or gates[wave] <= 0:
        return True
    return c.started_at is not None and now >= c.started_at + gates[wave]


def abort_decision(snap: Snapshot) -> str | None:
    """The reason of the first abort criterion the campaign's executed vehicles meet."""
    states = Counter(a.state for a in snap.actions)
    executed = states[S.SUCCEEDED] + states[S.FAILED] + states[S.ROLLED_BACK]
    words = {"failed": "failed", "rolled_back": "rolled back", "any": "failed or rolled back"}
    for crit in snap.campaign.abort_criteria:
        failures = {
            "failed": states[S.FAILED],
            "rolled_back": states[S.ROLLED_BACK],
            "any": states[S.FAILED] + states[S.ROLLED_BACK],
        }[crit.failure]
        met = failures * 100.0 >= crit.threshold_pct * executed
        if executed and executed >= crit.min_executed and met:
            return (
                f"abort criterion: {failures} of {executed} executed vehicles "
                f"{words[crit.failure]} ({100.0 * failures / executed:.0f}% "
                f">= {crit.threshold_pct:g}%)"
            )
    return None


def wave_decision(snap: Snapshot, wave: int, now: float) -> str:
    """What the documented rules decide for ``wave`` of a running campaign at ``now``."""
    c, w = snap.campaign, wave_stats(snap, wave)
    if c.awaiting_start and wave == c.current_wave:
        return "start wave" if gate_open(c, wave, now) else "wait"
    if not w.accepted and w.failed > 0 and w.failed * 100.0 >= c.error_threshold_pct * w.size:
        return "pause: errors"
    passed = w.succeeded * 100.0 >= c.success_threshold_pct * w.size or (
        w.accepted and w.ended == w.size
    )
    if passed:
        if wave + 1 < len(c.wave_sizes):
            return "next wave" if gate_open(c, wave + 1, now) else "wait"
        # The campaign completes only when no action of any wave is still open.
        all_ended = all(x.state in TERMINAL_ACTION_STATES for x in snap.actions)
        return "complete" if all_ended else "wait"
    return "pause: below success threshold" if w.ended == w.size else "wait"


def check_generic_changes(step: Step, config: Config) -> None:
    """What must hold across any step, whatever the operation was.

    Campaigns and actions move only along their transition tables, and only by
    the operations allowed to move them; terminal states are final; attempts
    only grow, within the retries; history is only appended to.
    """
    b, a, kind = step.before, step.after, step.op.kind
    bc, ac = b.campaign, a.campaign
    # Campaign: only along the transition table; terminal states are final.
    if bc.state is not ac.state:
        assert bc.state not in TERMINAL_CAMPAIGN_STATES, (bc.state, ac.state)
        assert (bc.state, ac.state) in CAMPAIGN_CHANGES.get(kind, frozenset()), (
            f"{kind} moved the campaign {bc.state} -> {ac.state}"
        )
        assert campaign_path_ok(bc.state, ac.state)
    assert ac.current_wave >= bc.current_wave, "current_wave decreased"
    assert set(ac.accepted_waves) >= set(bc.accepted_waves)
    assert a.events[: len(b.events)] == b.events, "the campaign's history was rewritten"
    started = waves_started(step)
    after = a.by_key()
    assert set(after) == {x.key for x in b.actions}, "actions appeared or vanished"
    for old in b.actions:
        new = after[old.key]
        assert (new.vin, new.wave, new.campaign_key) == (old.vin, old.wave, old.campaign_key)
        assert new.attempts >= old.attempts, f"attempts decreased: {old} -> {new}"
        assert new.attempts <= config.max_retries + 1
        if new.state is old.state:
            continue
        move = (old.state, new.state)
        assert old.state not in {S.SUCCEEDED, S.CANCELED}, f"terminal action changed {move}"
        assert old.state not in FAILURE_STATES, f"a failure changed after its step {move}"
        if new.state in ACTION_TRANSITIONS[old.state]:
            if old.state is S.SCHEDULED:
                assert new.state is S.CANCELED or old.wave in started, (
                    f"{move} in wave {old.wave}, started {started}"
                )
            if new.state is S.CANCELED:
                by_criterion = kind in ("report", "tick") and aborted_by_criterion(step)
                assert kind == "abort" or by_criterion, f"{kind} canceled an action"
            elif old.state is S.PENDING:
                assert kind == "check_in" and bc.state is C.RUNNING, (
                    f"{kind} notified a vehicle of a {bc.state} campaign"
                )
            elif old.state in ACTIVE_ACTION_STATES:
                assert kind in ("report", "tick"), f"{kind} moved a vehicle's action {move}"
        elif new.state is S.CANCELED:
            # A timeout with a retry left, whose retry an abort criterion met later
            # in the same tick canceled (another action's final failure met it).
            assert old.state in ACTIVE_ACTION_STATES, move
            assert kind == "tick" and aborted_by_criterion(step), f"{kind} canceled {move}"
            assert old.attempts <= config.max_retries
        else:
            # The one chain the engine takes in one step: a failure with a retry left.
            assert old.state in ACTIVE_ACTION_STATES and new.state is S.PENDING, move
            assert kind in ("report", "tick"), f"{kind} retried an action"
            assert old.attempts <= config.max_retries and bc.state is not C.ABORTED


def criteria_apply(c: Campaign) -> bool:
    """Whether the campaign's abort criteria are checked (it has some, and runs or is paused)."""
    return bool(c.abort_criteria) and c.state in (C.RUNNING, C.PAUSED)


def gate_opened(c: Campaign, now: float) -> bool:
    """Whether a tick finds a wave whose start time has come (so it applies the wave rules)."""
    if c.awaiting_start:
        return True
    following = c.current_wave + 1
    gates = c.wave_start_after_s
    return following < len(gates) and gates[following] > 0 and gate_open(c, following, now)


def aborted_by_criterion(step: Step) -> bool:
    """Whether this report or tick aborted the campaign (by an abort criterion)."""
    bc, ac = step.before.campaign, step.after.campaign
    return bc.state is not C.ABORTED and ac.state is C.ABORTED


def waves_started(step: Step) -> range:
    bc, ac = step.before.campaign, step.after.campaign
    if step.op.kind == "start" and step.error is None:
        first = 0
    elif bc.awaiting_start:
        first = bc.current_wave
    else:
        first = bc.current_wave + 1
    last = ac.current_wave - 1 if ac.awaiting_start else ac.current_wave
    return range(first, last + 1)


def expected_wave_starts(step: Step) -> dict[int, Action]:
    """The SCHEDULED -> PENDING moves of the waves this step started."""
    started = waves_started(step)
    return {
        x.key: replace(x, state=S.PENDING, updated_at=step.now)
        for x in step.before.actions
        if x.wave in started and x.state is S.SCHEDULED
    }


def check_step(step: Step, config: Config) -> None:
    """One operation's result and exact effect against the rules."""
    check_generic_changes(step, config)
    b, a, op, now = step.before, step.after, step.op, step.now
    bc, ac = b.campaign, a.campaign
    if step.error is not None:
        assert isinstance(step.error, BackendError)
        assert type(step.error) is step.expected, (
            f"{op} raised {type(step.error).__name__} ({step.error}); "
            f"expected {step.expected.__name__ if step.expected else 'success'}"
        )
        assert a == b, f"refused {op} changed the state"
        return
    assert step.expected is None, f"{op} should have raised {step.expected.__name__}"
    if step.duplicate:
        assert step.result.duplicate, f"resent report id {step.report.report_id} was applied"
        assert step.result.action == step.target
        assert a == b, "a duplicate report changed the state"
        return

    changes: dict[int, Action] = {}
    kind = op.kind
    if kind in ("advance", "bad_campaign"):
        assert a == b
        return
    if kind == "check_in":
        changes = check_check_in(step)
        assert ac == bc
    elif kind == "start":
        assert ac == replace(
            bc,
            state=C.RUNNING,
            updated_at=now,
            current_wave=ac.current_wave,
            started_at=now,
            awaiting_start=ac.awaiting_start,
        )
        for w in range(ac.current_wave):
            assert wave_decision(a, w, now) == "next wave", w
        if ac.awaiting_start:
            assert ac.current_wave == 0 and not gate_open(ac, 0, now)
        assert step.result == ac
    elif kind == "pause":
        reason = op.text.strip() or "paused by operator"
        assert ac == replace(bc, state=C.PAUSED, updated_at=now, pause_reason=reason)
        assert step.result == ac
    elif kind == "abort":
        reason = op.text.strip() or "aborted by operator"
        assert ac == replace(bc, state=C.ABORTED, updated_at=now, pause_reason=reason)
        changes = {
            x.key: replace(x, state=S.CANCELED, updated_at=now)
            for x in b.actions
            if x.state in CANCELABLE_STATES
        }
        assert step.result == ac
    elif kind == "resume":
        # Only resuming an automatic pause accepts the current wave's failures.
        accepted = bc.accepted_waves
        if bc.auto_paused:
            accepted = tuple(sorted({*bc.accepted_waves, bc.current_wave}))
        # Outcomes that came in while paused are judged now: the campaign may
        # move on, complete, or pause again at once.
        assert ac == replace(
            bc,
            state=ac.state,
            updated_at=now,
            pause_reason=ac.pause_reason,
            accepted_waves=accepted,
            auto_paused=ac.auto_paused,
            current_wave=ac.current_wave,
            awaiting_start=ac.awaiting_start,
        )
        for w in range(bc.current_wave, ac.current_wave):
            assert wave_decision(a, w, now) == "next wave", w
        if ac.state is C.PAUSED:
            assert ac.auto_paused and ac.pause_reason
            assert wave_decision(a, ac.current_wave, now).startswith("pause")
        else:
            assert not ac.auto_paused and ac.pause_reason == ""
        if ac.state is C.COMPLETED:
            assert wave_decision(a, ac.current_wave, now) == "complete"
        assert step.result == ac
    elif kind == "report":
        changes = check_report(step, config)
    elif kind == "tick":
        changes = check_tick(step, config)
    else:
        raise AssertionError(kind)
    changes.update(expected_wave_starts(step))
    if kind in ("report", "tick") and aborted_by_criterion(step):
        # Aborted as ``abort`` does: what the vehicles have not started installing.
        for x in b.actions:
            current = changes.get(x.key, x)
            if current.state in CANCELABLE_STATES:
                changes[x.key] = replace(current, state=S.CANCELED, updated_at=now)
    after = a.by_key()
    for x in b.actions:
        assert after[x.key] == changes.get(x.key, x), f"{op}: {x} became {after[x.key]}"


def check_check_in(step: Step) -> dict[int, Action]:
    b, a, now = step.before, step.after, step.now
    mine = [x for x in b.actions if x.vin == vin(step.op.n % len(b.actions))]
    active = [x for x in mine if x.state in ACTIVE_ACTION_STATES]
    pending = [x for x in mine if x.state is S.PENDING]
    if active:
        # The deployment it is working on, again; a vehicle never holds two.
        assert step.result == [Offer(x, a.campaign) for x in active]
        return {}
    if pending and b.campaign.state is C.RUNNING:
        first = min(pending, key=lambda x: x.key)
        notified = replace(
            first, state=S.NOTIFIED, attempts=first.attempts + 1, progress_pct=0, updated_at=now
        )
        assert step.result == [Offer(notified, a.campaign)]
        return {first.key: notified}
    assert step.result == [], f"offered {step.result} in a {b.campaign.state} campaign"
    return {}


def check_report(step: Step, config: Config) -> dict[int, Action]:
    b, a, now, report, target = step.before, step.after, step.now, step.report, step.target
    assert report is not None and target is not None
    bc = b.campaign
    assert isinstance(step.result, ReportOutcome) and not step.result.duplicate
    changes: dict[str, object] = {"updated_at": now, "progress_pct": report.progress_pct}
    evaluated = False
    if report.state is target.state:
        pass  # progress within the current state
    elif report.state in FAILURE_STATES:
        retry = target.attempts <= config.max_retries and bc.state is not C.ABORTED
        changes["state"] = S.PENDING if retry else report.state
        changes["failure_step"] = report.failure_step
        changes["failure_reason"] = report.failure_reason
        evaluated = not retry
    elif report.state is S.SUCCEEDED:
        changes.update(state=S.SUCCEEDED, progress_pct=100, failure_step="", failure_reason="")
        evaluated = True
    else:
        changes["state"] = report.state
    expected = replace(target, **changes)
    assert step.result.action == expected
    check_evaluation(step, evaluated)
    assert a.by_key()[target.key] == expected
    return {target.key: expected}


def check_tick(step: Step, config: Config) -> dict[int, Action]:
    b, now = step.before, step.now
    bc = b.campaign
    timeout = config.timeout
    stale = []
    if timeout > 0 and bc.state in (C.RUNNING, C.PAUSED, C.ABORTED):
        stale = [
            x for x in b.actions if x.state in ACTIVE_ACTION_STATES and x.updated_at < now - timeout
        ]
    # The timeouts in key order; an abort criterion met on the way cancels
    # what the vehicles have not started installing, the rest of the stale
    # actions included (those do not time out), and earlier timeouts' retries.
    current = b.by_key()
    aborted = bc.state is C.ABORTED
    changes = {}
    expired = 0
    for x in stale:
        if current[x.key].state is not x.state:
            continue  # canceled by the abort
        expired += 1
        retry = x.attempts <= config.max_retries and not aborted
        current[x.key] = changes[x.key] = replace(
            x,
            state=S.PENDING if retry else S.FAILED,
            updated_at=now,
            failure_step="timeout",
            failure_reason=f"no report for {timeout} s",
        )
        if not retry and not aborted and criteria_apply(bc):
            snap = replace(b, actions=tuple(current.values()))
            if abort_decision(snap) is not None:
                aborted = True
                for y in list(current.values()):
                    if y.state in CANCELABLE_STATES:
                        current[y.key] = changes[y.key] = replace(
                            y, state=S.CANCELED, updated_at=now
                        )
    evaluated = any(x.state is S.FAILED for x in changes.values()) or (
        bc.state is C.RUNNING and gate_opened(bc, now)
    )
    assert step.result == expired
    assert aborted == (step.after.campaign.state is C.ABORTED)
    check_evaluation(step, evaluated, exact_waves=False)
    return changes


def check_evaluation(step: Step, evaluated: bool, *, exact_waves: bool = True) -> None:
    """A report or tick changes the campaign only by applying the rules."""
    bc, ac, a, now = step.before.campaign, step.after.campaign, step.after, step.now
    if aborted_by_criterion(step):
        assert evaluated and criteria_apply(bc), f"{step.op} aborted without a decision"
        assert ac.pause_reason.startswith("abort criterion: "), ac.pause_reason
        if exact_waves:  # a report: the criterion holds right after its outcome
            assert ac.pause_reason == abort_decision(a)
            assert ac == replace(bc, state=C.ABORTED, updated_at=now, pause_reason=ac.pause_reason)
        return
    if evaluated and criteria_apply(bc):
        assert abort_decision(a) is None, "an abort criterion is met but did not abort"
    if not evaluated or bc.state is not C.RUNNING:
        assert ac == bc, f"{step.op} changed the campaign without a decision"
        return
    assert ac == replace(
        bc,
        state=ac.state,
        current_wave=ac.current_wave,
        updated_at=ac.updated_at,
        pause_reason=ac.pause_reason,
        auto_paused=ac.auto_paused,
        awaiting_start=ac.awaiting_start,
    )
    if ac != bc:
        assert ac.updated_at == now
    if exact_waves:
        # (A tick may fail more actions of a wave after it moved past it.)
        for w in range(bc.current_wave, ac.current_wave):
            assert wave_decision(a, w, now) == "next wave", w
    if ac.state is C.PAUSED:
        assert ac.pause_reason, "automatic pause without a reason"
        assert ac.auto_paused, "automatic pause not marked as one"
        assert wave_decision(a, ac.current_wave, now).startswith("pause"), ac.pause_reason
    else:
        assert ac.pause_reason == bc.pause_reason and ac.auto_paused == bc.auto_paused
        if ac.state is C.COMPLETED:
            assert wave_decision(a, ac.current_wave, now) == "complete"


# ---------------------------------------------------------- state invariants
class UnfinishedCompletion(AssertionError):
    """A COMPLETED campaign still has actions that are not terminal (the known bug below)."""


def check_state(driver: Driver, *, strict_completion: bool = True) -> None:
    """What must hold of the whole state, read back through the store and ``status``."""
    snap = driver.snapshot()
    assert snap == driver.last, "reading the state changed it"
    c, actions = snap.campaign, snap.actions
    status = driver.engine.status(driver.cid)
    assert status.campaign == c
    n_waves = len(c.wave_sizes)
    # Counts add up, and the store's counts are the actions' counts.
    counted: dict[int, Counter[ActionState]] = {}
    for x in actions:
        counted.setdefault(x.wave, Counter())[x.state] += 1
    assert sorted(status.wave_counts) == list(range(n_waves))
    assert {w: dict(n) for w, n in counted.items()} == status.wave_counts == snap.wave_counts
    for w, counts in status.wave_counts.items():
        assert sum(counts.values()) == c.wave_sizes[w]
    assert sum(sum(n.values()) for n in status.wave_counts.values()) == c.target_count
    assert len(actions) == c.target_count == driver.config.fleet
    # Waves start in order.
    assert 0 <= c.current_wave < n_waves
    for x in actions:
        if c.state is C.DRAFT:
            assert x.state is S.SCHEDULED and c.current_wave == 0
        elif x.wave > c.current_wave or (x.wave == c.current_wave and c.awaiting_start):
            later = S.CANCELED if c.state is C.ABORTED else S.SCHEDULED
            assert x.state is later, f"{x} ahead of wave {c.current_wave}"
        else:
            assert x.state is not S.SCHEDULED, f"{x} left behind in a started wave"
    # One deployment in the vehicle's hands at a time.
    busy = Counter(x.vin for x in actions if x.state in ACTIVE_ACTION_STATES)
    assert all(n == 1 for n in busy.values()), busy
    # Attempts.
    for x in actions:
        assert 0 <= x.attempts <= c.max_retries + 1, x
        if x.state is S.SCHEDULED:
            assert x.attempts == 0
        if x.state in ACTIVE_ACTION_STATES or x.state in {S.SUCCEEDED, *FAILURE_STATES}:
            assert x.attempts >= 1, x
    # Completion and pauses.
    if c.state is C.COMPLETED:
        last = n_waves - 1
        assert c.current_wave == last
        stats = wave_stats(snap, last)
        assert stats.ended == stats.size, "completed before the last wave ended"
        assert stats.accepted or stats.succeeded * 100.0 >= c.success_threshold_pct * stats.size
        if strict_completion:
            open_ = [x for x in actions if x.state not in TERMINAL_ACTION_STATES]
            if open_:
                raise UnfinishedCompletion(f"campaign completed with unfinished actions: {open_}")
    if c.state is C.PAUSED:
        assert c.pause_reason, "paused without a reason"
    if c.auto_paused:
        assert c.state in (C.PAUSED, C.ABORTED), "auto_paused outside a pause"
    if c.state is C.PAUSED and c.auto_paused:
        assert "threshold" in c.pause_reason, c.pause_reason
    if c.state is C.RUNNING:
        # The rules are applied as soon as they can be: a running campaign never
        # sits on a wave that should have paused it, moved on or completed. Time
        # gates are looked at by tick, start and resume: a wave whose time came
        # after the last of these waits for the next tick.
        decision = wave_decision(snap, c.current_wave, driver.gates_checked_at)
        assert decision == "wait", decision
    if c.state in (C.RUNNING, C.PAUSED):
        assert abort_decision(snap) is None, "an abort criterion is met"
    if c.state is C.ABORTED:
        assert not [x for x in actions if x.state in CANCELABLE_STATES]


# ---------------------------------------------------------------- strategies
wave_specs = st.one_of(
    st.integers(1, 6).map(lambda n: WaveSpec(count=n)),
    st.sampled_from([10.0, 25.0, 33.3, 50.0, 100.0]).map(lambda p: WaveSpec(percent=p)),
)
thresholds = st.one_of(st.sampled_from([0.0, 50.0, 100.0]), st.integers(0, 100).map(float))
abort_criteria = st.one_of(
    st.just(()),
    st.lists(
        st.builds(
            AbortCriterion,
            failure=st.sampled_from(ABORT_FAILURES),
            threshold_pct=st.sampled_from([10.0, 20.0, 34.0, 50.0, 100.0]),
            min_executed=st.integers(1, 3),
        ),
        min_size=1,
        max_size=2,
    ).map(tuple),
)
configs = st.builds(
    Config,
    fleet=st.integers(3, 12),
    waves=st.lists(wave_specs, min_size=1, max_size=3).map(tuple),
    success=thresholds,
    error=thresholds,
    max_retries=st.integers(0, 2),
    timeout=st.sampled_from([0, 30, 60]),
    # Mostly no time gates; sometimes gates a few advances away (on wave 0 rarely,
    # which holds everything back).
    delays=st.tuples(
        st.sampled_from([0] * 5 + [30]), st.sampled_from([0, 30, 60, 120]), st.just(0)
    ).map(lambda d: d if any(d) else ()),
    criteria=abort_criteria,
)
REPORTABLE = [S.SUCCEEDED, S.DOWNLOADING, S.INSTALLING, S.FAILED, S.ROLLED_BACK]
# Mostly what a vehicle may report; sometimes what it may not.
any_state = st.sampled_from(REPORTABLE * 4 + [S.CANCELED, S.PENDING, S.NOTIFIED, S.SCHEDULED])
# Mostly within 0..100 (sampled_from draws evenly, where integers() favours the bounds).
progress = st.sampled_from([*range(0, 101, 5), -1, 101])
advances = st.sampled_from([0, 1, 29, 30, 31, 59, 61, 120])
# A vehicle of the fleet (taken modulo its size), or -1 for an unregistered VIN.
vehicles = st.integers(-1, 11)

report_ops = st.builds(
    Op,
    kind=st.just("report"),
    n=st.integers(0, 50),
    state=any_state,
    progress=progress,
    target=st.sampled_from(["active", "active", "active", "any"]),
    who=st.sampled_from(["own"] * 8 + ["other", "stranger"]),
    dep=st.sampled_from(["real"] * 8 + ["unknown", "malformed"]),
    text=st.sampled_from(["", "", "", "reuse"]),
)
OPERATOR_VERBS = ["start", "resume", "pause", "abort"]
# Resume and pause often; abort (which ends everything) and unknown campaigns rarely.
operator_ops = st.sampled_from(
    ["resume"] * 4 + ["pause"] * 3 + ["start"] * 2 + ["abort"] * 2 + ["bad_campaign"]
).flatmap(
    lambda kind: st.builds(
        Op,
        kind=st.just(kind),
        n=st.integers(0, 3),
        text=st.sampled_from([*OPERATOR_VERBS, "status"])
        if kind == "bad_campaign"
        else st.sampled_from(["", "  ", "maintenance window"]),
    )
)
resend_ops = st.builds(
    Op,
    kind=st.just("resend"),
    n=st.integers(0, 50),
    state=any_state,
    progress=progress,
    text=st.sampled_from(["same", "changed"]),
)
check_in_ops = st.builds(Op, kind=st.just("check_in"), n=vehicles)
clock_ops = st.builds(Op, kind=st.sampled_from(["tick", "advance"]), n=advances)
deliveries = st.builds(
    Delivery,
    vehicles=st.lists(vehicles, min_size=1, max_size=4).map(tuple),
    outcome=st.sampled_from([S.SUCCEEDED] * 4 + [S.FAILED, S.ROLLED_BACK, None, None]),
    via=st.sampled_from([(), (S.DOWNLOADING,), (S.INSTALLING,), (S.DOWNLOADING, S.INSTALLING)]),
    wait=st.sampled_from([0, 0, 20]),
)
op_lists = st.lists(
    st.one_of(
        operator_ops,
        clock_ops,
        check_in_ops,
        report_ops,
        report_ops,
        resend_ops,
        deliveries,
        deliveries,
    ),
    min_size=5,
    max_size=40,
)


# ------------------------------------------------------------- state machine
class CampaignMachine(RuleBasedStateMachine):
    """Random operations on one campaign; every step and every state checked."""

    store_kind = "memory"
    strict_completion = True

    def __init__(self) -> None:
        super().__init__()
        self.tmp: tempfile.TemporaryDirectory[str] | None = None
        if self.store_kind == "sqlite":
            self.tmp = tempfile.TemporaryDirectory(prefix="campaign-props-")
            self.store: Any = SqlStore(sqlite_url(self.tmp.name))
        else:
            self.store = MemoryStore()
        self.driver: Driver | None = None
        self.steps: list[Step] = []

    def teardown(self) -> None:
        if self.driver is not None:
            c, actions = self.driver.last.campaign, self.driver.last.actions
            ended = sum(x.state in TERMINAL_ACTION_STATES for x in actions)
            event(f"final campaign state: {c.state.value}")
            event(f"waves started: {c.current_wave + 1} of {len(c.wave_sizes)}")
            event(f"actions ended: {'all' if ended == len(actions) else bool(ended)}")
            if c.abort_criteria:
                event(f"aborted by a criterion: {c.pause_reason.startswith('abort criterion')}")
            if any(c.wave_start_after_s):
                event(f"timed waves, waves started: {c.current_wave + 1 - c.awaiting_start}")
        self.store.close()
        if self.tmp is not None:
            self.tmp.cleanup()

    @initialize(config=configs, start=st.sampled_from([True] * 7 + [False]))
    def create(self, config: Config, start: bool) -> None:
        self.driver = Driver(self.store, config)
        if start:
            self.do(Op("start"))

    def do(self, op: Op) -> Step:
        assert self.driver is not None
        step = self.driver.apply(op)
        self.steps.append(step)
        return step

    # Operator and clock
    @rule(op=operator_ops)
    def operator(self, op: Op) -> None:
        self.do(op)

    @rule(op=clock_ops)
    def clock(self, op: Op) -> None:
        self.do(op)

    # Vehicles
    @rule(op=check_in_ops)
    def check_in(self, op: Op) -> None:
        self.do(op)

    @rule(op=report_ops)
    def report(self, op: Op) -> None:
        self.do(op)

    @rule(delivery=deliveries)
    def deliver(self, delivery: Delivery) -> None:
        delivery.run(self.do)

    @rule(delivery=deliveries.map(lambda d: replace(d, outcome=None, via=d.via or (S.INSTALLING,))))
    def start_work(self, delivery: Delivery) -> None:
        """Vehicles take their deployment and stay busy with it (for abort, pause, tick)."""
        delivery.run(self.do)

    @precondition(lambda self: self.driver is not None and self.driver.applied)
    @rule(op=resend_ops)
    def resend(self, op: Op) -> None:
        self.do(op)

    # Invariants
    @invariant()
    def every_step_followed_the_rules(self) -> None:
        assert self.driver is not None or not self.steps
        for step in self.steps:
            check_step(step, self.driver.config)
        self.steps.clear()

    @invariant()
    def state_is_consistent(self) -> None:
        if self.driver is not None:
            check_state(self.driver, strict_completion=self.strict_completion)


class SqliteCampaignMachine(CampaignMachine):
    store_kind = "sqlite"


class StrictCompletionMachine(CampaignMachine):
    """Invariant 7 in full, on fleets where a wave can pass with stragglers left."""

    strict_completion = True

    @initialize(
        config=st.builds(
            Config,
            fleet=st.integers(3, 5),
            waves=st.lists(
                st.integers(1, 3).map(lambda n: WaveSpec(count=n)), min_size=1, max_size=3
            ).map(tuple),
            success=st.sampled_from([0.0, 25.0, 50.0, 75.0]),
            error=st.just(100.0),
            max_retries=st.integers(0, 2),
            timeout=st.sampled_from([0, 30, 60]),
        ),
        start=st.just(True),
    )
    def create(self, config: Config, start: bool) -> None:
        super().create(config, start)

    @rule()
    def serve_current_wave(self) -> None:
        """Every vehicle of the current wave with work left runs it to success."""
        assert self.driver is not None
        snap = self.driver.last
        wave = snap.campaign.current_wave
        todo = [x for x in snap.actions if x.wave == wave and x.state not in TERMINAL_ACTION_STATES]
        Delivery(tuple(vehicle_number(x.vin) for x in todo), S.SUCCEEDED, (), 0).run(self.do)


BASE = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def test_campaign_rules_hold_over_memory_store():
    run_state_machine_as_test(
        CampaignMachine, settings=settings(BASE, max_examples=200, stateful_step_count=50)
    )


def test_campaign_rules_hold_over_sqlite_store():
    run_state_machine_as_test(
        SqliteCampaignMachine, settings=settings(BASE, max_examples=30, stateful_step_count=40)
    )


# ----------------------------------------------------------- side by side
@settings(BASE, max_examples=40)
@given(config=configs, start=st.sampled_from([True, True, True, False]), ops=op_lists)
def test_memory_and_sqlite_stores_agree(config: Config, start: bool, ops: list[Op | Delivery]):
    """The same operations over both stores: same results, errors and states at every step."""
    with tempfile.TemporaryDirectory(prefix="campaign-props-") as tmp:
        memory, sql = MemoryStore(), SqlStore(sqlite_url(tmp))
        try:
            left, right = Driver(memory, config), Driver(sql, config)
            assert left.last == right.last

            def both(op: Op) -> Step:
                one, two = left.apply(op), right.apply(op)
                check_step(one, config)
                assert type(one.error) is type(two.error), (op, one.error, two.error)
                assert str(one.error) == str(two.error), op
                assert one.result == two.result, op
                assert one.after == two.after, op
                return one

            if start:
                both(Op("start"))
            for op in ops:
                if isinstance(op, Delivery):
                    op.run(both)
                elif op.kind != "resend" or left.applied:
                    both(op)
            check_state(left)
            check_state(right)
        finally:
            memory.close()
            sql.close()


# ---------------------------------------------------------- completion rule
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_completed_campaign_leaves_no_action_unfinished(kind: str, tmp_path):
    config = Config(
        fleet=3, waves=(WaveSpec(count=2),), success=50.0, error=100.0, max_retries=0, timeout=0
    )
    store = MemoryStore() if kind == "memory" else SqlStore(sqlite_url(tmp_path))
    try:
        driver = Driver(store, config)  # wave 0: vehicles 0 and 1; wave 1: vehicle 2

        def run(op: Op) -> Step:
            step = driver.apply(op)
            check_step(step, config)
            return step

        run(Op("start"))
        for n in (0, 2):  # 1 of 2 succeeded passes wave 0 at 50 %; wave 1 then ends
            (offer,) = run(Op("check_in", n)).result
            run(Op("report", offer.action.key, state=S.SUCCEEDED, target="key"))
        # Vehicle 1, a straggler of wave 0, still gets its update: no completion yet.
        assert driver.last.campaign.state is C.RUNNING
        (offer,) = run(Op("check_in", 1)).result
        run(Op("report", offer.action.key, state=S.SUCCEEDED, target="key"))
        assert driver.last.campaign.state is C.COMPLETED
        check_state(driver, strict_completion=True)
    finally:
        store.close()


def test_completed_campaign_leaves_no_action_unfinished_random():
    """Invariant 7 in full (every action terminal once COMPLETED) over random sequences."""
    run_state_machine_as_test(
        StrictCompletionMachine,
        settings=settings(
            BASE,
            max_examples=200,
            stateful_step_count=40,
            derandomize=True,
            phases=[Phase.generate],
        ),
    )


# -------------------------------------------------------------- rollout rate
@settings(BASE, max_examples=150)
@given(
    base=st.integers(1, 400),
    size=st.integers(1, 60),
    ticks=st.lists(st.sampled_from([0.0, 0.1, 1.0, 2.5, 7.0, 10.0, 59.9, 60.0]), max_size=25),
    pause_at=st.integers(-1, 25),
)
def test_rate_releases_floor_of_rate_times_running_time(base, size, ticks, pause_at):
    """At a constant rate the released count is floor(rate * running time / 60), capped.

    Ticks come at arbitrary times; an operator pause in between gives no credit;
    releases go lowest key first; never more than the wave holds.
    """
    store = MemoryStore()
    clock = FakeClock()
    engine = CampaignEngine(store, clock)
    (rel,) = seed(store, [vehicle(i) for i in range(size)])
    campaign = engine.create(
        CampaignSpec(name="rate", release_id=rel.release_id, rollout_rate=RolloutRate(base))
    )
    engine.start(campaign.campaign_id)
    keys = [a.key for a in store.run(lambda tx: tx.list_actions(campaign.key, limit=1000))]
    running_s = 0.0
    exact = True  # whether the floor is exact so far (no credit dropped at the cap)
    for index, step in enumerate(ticks):
        if index == pause_at:
            engine.pause(campaign.campaign_id)
            clock.advance(step)
            engine.tick()
            engine.resume(campaign.campaign_id)
            continue
        clock.advance(step)
        running_s += step
        engine.tick()
        status = engine.status(campaign.campaign_id)
        released = status.campaign.released
        owed = math.floor(base * running_s / 60.0 + 1e-9)
        if exact:
            assert released == min(owed, size), (released, owed, size)
        exact = exact and owed < size
        assert released <= size
        pending = [
            a.key
            for a in store.run(
                lambda tx: tx.list_actions(campaign.key, states=(S.PENDING,), limit=1000)
            )
        ]
        assert pending == keys[:released]
        assert status.totals().get(S.SCHEDULED, 0) == size - released
