"""The campaign engine: staged rollouts as pure logic over an injected store and clock.

Rules (after hawkBit's rollouts and AWS IoT Jobs' abort criteria):

* A campaign snapshots its targets at creation and splits them into waves
  (counts or percentages; the vehicles left over form one last wave).
* Starting a campaign makes wave 0's actions pending; a pending action is
  offered to its vehicle at the next check-in and becomes notified.
* A wave whose succeeded share reaches the success threshold starts the next
  wave; once the last wave has passed, the campaign completes when every
  action of every wave has ended (earlier waves may still have stragglers).
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
    ACTION_TRANSITIONS,
    ACTIVE_ACTION_STATES,
    CAMPAIGN_TRANSITIONS,
    CANCELABLE_STATES,
    FAILURE_STATES,
    REPORTABLE_STATES,
    TERMINAL_ACTION_STATES,
    UNFINISHED_STATES,
    Action,
    ActionState,
    Campaign,
    CampaignEvent,
    CampaignSpec,
    CampaignState,
    DeploymentReport,
    EcuInfo,
    Release,
    Vehicle,
    WaveSpec,
    lookup_id,
    parse_id,
)
from backend_stub.store.base import Store, Tx

log = logging.getLogger(__name__)

Clock = Callable[[], float]
MAX_WAVES = 100


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


@dataclass(frozen=True)
class Offer:
    """A deployment handed to a vehicle at check-in."""

    action: Action
    campaign: Campaign


@dataclass(frozen=True)
class ReportOutcome:
    """What a deployment report did."""

    action: Action
    duplicate: bool


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
    if spec.max_retries > 100:
        raise InvalidArgument("max_retries must be at most 100")
    spec.filter.check()


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
            targets = [v.vin for v in matched if spec.force or not compatible(v, release)]
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
        """Start a draft campaign: its first wave becomes pending."""

        def work(tx: Tx) -> Campaign:
            campaign = self._campaign(tx, campaign_id, lock=True)
            self._check_transition(campaign, CampaignState.RUNNING, "start")
            if campaign.state is not CampaignState.DRAFT:
                raise FailedPrecondition(
                    f"campaign {campaign_id} is {campaign.state}; only a draft can be started "
                    "(use resume for a paused one)"
                )
            campaign = self._set_state(tx, campaign, CampaignState.RUNNING, "started")
            campaign = self._start_wave(tx, campaign, 0)
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
            campaign = self._set_state(tx, campaign, CampaignState.RUNNING, "resumed", reason="")
            return self._evaluate(tx, campaign)

        return self.store.run(work)

    def abort(self, campaign_id: str, reason: str = "") -> Campaign:
        """Abort a campaign: actions not yet installing are canceled."""

        def work(tx: Tx) -> Campaign:
            campaign = self._campaign(tx, campaign_id, lock=True)
            self._check_transition(campaign, CampaignState.ABORTED, "abort")
            now = self.clock()
            canceled = tx.move_actions(
                campaign.key,
                wave=None,
                states=CANCELABLE_STATES,
                to=ActionState.CANCELED,
                at=now,
            )
            why = reason.strip() or "aborted by operator"
            return self._set_state(
                tx,
                campaign,
                CampaignState.ABORTED,
                "aborted",
                f"{why}; {canceled} action(s) canceled",
                reason=why,
            )

        return self.store.run(work)

    def status(self, campaign_id: str) -> CampaignStatus:
        """Return a campaign with its per-wave counts."""

        def work(tx: Tx) -> CampaignStatus:
            campaign = self._campaign(tx, campaign_id)
            return CampaignStatus(campaign, tx.wave_counts(campaign.key))

        return self.store.run(work, write=False)

    def tick(self) -> int:
        """Fail vehicle-owned actions that stopped reporting; return how many timed out."""

        def work(tx: Tx) -> int:
            expired = 0
            now = self.clock()
            for campaign in tx.list_campaigns(
                after_key=0,
                limit=1_000_000,
                states=(CampaignState.RUNNING, CampaignState.PAUSED, CampaignState.ABORTED),
            ):
                if campaign.action_timeout_s <= 0:
                    continue
                stale = tx.stale_actions(
                    campaign.key, updated_before=now - campaign.action_timeout_s, limit=10_000
                )
                if not stale:
                    continue
                campaign = self._locked(tx, campaign.key)
                for action in stale:
                    reason = f"no report for {campaign.action_timeout_s} s"
                    campaign = self._finish(
                        tx, campaign, action, ActionState.FAILED, "timeout", reason
                    )
                    expired += 1
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
            active = [a for a in actions if a.state in ACTIVE_ACTION_STATES]
            if active:
                return [Offer(a, campaigns[a.campaign_key]) for a in active]
            for action in actions:
                campaign = campaigns[action.campaign_key]
                if campaign.state is not CampaignState.RUNNING:
                    continue
                notified = action.with_changes(
                    state=ActionState.NOTIFIED,
                    attempts=action.attempts + 1,
                    progress_pct=0,
                    updated_at=now,
                )
                if tx.update_action(notified, expected=ActionState.PENDING):
                    self._event(
                        tx,
                        campaign,
                        "action",
                        vin=vin,
                        action_state=ActionState.NOTIFIED,
                        detail=f"attempt {notified.attempts}",
                    )
                    return [Offer(notified, campaign)]
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

        def work(tx: Tx) -> ReportOutcome:
            action = tx.get_action(key)
            if action is None:
                raise NotFound(f"deployment {report.deployment_id} does not exist")
            if action.vin != report.vin:
                raise PermissionDenied(
                    f"deployment {report.deployment_id} belongs to another vehicle"
                )
            # Serialise with the campaign's other writers before judging the
            # action, so that wave decisions see every committed outcome.
            campaign = self._locked(tx, action.campaign_key)
            action = tx.get_action(key)
            assert action is not None
            now = self.clock()
            if not tx.claim_report(report.report_id, at=now):
                return ReportOutcome(action, duplicate=True)
            if report.inventory:
                tx.touch_vehicle(report.vin, at=now, state=None, ecus=report.inventory)
            if action.state is ActionState.CANCELED:
                raise FailedPrecondition(
                    f"deployment {report.deployment_id} was canceled: stop working on it"
                )
            if report.state is action.state and action.state not in TERMINAL_ACTION_STATES:
                progressed = action.with_changes(progress_pct=report.progress_pct, updated_at=now)
                tx.update_action(progressed, expected=action.state)
                self._report_event(tx, campaign, report)
                return ReportOutcome(progressed, duplicate=False)
            if report.state not in ACTION_TRANSITIONS[action.state]:
                raise FailedPrecondition(
                    f"deployment {report.deployment_id} is {action.state.value}; "
                    f"it cannot become {report.state.value}"
                )
            if report.state in TERMINAL_ACTION_STATES:
                self._finish(
                    tx,
                    campaign,
                    action,
                    report.state,
                    report.failure_step,
                    report.failure_reason,
                    progress_pct=report.progress_pct,
                )
            else:
                moved = action.with_changes(
                    state=report.state, progress_pct=report.progress_pct, updated_at=now
                )
                tx.update_action(moved, expected=action.state)
                self._event(tx, campaign, "action", vin=action.vin, action_state=report.state)
            self._report_event(tx, campaign, report)
            final = tx.get_action(key)
            assert final is not None
            return ReportOutcome(final, duplicate=False)

        return self.store.run(work)

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

    def _start_wave(self, tx: Tx, campaign: Campaign, wave: int) -> Campaign:
        moved = tx.move_actions(
            campaign.key,
            wave=wave,
            states=(ActionState.SCHEDULED,),
            to=ActionState.PENDING,
            at=self.clock(),
        )
        campaign = campaign.with_changes(current_wave=wave, updated_at=self.clock())
        tx.update_campaign(campaign)
        self._event(tx, campaign, "wave_started", detail=f"wave {wave}: {moved} vehicle(s)")
        return campaign

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
        changes: dict[str, object] = {"state": outcome, "updated_at": now}
        if progress_pct is not None:
            changes["progress_pct"] = progress_pct
        if outcome in FAILURE_STATES:
            changes["failure_step"] = step
            changes["failure_reason"] = reason
        elif outcome is ActionState.SUCCEEDED:
            changes["failure_step"] = ""
            changes["failure_reason"] = ""
            changes["progress_pct"] = 100
        ended = action.with_changes(**changes)
        if not tx.update_action(ended, expected=action.state):
            return campaign
        detail = f"{step}: {reason}" if outcome in FAILURE_STATES and (step or reason) else ""
        self._event(tx, campaign, "action", vin=action.vin, action_state=outcome, detail=detail)
        retry = (
            outcome in FAILURE_STATES
            and action.attempts <= campaign.max_retries
            and campaign.state is not CampaignState.ABORTED
        )
        if retry:
            again = ended.with_changes(state=ActionState.PENDING, updated_at=now)
            tx.update_action(again, expected=outcome)
            self._event(
                tx,
                campaign,
                "action",
                vin=action.vin,
                action_state=ActionState.PENDING,
                detail=f"retry {action.attempts} of {campaign.max_retries}",
            )
            return campaign
        return self._evaluate(tx, campaign)

    def _evaluate(self, tx: Tx, campaign: Campaign) -> Campaign:
        """Apply the wave rules to a running campaign until nothing changes."""
        while campaign.state is CampaignState.RUNNING:
            wave = campaign.current_wave
            size = campaign.wave_sizes[wave]
            counts = tx.wave_counts(campaign.key, wave).get(wave, {})
            succeeded = counts.get(ActionState.SUCCEEDED, 0)
            failed = sum(counts.get(s, 0) for s in FAILURE_STATES)
            ended = sum(counts.get(s, 0) for s in TERMINAL_ACTION_STATES)
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
                    campaign = self._start_wave(tx, campaign, wave + 1)
                    continue
                # Complete only when no vehicle of any wave is still at work:
                # earlier waves may have stragglers after passing their threshold.
                totals = tx.wave_counts(campaign.key)
                unfinished = sum(
                    number
                    for counts_of_wave in totals.values()
                    for state, number in counts_of_wave.items()
                    if state not in TERMINAL_ACTION_STATES
                )
                if unfinished == 0:
                    done = sum(c.get(ActionState.SUCCEEDED, 0) for c in totals.values())
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
        """Keep what the vehicle said about its ECUs and its activity in the event log."""
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
        *,
        vin: str = "",
        action_state: ActionState | None = None,
        detail: str = "",
    ) -> None:
        tx.add_event(
            CampaignEvent(
                key=0,
                campaign_key=campaign.key,
                at=self.clock(),
                kind=kind,
                vin=vin,
                action_state=action_state,
                campaign_state=campaign.state,
                detail=detail,
            )
        )


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
    "check_spec",
    "compatible",
    "describe_report",
    "split_waves",
]
