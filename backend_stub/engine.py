"""The campaign engine: staged rollouts as pure logic over an injected store and clock.

Rules (after hawkBit's rollouts, Mender's phased deployments and AWS IoT Jobs'
rollout rates and abort criteria):

* A campaign snapshots its targets at creation and splits them into waves
  (counts or percentages; the vehicles left over form one last wave).
* Starting a campaign records ``started_at`` and starts wave 0; a started
  wave's actions become pending, and a pending action is offered to its
  vehicle at the next check-in and becomes notified.
* Timed waves: a wave with ``start_after_s`` may not start before
  ``started_at + start_after_s``. A wave starts when its predecessor has
  passed (success threshold; 0 means no gate) and its time has come, whichever
  happens last; since time passing is not a report, ``tick`` starts the waves
  whose time has come. Wave 0 with a delay leaves the campaign running with
  nothing released until then (the ``wave_started`` event comes at that time).
  The leftover wave has no time gate.
* Rollout rate: with ``rollout_rate`` set, starting a wave releases nothing at
  once; ``tick`` moves the started waves' scheduled actions to pending, lowest
  key first, ``floor(credit + rate * elapsed / 60)`` at a time (the fraction is
  carried; the rate's clock restarts when a wave starts, and credit does not
  pile up while nothing is left to release, nor while the campaign is
  paused). Each ``increase_every`` vehicles notified (or
  succeeded, per ``increase_on``) since the last increase multiply the rate by
  ``increment_factor``, up to ``maximum_per_minute``.
* A wave whose succeeded share reaches the success threshold starts the next
  wave (when its time has come); once the last wave has passed, the campaign
  completes when every action of every wave has ended (earlier waves may still
  have stragglers).
* Abort criteria: after every final outcome (no retry left) and on ``tick``,
  while the campaign runs or is paused, each criterion compares the failures
  it names with the vehicles executed over all waves (succeeded, failed or
  rolled back); once at least ``min_executed`` have executed and the failed
  share reaches ``threshold_pct``, the campaign is aborted as ``abort`` does,
  with the reason recorded. Criteria are checked before the wave thresholds.
* A wave whose failed share (failed or rolled back, with no retry left)
  reaches the error threshold pauses the campaign, with the reason recorded.
  So does a wave that ended below its success threshold.
* Resuming after an automatic pause accepts the current wave's failures: it
  is no longer checked against the error threshold, and if it has ended it
  counts as passed. Resuming after an operator's pause changes no rule.
* Aborting cancels every action the vehicle has not started installing.

Every public method is one store transaction. The engine never reads the wall
clock or sleeps: ``clock`` is injected, so SimPy drives the same code in
virtual time.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from backend_stub.errors import (
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
    MAX_RATE_PER_MINUTE,
    RATE_TRIGGERS,
    REPORTABLE_STATES,
    TERMINAL_ACTION_STATES,
    UNFINISHED_STATES,
    AbortCriterion,
    Action,
    ActionState,
    Campaign,
    CampaignEvent,
    CampaignSpec,
    CampaignState,
    DeploymentReport,
    EcuInfo,
    Release,
    RolloutRate,
    Vehicle,
    WaveSpec,
    lookup_id,
    maker,
    parse_id,
    record,
)
from backend_stub.store.base import Store, Tx

log = logging.getLogger(__name__)

Clock = Callable[[], float]
MAX_WAVES = 100
MAX_START_AFTER_S = 365 * 86_400.0
MAX_INCREASE_EVERY = 10_000_000
MAX_ABORT_CRITERIA = 10
# Campaign states in which the abort criteria apply.
_ABORTABLE = frozenset({CampaignState.RUNNING, CampaignState.PAUSED})
# States of an action its vehicle has not been told about (or never will be).
_UNNOTIFIED = frozenset({ActionState.SCHEDULED, ActionState.PENDING, ActionState.CANCELED})
_FAILURE_WORDS = {"failed": "failed", "rolled_back": "rolled back", "any": "failed or rolled back"}
# Members the check-in and report paths compare with, bound once: in this
# Python every attribute of an Enum class is looked up through the metaclass's
# ``__getattr__`` hook, several times the cost of reading a global.
_PENDING = ActionState.PENDING
_NOTIFIED = ActionState.NOTIFIED
_CANCELED = ActionState.CANCELED
_SUCCEEDED = ActionState.SUCCEEDED
_RUNNING = CampaignState.RUNNING
_ABORTED = CampaignState.ABORTED


@dataclass(frozen=True)
class CampaignStatus:
    """A campaign with its per-wave action counts."""

    campaign: Campaign
    wave_counts: dict[int, dict[ActionState, int]]

    def totals(self) -> dict[ActionState, int]:
        """Return action counts over all waves."""
        totals: dict[ActionState, int] = {}
        for counts in self.wave_counts.values():
            for state, number in counts.items():
                totals[state] = totals.get(state, 0) + number
        return totals


@record
class Offer:
    """A deployment handed to a vehicle at check-in."""

    action: Action
    campaign: Campaign


@record
class ReportOutcome:
    """What a deployment report did: the action and its campaign as they stand after it."""

    action: Action
    duplicate: bool
    campaign: Campaign


# Made once or more per vehicle report or check-in (key, campaign_key, at,
# kind, vin, action_state, campaign_state, detail; action, duplicate, campaign;
# action, campaign).
_new_event: Callable[
    [int, int, float, str, str, ActionState | None, CampaignState, str], CampaignEvent
] = maker(CampaignEvent)
_new_outcome: Callable[[Action, bool, Campaign], ReportOutcome] = maker(ReportOutcome)
_new_offer: Callable[[Action, Campaign], Offer] = maker(Offer)


def split_waves(total: int, waves: Sequence[WaveSpec]) -> list[int]:
    """Return the wave sizes for ``total`` targets; leftovers form one last wave.

    Percentages are of ``total`` and are rounded up, so a small wave is never
    empty; a wave larger than what remains takes the rest.
    """
    sizes: list[int] = []
    remaining = total
    for spec in waves:
        if remaining == 0:
            break
        if spec.count is not None:
            wanted = spec.count
        else:
            assert spec.percent is not None
            wanted = math.ceil(total * spec.percent / 100.0 - 1e-9)
        size = max(1, min(wanted, remaining))
        sizes.append(size)
        remaining -= size
    if remaining:
        sizes.append(remaining)
    return sizes


def wave_start_after(spec: CampaignSpec, wave_count: int) -> tuple[float, ...]:
    """Return each wave's time gate in seconds (the leftover wave has none)."""
    return tuple(
        float(spec.waves[index].start_after_s or 0.0) if index < len(spec.waves) else 0.0
        for index in range(wave_count)
    )


def check_spec(spec: CampaignSpec) -> None:
    """Raise :class:`InvalidArgument` for a campaign request that cannot be right."""
    if not spec.name.strip():
        raise InvalidArgument("name is required")
    if len(spec.name) > 200:
        raise InvalidArgument("name is longer than 200 characters")
    for label, value in (
        ("success_threshold_pct", spec.success_threshold_pct),
        ("error_threshold_pct", spec.error_threshold_pct),
    ):
        if not math.isfinite(value) or not 0.0 <= value <= 100.0:
            raise InvalidArgument(f"{label} must be between 0 and 100, got {value}")
    if len(spec.waves) > MAX_WAVES:
        raise InvalidArgument(f"at most {MAX_WAVES} waves, got {len(spec.waves)}")
    for index, wave in enumerate(spec.waves):
        if (wave.count is None) == (wave.percent is None):
            raise InvalidArgument(f"waves[{index}] needs exactly one of count and percent")
        if wave.count is not None and wave.count <= 0:
            raise InvalidArgument(f"waves[{index}].count must be positive")
        if wave.percent is not None and (
            not math.isfinite(wave.percent) or not 0.0 < wave.percent <= 100.0
        ):
            raise InvalidArgument(f"waves[{index}].percent must be in (0, 100]")
        after = wave.start_after_s
        if after is not None and (
            not math.isfinite(after) or not 0.0 <= after <= MAX_START_AFTER_S
        ):
            raise InvalidArgument(
                f"waves[{index}].start_after_s must be between 0 and {MAX_START_AFTER_S:.0f} s "
                f"(365 days), got {after}"
            )
    if spec.max_retries > 100:
        raise InvalidArgument("max_retries must be at most 100")
    if spec.rollout_rate is not None:
        check_rate(spec.rollout_rate)
    if len(spec.abort_criteria) > MAX_ABORT_CRITERIA:
        raise InvalidArgument(
            f"at most {MAX_ABORT_CRITERIA} abort criteria, got {len(spec.abort_criteria)}"
        )
    for index, criterion in enumerate(spec.abort_criteria):
        check_criterion(criterion, f"abort_criteria[{index}]")
    spec.filter.check()


def check_rate(rate: RolloutRate) -> None:
    """Raise :class:`InvalidArgument` for a rollout rate out of bounds."""
    label = "rollout_rate"
    if not 1 <= rate.base_per_minute <= MAX_RATE_PER_MINUTE:
        raise InvalidArgument(
            f"{label}.base_per_minute must be between 1 and {MAX_RATE_PER_MINUTE}, "
            f"got {rate.base_per_minute}"
        )
    factor = rate.increment_factor
    if not math.isfinite(factor) or not 1.0 <= factor <= 5.0:
        raise InvalidArgument(f"{label}.increment_factor must be between 1 and 5, got {factor}")
    if not 0 <= rate.increase_every <= MAX_INCREASE_EVERY:
        raise InvalidArgument(
            f"{label}.increase_every must be between 0 (never) and {MAX_INCREASE_EVERY}, "
            f"got {rate.increase_every}"
        )
    if rate.increase_on not in RATE_TRIGGERS:
        raise InvalidArgument(
            f"{label}.increase_on must be one of {', '.join(RATE_TRIGGERS)}, "
            f"got {rate.increase_on!r}"
        )
    maximum = rate.maximum_per_minute
    if maximum is not None and not rate.base_per_minute <= maximum <= MAX_RATE_PER_MINUTE:
        raise InvalidArgument(
            f"{label}.maximum_per_minute must be between base_per_minute "
            f"({rate.base_per_minute}) and {MAX_RATE_PER_MINUTE}, got {maximum}"
        )


def check_criterion(criterion: AbortCriterion, label: str) -> None:
    """Raise :class:`InvalidArgument` for an abort criterion out of bounds."""
    if criterion.failure not in ABORT_FAILURES:
        raise InvalidArgument(
            f"{label}.failure must be one of {', '.join(ABORT_FAILURES)}, got {criterion.failure!r}"
        )
    threshold = criterion.threshold_pct
    if not math.isfinite(threshold) or not 0.0 < threshold <= 100.0:
        raise InvalidArgument(f"{label}.threshold_pct must be in (0, 100], got {threshold}")
    if criterion.min_executed < 1:
        raise InvalidArgument(
            f"{label}.min_executed must be at least 1, got {criterion.min_executed}"
        )


def compatible(vehicle: Vehicle, release: Release) -> str:
    """Return why ``vehicle`` cannot take ``release`` (empty if it can)."""
    ecus = {ecu.name: ecu for ecu in vehicle.ecus}
    for image in release.images:
        ecu = ecus.get(image.ecu)
        if ecu is None:
            return f"has no ECU {image.ecu!r}"
        if ecu.hardware_id not in image.compatible_hardware_ids:
            return f"ECU {image.ecu!r} has hardware {ecu.hardware_id!r}"
    return ""


class CampaignEngine:
    """Campaign and deployment rules over a :class:`Store`, with an injected clock."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    # ----------------------------------------------------------------- operator
    def create(self, spec: CampaignSpec) -> Campaign:
        """Create a draft campaign targeting the vehicles that match its filter."""
        check_spec(spec)
        release_key = parse_id("rel", spec.release_id, "release_id")

        def work(tx: Tx) -> Campaign:
            if spec.request_id:
                earlier = tx.campaign_by_request(spec.request_id)
                if earlier is not None:
                    return earlier
            release = tx.get_release(release_key)
            if release is None:
                raise NotFound(f"release {spec.release_id} does not exist")
            matched = tx.find_vehicles(spec.filter)
            if spec.force:
                targets = [v.vin for v in matched]
            else:
                # Vehicles of one build often share their inventory object: judge
                # each inventory once (held here, so that its id is not reused).
                verdicts: dict[int, tuple[tuple[EcuInfo, ...], bool]] = {}
                targets = []
                for v in matched:
                    known = verdicts.get(id(v.ecus))
                    if known is None:
                        known = verdicts[id(v.ecus)] = (v.ecus, not compatible(v, release))
                    if known[1]:
                        targets.append(v.vin)
            if not targets:
                why = (
                    "no registered vehicle matches the filter"
                    if not matched
                    else f"none of the {len(matched)} matching vehicles has compatible hardware"
                )
                raise FailedPrecondition(f"campaign would target nothing: {why}")
            sizes = split_waves(len(targets), spec.waves)
            now = self.clock()
            waves = [index for index, size in enumerate(sizes) for _ in range(size)]
            rate = spec.rollout_rate
            if rate is not None:
                # The campaign keeps the rate as it will apply it.
                rate = RolloutRate(
                    base_per_minute=rate.base_per_minute,
                    increment_factor=float(rate.increment_factor),
                    increase_every=rate.increase_every,
                    increase_on=rate.increase_on,
                    maximum_per_minute=rate.maximum_per_minute or MAX_RATE_PER_MINUTE,
                )
            campaign = tx.add_campaign(
                Campaign(
                    key=0,
                    name=spec.name,
                    release_key=release.key,
                    state=CampaignState.DRAFT,
                    filter=spec.filter,
                    wave_sizes=tuple(sizes),
                    success_threshold_pct=spec.success_threshold_pct,
                    error_threshold_pct=spec.error_threshold_pct,
                    max_retries=spec.max_retries,
                    action_timeout_s=spec.action_timeout_s,
                    target_count=len(targets),
                    excluded_count=len(matched) - len(targets),
                    created_at=now,
                    updated_at=now,
                    request_id=spec.request_id,
                    wave_start_after_s=wave_start_after(spec, len(sizes)),
                    rollout_rate=rate,
                    abort_criteria=tuple(
                        AbortCriterion(c.failure, float(c.threshold_pct), c.min_executed)
                        for c in spec.abort_criteria
                    ),
                    rate_per_minute=float(rate.base_per_minute) if rate is not None else 0.0,
                ),
                list(zip(targets, waves, strict=True)),
            )
            self._event(
                tx,
                campaign,
                "created",
                detail=f"{len(targets)} vehicles in {len(sizes)} wave(s) {list(sizes)}"
                + (f"; {campaign.excluded_count} excluded" if campaign.excluded_count else ""),
            )
            return campaign

        return self.store.run(work)

    def start(self, campaign_id: str) -> Campaign:
        """Start a draft campaign: its first wave starts (now, or at its start time)."""

        def work(tx: Tx) -> Campaign:
            campaign = self._campaign(tx, campaign_id, lock=True)
            self._check_transition(campaign, CampaignState.RUNNING, "start")
            if campaign.state is not CampaignState.DRAFT:
                raise FailedPrecondition(
                    f"campaign {campaign_id} is {campaign.state}; only a draft can be started "
                    "(use resume for a paused one)"
                )
            now = self.clock()
            changes: dict[str, object] = {"started_at": now, "awaiting_start": True}
            if campaign.rollout_rate is not None:
                changes["released_at"] = now
            campaign = campaign.with_changes(**changes)
            detail = ""
            if not self._wave_due(campaign, 0):
                detail = f"wave 0 starts after {campaign.wave_start_after_s[0]:g} s"
            campaign = self._set_state(tx, campaign, CampaignState.RUNNING, "started", detail)
            # Starts wave 0 if its time has come (and any later wave that may follow).
            return self._evaluate(tx, campaign)

        return self.store.run(work)

    def pause(self, campaign_id: str, reason: str = "") -> Campaign:
        """Pause a running campaign: no new vehicle is notified until it resumes."""

        def work(tx: Tx) -> Campaign:
            campaign = self._campaign(tx, campaign_id, lock=True)
            self._check_transition(campaign, CampaignState.PAUSED, "pause")
            why = reason.strip() or "paused by operator"
            return self._set_state(tx, campaign, CampaignState.PAUSED, "paused", why, reason=why)

        return self.store.run(work)

    def resume(self, campaign_id: str) -> Campaign:
        """Resume a paused campaign, accepting its current wave's failures."""

        def work(tx: Tx) -> Campaign:
            campaign = self._campaign(tx, campaign_id, lock=True)
            if campaign.state is not CampaignState.PAUSED:
                raise FailedPrecondition(
                    f"campaign {campaign_id} is {campaign.state}; only a paused one can be resumed"
                )
            if campaign.auto_paused:
                accepted = tuple(sorted({*campaign.accepted_waves, campaign.current_wave}))
                campaign = campaign.with_changes(accepted_waves=accepted, auto_paused=False)
            if campaign.rollout_rate is not None:
                # No release credit for the time spent paused.
                campaign = campaign.with_changes(released_at=self.clock())
            campaign = self._set_state(tx, campaign, CampaignState.RUNNING, "resumed", reason="")
            return self._evaluate(tx, campaign)

        return self.store.run(work)

    def abort(self, campaign_id: str, reason: str = "") -> Campaign:
        """Abort a campaign: actions not yet installing are canceled."""

        def work(tx: Tx) -> Campaign:
            campaign = self._campaign(tx, campaign_id, lock=True)
            self._check_transition(campaign, CampaignState.ABORTED, "abort")
            return self._abort(tx, campaign, reason.strip() or "aborted by operator")

        return self.store.run(work)

    def status(self, campaign_id: str) -> CampaignStatus:
        """Return a campaign with its per-wave counts."""

        def work(tx: Tx) -> CampaignStatus:
            campaign = self._campaign(tx, campaign_id)
            return CampaignStatus(campaign, tx.wave_counts(campaign.key))

        return self.store.run(work, write=False)

    def tick(self) -> int:
        """Apply the rules that time drives; return how many actions timed out.

        Fails vehicle-owned actions that stopped reporting, checks the abort
        criteria, starts waves whose time has come and releases actions at the
        rollout rate.
        """

        def work(tx: Tx) -> int:
            expired = 0
            now = self.clock()
            for listed in tx.list_campaigns(
                after_key=0,
                limit=1_000_000,
                states=(CampaignState.RUNNING, CampaignState.PAUSED, CampaignState.ABORTED),
            ):
                campaign: Campaign | None = None  # the campaign once locked
                if listed.action_timeout_s > 0:
                    stale = tx.stale_actions(
                        listed.key, updated_before=now - listed.action_timeout_s, limit=10_000
                    )
                    if stale:
                        campaign = self._locked(tx, listed.key)
                        for action in stale:
                            # An abort by an earlier timeout of this loop may have
                            # canceled it meanwhile, or the vehicle reported before
                            # the lock was taken.
                            current = tx.get_action(action.key)
                            if current != action:
                                continue
                            reason = f"no report for {campaign.action_timeout_s} s"
                            campaign = self._finish(
                                tx, campaign, action, ActionState.FAILED, "timeout", reason
                            )
                            expired += 1
                if self._timed(campaign or listed, now):
                    campaign = campaign or self._locked(tx, listed.key)
                    self._tick_rules(tx, campaign, now)
            return expired

        return self.store.run(work)

    # ------------------------------------------------------------------ vehicle
    def check_in(
        self, vin: str, *, state: str | None = None, ecus: Sequence[EcuInfo] | None = None
    ) -> list[Offer]:
        """Record a vehicle's check-in; return the deployments it should act on.

        A vehicle is offered one deployment at a time: the one it is working
        on, or else the oldest pending one of a running campaign, which
        becomes notified.
        """
        registered, busy = self.store.touch(vin, at=self.clock(), state=state, ecus=ecus)
        if not registered:
            raise NotFound(f"vehicle {vin} is not registered; register it first")
        if not busy:
            return []

        def work(tx: Tx) -> list[Offer]:
            now = self.clock()
            actions = tx.actions_of_vehicle(vin, UNFINISHED_STATES)
            if not actions:
                return []
            campaigns: dict[int, Campaign] = {}
            for action in actions:
                if action.campaign_key not in campaigns:
                    found = tx.get_campaign(action.campaign_key)
                    assert found is not None
                    campaigns[action.campaign_key] = found
            # A loop rather than a comprehension, which is a call of its own
            # in this Python: every check-in with work comes here.
            active = []
            for action in actions:
                if action.state in ACTIVE_ACTION_STATES:
                    active.append(_new_offer(action, campaigns[action.campaign_key]))
            if active:
                return active
            for action in actions:
                campaign = campaigns[action.campaign_key]
                if campaign.state is not _RUNNING:
                    continue
                notified = action.advanced(
                    _NOTIFIED,
                    now,
                    action.attempts + 1,
                    0,
                    action.failure_step,
                    action.failure_reason,
                )
                if tx.update_action(notified, expected=_PENDING):
                    # ``_event``, written out: every attempt starts here.
                    tx.add_event(
                        _new_event(
                            0,
                            campaign.key,
                            now,
                            "action",
                            vin,
                            _NOTIFIED,
                            campaign.state,
                            f"attempt {notified.attempts}",
                        )
                    )
                    return [_new_offer(notified, campaign)]
            return []

        return self.store.run(work)

    def deployment(self, vin: str, deployment_id: str) -> tuple[Action, Campaign]:
        """Return one of the vehicle's own deployments (``PermissionDenied`` for another's)."""
        key = lookup_id("dep", deployment_id, "deployment_id")

        def work(tx: Tx) -> tuple[Action, Campaign]:
            action = tx.get_action(key)
            if action is None:
                raise NotFound(f"deployment {deployment_id} does not exist")
            if action.vin != vin:
                raise PermissionDenied(f"deployment {deployment_id} belongs to another vehicle")
            campaign = tx.get_campaign(action.campaign_key)
            assert campaign is not None
            return action, campaign

        return self.store.run(work, write=False)

    def report(self, report: DeploymentReport) -> ReportOutcome:
        """Apply a vehicle's report on its deployment, exactly once per ``report_id``."""
        if report.state not in REPORTABLE_STATES:
            allowed = ", ".join(sorted(s.value for s in REPORTABLE_STATES))
            raise InvalidArgument(f"a vehicle may report {allowed}; not {report.state.value}")
        if not report.report_id or len(report.report_id) > 100:
            raise InvalidArgument("report_id is required (at most 100 characters)")
        if not 0 <= report.progress_pct <= 100:
            raise InvalidArgument("progress_pct must be between 0 and 100")
        key = lookup_id("dep", report.deployment_id, "deployment_id")
        # A bound method and its arguments rather than a closure: a closure
        # makes a cell per variable it shares, and every vehicle report runs
        # this transaction.
        return self.store.run(functools.partial(self._apply_report, report, key))

    def _apply_report(self, report: DeploymentReport, key: int, tx: Tx) -> ReportOutcome:
        """Apply ``report`` to the action with ``key`` in ``tx``: :meth:`report`'s transaction."""
        state = report.state
        # What the vehicle said beyond the state goes to the event log.
        said = bool(report.detail or report.ecu_progress)
        action = tx.get_action(key)
        if action is None:
            raise NotFound(f"deployment {report.deployment_id} does not exist")
        if action.vin != report.vin:
            raise PermissionDenied(f"deployment {report.deployment_id} belongs to another vehicle")
        # Serialise with the campaign's other writers before judging the
        # action, so that wave decisions see every committed outcome.
        # (``_locked``, inlined: every vehicle report takes this path.)
        campaign = tx.get_campaign(action.campaign_key, lock=True)
        if not tx.serialised:
            action = tx.get_action(key)
        assert campaign is not None and action is not None
        now = self.clock()
        if not tx.claim_report(report.report_id, at=now):
            return _new_outcome(action, True, campaign)
        if report.inventory:
            tx.touch_vehicle(report.vin, at=now, state=None, ecus=report.inventory)
        current = action.state
        if current is _CANCELED:
            raise FailedPrecondition(
                f"deployment {report.deployment_id} was canceled: stop working on it"
            )
        if state is current and current not in TERMINAL_ACTION_STATES:
            progressed = action.advanced(
                current,
                now,
                action.attempts,
                report.progress_pct,
                action.failure_step,
                action.failure_reason,
            )
            tx.update_action(progressed, expected=current)
            if said:
                self._report_event(tx, campaign, report)
            return _new_outcome(progressed, False, campaign)
        if state not in ACTION_TRANSITIONS[current]:
            raise FailedPrecondition(
                f"deployment {report.deployment_id} is {current.value}; "
                f"it cannot become {state.value}"
            )
        final: Action | None
        if state in TERMINAL_ACTION_STATES:
            campaign = self._finish(
                tx,
                campaign,
                action,
                state,
                report.failure_step,
                report.failure_reason,
                progress_pct=report.progress_pct,
            )
            final = None  # ended, or made pending again for a retry: read it back
        else:
            moved = action.advanced(
                state,
                now,
                action.attempts,
                report.progress_pct,
                action.failure_step,
                action.failure_reason,
            )
            final = moved if tx.update_action(moved, expected=current) else None
            # ``_event``, written out: every report that moves an action logs it.
            tx.add_event(
                _new_event(0, campaign.key, now, "action", action.vin, state, campaign.state, "")
            )
        if said:
            self._report_event(tx, campaign, report)
        if final is None:
            final = tx.get_action(key)
            assert final is not None
        return _new_outcome(final, False, campaign)

    # ---------------------------------------------------------------- internals
    def _campaign(self, tx: Tx, campaign_id: str, *, lock: bool = False) -> Campaign:
        key = lookup_id("cmp", campaign_id, "campaign_id")
        campaign = tx.get_campaign(key, lock=lock)
        if campaign is None:
            raise NotFound(f"campaign {campaign_id} does not exist")
        return campaign

    def _locked(self, tx: Tx, key: int) -> Campaign:
        campaign = tx.get_campaign(key, lock=True)
        assert campaign is not None
        return campaign

    @staticmethod
    def _check_transition(campaign: Campaign, target: CampaignState, verb: str) -> None:
        if target not in CAMPAIGN_TRANSITIONS[campaign.state]:
            raise FailedPrecondition(
                f"campaign {campaign.campaign_id} is {campaign.state.value}; it cannot {verb}"
            )

    def _set_state(
        self,
        tx: Tx,
        campaign: Campaign,
        state: CampaignState,
        kind: str,
        detail: str = "",
        *,
        reason: str | None = None,
    ) -> Campaign:
        assert state in CAMPAIGN_TRANSITIONS[campaign.state], (campaign.state, state)
        changes: dict[str, object] = {"state": state, "updated_at": self.clock()}
        if reason is not None:
            changes["pause_reason"] = reason
        campaign = campaign.with_changes(**changes)
        tx.update_campaign(campaign)
        self._event(tx, campaign, kind, detail=detail)
        log.info("campaign %s %s %s", campaign.campaign_id, kind, detail)
        return campaign

    def _abort(self, tx: Tx, campaign: Campaign, why: str) -> Campaign:
        """Cancel every action not yet installing and end the campaign as aborted."""
        canceled = tx.move_actions(
            campaign.key,
            wave=None,
            states=CANCELABLE_STATES,
            to=ActionState.CANCELED,
            at=self.clock(),
        )
        return self._set_state(
            tx,
            campaign,
            CampaignState.ABORTED,
            "aborted",
            f"{why}; {canceled} action(s) canceled",
            reason=why,
        )

    def _start_wave(self, tx: Tx, campaign: Campaign, wave: int) -> Campaign:
        now = self.clock()
        if campaign.rollout_rate is None:
            moved = tx.move_actions(
                campaign.key,
                wave=wave,
                states=(ActionState.SCHEDULED,),
                to=ActionState.PENDING,
                at=now,
            )
            detail = f"wave {wave}: {moved} vehicle(s)"
        else:
            # ``tick`` releases its vehicles at the rollout rate, counting from
            # now: no credit for the time before the wave started.
            detail = (
                f"wave {wave}: {campaign.wave_sizes[wave]} vehicle(s), released at "
                f"{campaign.rate_per_minute:g}/min"
            )
            campaign = campaign.with_changes(released_at=now)
        campaign = campaign.with_changes(current_wave=wave, awaiting_start=False, updated_at=now)
        tx.update_campaign(campaign)
        self._event(tx, campaign, "wave_started", detail=detail)
        return campaign

    def _wave_due(self, campaign: Campaign, wave: int) -> bool:
        """Whether ``wave``'s start time (if it has one) has come."""
        gates = campaign.wave_start_after_s
        if wave >= len(gates) or gates[wave] <= 0.0:
            return True
        started = campaign.started_at
        return started is not None and self.clock() >= started + gates[wave]

    @staticmethod
    def _gate_opened(campaign: Campaign, now: float) -> bool:
        """Whether a running campaign waits for a wave whose start time has come."""
        if campaign.awaiting_start:
            return True  # ``_evaluate`` checks wave 0's time itself
        following = campaign.current_wave + 1
        gates = campaign.wave_start_after_s
        return (
            following < len(gates)
            and gates[following] > 0.0
            and campaign.started_at is not None
            and now >= campaign.started_at + gates[following]
        )

    def _timed(self, campaign: Campaign, now: float) -> bool:
        """Whether ``tick`` has work for ``campaign`` beyond timeouts."""
        if campaign.state not in _ABORTABLE:
            return False
        if campaign.abort_criteria:
            return True
        return campaign.state is CampaignState.RUNNING and (
            campaign.rollout_rate is not None or self._gate_opened(campaign, now)
        )

    def _tick_rules(self, tx: Tx, campaign: Campaign, now: float) -> None:
        """Abort criteria, timed wave starts and rate releases of one (locked) campaign."""
        if campaign.abort_criteria and campaign.state in _ABORTABLE:
            counts = tx.wave_counts(campaign.key)
            if self._check_abort(tx, campaign, counts) is not None:
                return
        if campaign.state is not CampaignState.RUNNING:
            return
        if self._gate_opened(campaign, now):
            campaign = self._evaluate(tx, campaign)
        if campaign.rollout_rate is not None and campaign.state is CampaignState.RUNNING:
            self._release(tx, campaign, now)

    def _release(self, tx: Tx, campaign: Campaign, now: float) -> Campaign:
        """Move started waves' scheduled actions to pending at the rollout rate."""
        rate = campaign.rollout_rate
        assert rate is not None
        counts = tx.wave_counts(campaign.key)
        started = 0 if campaign.awaiting_start else campaign.current_wave + 1
        waiting = [
            (wave, scheduled)
            for wave in range(started)
            if (scheduled := counts.get(wave, {}).get(ActionState.SCHEDULED, 0))
        ]
        available = sum(scheduled for _, scheduled in waiting)
        last = campaign.released_at if campaign.released_at is not None else now
        owed = campaign.release_credit + campaign.rate_per_minute * max(0.0, now - last) / 60.0
        wanted = math.floor(owed + 1e-9)
        if wanted >= available:
            # Nothing more is waiting: credit must not pile up for the next wave.
            release, credit = available, 0.0
        else:
            release, credit = wanted, max(0.0, owed - wanted)
        moved = 0
        for wave, scheduled in waiting:
            if moved >= release:
                break
            moved += tx.move_actions(
                campaign.key,
                wave=wave,
                states=(ActionState.SCHEDULED,),
                to=ActionState.PENDING,
                at=now,
                limit=min(scheduled, release - moved),
            )
        changes: dict[str, object] = {
            "released": campaign.released + moved,
            "release_credit": credit,
            "released_at": now,
        }
        if moved:
            changes["updated_at"] = now
        old_rate = campaign.rate_per_minute
        if rate.increase_every > 0:
            if rate.increase_on == "succeeded":
                done = sum(c.get(ActionState.SUCCEEDED, 0) for c in counts.values())
            else:
                done = sum(
                    number
                    for c in counts.values()
                    for state, number in c.items()
                    if state not in _UNNOTIFIED
                )
            steps = (done - campaign.rate_mark) // rate.increase_every
            if steps > 0:
                changes["rate_mark"] = campaign.rate_mark + steps * rate.increase_every
                changes["rate_per_minute"] = grown_rate(old_rate, rate, steps)
                changes["updated_at"] = now
        campaign = campaign.with_changes(**changes)
        tx.update_campaign(campaign)
        if moved:
            self._event(
                tx,
                campaign,
                "released",
                detail=f"{moved} vehicle(s) at {old_rate:g}/min ({campaign.released} so far)",
            )
        if campaign.rate_per_minute != old_rate:
            self._event(
                tx,
                campaign,
                "rate_increased",
                detail=f"{old_rate:g}/min -> {campaign.rate_per_minute:g}/min after "
                f"{campaign.rate_mark} vehicle(s) {rate.increase_on}",
            )
        return campaign

    def _check_abort(
        self, tx: Tx, campaign: Campaign, counts: dict[int, dict[ActionState, int]]
    ) -> Campaign | None:
        """Abort ``campaign`` if one of its criteria is met; return it aborted (else ``None``)."""
        succeeded = failed = rolled_back = 0
        for wave_counts in counts.values():
            succeeded += wave_counts.get(ActionState.SUCCEEDED, 0)
            failed += wave_counts.get(ActionState.FAILED, 0)
            rolled_back += wave_counts.get(ActionState.ROLLED_BACK, 0)
        executed = succeeded + failed + rolled_back
        if executed == 0:
            return None
        for criterion in campaign.abort_criteria:
            if executed < criterion.min_executed:
                continue
            if criterion.failure == "failed":
                failures = failed
            elif criterion.failure == "rolled_back":
                failures = rolled_back
            else:
                failures = failed + rolled_back
            if failures * 100.0 >= criterion.threshold_pct * executed:
                why = (
                    f"abort criterion: {failures} of {executed} executed vehicles "
                    f"{_FAILURE_WORDS[criterion.failure]} ({100.0 * failures / executed:.0f}% "
                    f">= {criterion.threshold_pct:g}%)"
                )
                return self._abort(tx, campaign, why)
        return None

    def _finish(
        self,
        tx: Tx,
        campaign: Campaign,
        action: Action,
        outcome: ActionState,
        step: str,
        reason: str,
        *,
        progress_pct: int | None = None,
    ) -> Campaign:
        """Move ``action`` to a terminal state (or retry it) and judge its wave."""
        now = self.clock()
        progress = action.progress_pct if progress_pct is None else progress_pct
        failure_step, failure_reason = action.failure_step, action.failure_reason
        if outcome in FAILURE_STATES:
            failure_step, failure_reason = step, reason
        elif outcome is _SUCCEEDED:
            failure_step, failure_reason, progress = "", "", 100
        ended = action.advanced(
            outcome, now, action.attempts, progress, failure_step, failure_reason
        )
        if not tx.update_action(ended, expected=action.state):
            return campaign
        detail = f"{step}: {reason}" if outcome in FAILURE_STATES and (step or reason) else ""
        # ``_event``, written out: every action ends here.
        tx.add_event(
            _new_event(0, campaign.key, now, "action", action.vin, outcome, campaign.state, detail)
        )
        retry = (
            outcome in FAILURE_STATES
            and action.attempts <= campaign.max_retries
            and campaign.state is not _ABORTED
        )
        if retry:
            again = ended.advanced(
                _PENDING,
                now,
                ended.attempts,
                ended.progress_pct,
                ended.failure_step,
                ended.failure_reason,
            )
            tx.update_action(again, expected=outcome)
            self._event(
                tx,
                campaign,
                "action",
                vin=action.vin,
                action_state=_PENDING,
                detail=f"retry {action.attempts} of {campaign.max_retries}",
            )
            return campaign
        if campaign.abort_criteria and campaign.state in _ABORTABLE:
            # One read of the running counts serves the criteria and the wave rules.
            counts = tx.wave_counts(campaign.key)
            aborted = self._check_abort(tx, campaign, counts)
            if aborted is not None:
                return aborted
            return self._evaluate(tx, campaign, counts)
        return self._evaluate(tx, campaign)

    def _evaluate(
        self,
        tx: Tx,
        campaign: Campaign,
        known: dict[int, dict[ActionState, int]] | None = None,
    ) -> Campaign:
        """Apply the wave rules to a running campaign until nothing changes.

        ``known``: every wave's counts, read in this transaction with nothing
        moved since (saves reading them again).
        """
        while campaign.state is _RUNNING:
            if campaign.awaiting_start:
                if not self._wave_due(campaign, campaign.current_wave):
                    return campaign
                campaign = self._start_wave(tx, campaign, campaign.current_wave)
                known = None
                continue
            wave = campaign.current_wave
            size = campaign.wave_sizes[wave]
            if known is not None:
                counts = known.get(wave, {})
            else:
                counts = tx.wave_counts(campaign.key, wave).get(wave, {})
            succeeded = counts.get(_SUCCEEDED, 0)
            # One pass over the few states present (this runs after every outcome).
            failed = ended = 0
            for state, number in counts.items():
                if state in TERMINAL_ACTION_STATES:
                    ended += number
                    if state in FAILURE_STATES:
                        failed += number
            accepted = wave in campaign.accepted_waves
            if (
                not accepted
                and failed > 0
                and failed * 100.0 >= campaign.error_threshold_pct * size
            ):
                reason = (
                    f"error threshold reached in wave {wave}: {failed} of {size} vehicle(s) "
                    f"failed ({100.0 * failed / size:.0f}% >= {campaign.error_threshold_pct:g}%)"
                )
                campaign = campaign.with_changes(auto_paused=True)
                return self._set_state(
                    tx, campaign, CampaignState.PAUSED, "paused", reason, reason=reason
                )
            passed = succeeded * 100.0 >= campaign.success_threshold_pct * size or (
                accepted and ended == size
            )
            if passed:
                if wave + 1 < len(campaign.wave_sizes):
                    if not self._wave_due(campaign, wave + 1):
                        return campaign  # ``tick`` starts it when its time has come
                    campaign = self._start_wave(tx, campaign, wave + 1)
                    known = None
                    continue
                # Complete only when no vehicle of any wave is still at work:
                # earlier waves may have stragglers after passing their threshold.
                totals = known if known is not None else tx.wave_counts(campaign.key)
                unfinished = sum(
                    number
                    for counts_of_wave in totals.values()
                    for state, number in counts_of_wave.items()
                    if state not in TERMINAL_ACTION_STATES
                )
                if unfinished == 0:
                    done = sum(c.get(_SUCCEEDED, 0) for c in totals.values())
                    return self._set_state(
                        tx,
                        campaign,
                        CampaignState.COMPLETED,
                        "completed",
                        f"{done} of {campaign.target_count} vehicle(s) updated",
                    )
                return campaign
            if ended == size:
                reason = (
                    f"wave {wave} ended with {succeeded} of {size} vehicle(s) updated, below the "
                    f"{campaign.success_threshold_pct:g}% success threshold"
                )
                campaign = campaign.with_changes(auto_paused=True)
                return self._set_state(
                    tx, campaign, CampaignState.PAUSED, "paused", reason, reason=reason
                )
            return campaign
        return campaign

    def _report_event(self, tx: Tx, campaign: Campaign, report: DeploymentReport) -> None:
        """Keep what the vehicle said about its ECUs and its activity in the event log.

        ``report`` calls it only when the vehicle said something (a detail or ECU
        progress): most reports carry neither.
        """
        detail = describe_report(report)
        if detail:
            self._event(
                tx,
                campaign,
                "vehicle_report",
                vin=report.vin,
                action_state=report.state,
                detail=detail,
            )

    def _event(
        self,
        tx: Tx,
        campaign: Campaign,
        kind: str,
        vin: str = "",
        action_state: ActionState | None = None,
        detail: str = "",
    ) -> None:
        # Positional here and from the hot callers: a report makes two or three
        # events, and keywords cost more.
        tx.add_event(
            _new_event(
                0, campaign.key, self.clock(), kind, vin, action_state, campaign.state, detail
            )
        )


def grown_rate(rate_per_minute: float, rate: RolloutRate, steps: int) -> float:
    """Return ``rate_per_minute`` after ``steps`` increases, capped at the rate's maximum."""
    maximum = float(rate.maximum_per_minute or MAX_RATE_PER_MINUTE)
    factor = rate.increment_factor
    if factor <= 1.0 or rate_per_minute >= maximum:
        return min(rate_per_minute, maximum)
    # Compare in logarithms: factor ** steps overflows a float for large counts.
    if steps * math.log(factor) >= math.log(maximum / rate_per_minute):
        return maximum
    return min(rate_per_minute * factor**steps, maximum)


def describe_report(report: DeploymentReport) -> str:
    """One line from a report's activity and per-ECU states (empty when it has neither)."""
    parts = [report.detail] if report.detail else []
    for ecu in report.ecu_progress:
        text = f"{ecu.get('ecu', '?')} {ecu.get('state', '')}".strip()
        versions = (ecu.get("from_version", ""), ecu.get("to_version", ""))
        if any(versions):
            text += f" {versions[0] or '?'}->{versions[1] or '?'}"
        if ecu.get("step"):
            text += f" at {ecu['step']}"
        if ecu.get("reason"):
            text += f": {ecu['reason']}"
        parts.append(text)
    return "; ".join(parts)[:2000]


__all__ = [
    "CampaignEngine",
    "CampaignStatus",
    "Offer",
    "ReportOutcome",
    "check_criterion",
    "check_rate",
    "check_spec",
    "compatible",
    "describe_report",
    "grown_rate",
    "split_waves",
    "wave_start_after",
]
