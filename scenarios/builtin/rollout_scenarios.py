"""Rollout policies compared: one modeled fleet and failure pattern under several campaign rules.

Each policy runs its own backend (the real campaign engine) over its own copy
of the fleet, all in one virtual timeline from the same moment. The copies are
drawn from the same seed, so they hold the same vehicles, and their failures
are fixed per vehicle and attempt (``fates_seed``): a vehicle of the bad batch
fails the same way under every policy, whenever that policy reaches it. What
differs is only the backend's rules, which are the engine's, not this file's.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import Field, model_validator

from backend_stub.engine import CampaignStatus
from backend_stub.model import (
    FAILURE_STATES,
    TERMINAL_ACTION_STATES,
    ActionState,
    Campaign,
    CampaignEvent,
    CampaignState,
)
from scenarios.core import ProcessGenerator, Scenario, ScenarioParams
from scenarios.fleet import (
    HOUR,
    MINUTE,
    AbortParams,
    CampaignParams,
    FleetOptions,
    FleetWorld,
    RateParams,
    Wave,
)
from scenarios.registry import register

DAY = 24 * HOUR
# Actions that never reached their vehicle.
_UNREACHED = frozenset({ActionState.SCHEDULED, ActionState.PENDING, ActionState.CANCELED})


class Policy(ScenarioParams):
    """A named campaign configuration and what the operator does on an automatic pause."""

    name: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")
    summary: str = ""
    campaign: CampaignParams
    on_pause: str = Field(default="resume", pattern="^(resume|stop)$")
    """After an automatic pause: resume after the review, or leave it paused."""


DEFAULT_POLICIES = (
    Policy(
        name="waves",
        summary="fixed waves with success and error thresholds (as hawkBit rollouts)",
        campaign=CampaignParams(
            waves=(Wave(percent=1), Wave(percent=5), Wave(percent=25)),
            success_threshold_pct=90.0,
            error_threshold_pct=3.0,
            max_retries=0,
        ),
    ),
    Policy(
        name="rate",
        summary="one wave released at an exponential rate, with abort criteria (as AWS IoT Jobs)",
        campaign=CampaignParams(
            waves=(),
            success_threshold_pct=0.0,
            error_threshold_pct=100.0,
            max_retries=0,
            rollout_rate=RateParams(
                base_per_minute=1,
                increment_factor=1.5,
                increase_every=250,
                increase_on="succeeded",
                maximum_per_minute=50,
            ),
            abort_criteria=(AbortParams(failure="any", threshold_pct=3.0, min_executed=50),),
        ),
    ),
    Policy(
        name="phases",
        summary="percentage phases at set times, no automatic stop (as Mender phased deployments)",
        campaign=CampaignParams(
            waves=(
                Wave(percent=10),
                Wave(percent=40, start_after_h=24.0),
                Wave(percent=50, start_after_h=72.0),
            ),
            success_threshold_pct=0.0,
            error_threshold_pct=100.0,
            max_retries=0,
        ),
    ),
)


class RolloutParams(FleetOptions, ScenarioParams):
    """Parameters of ``rollout-policies``: the fleet (as ``fleet``), the policies, the operator."""

    policies: tuple[Policy, ...] = Field(default=DEFAULT_POLICIES, min_length=1, max_length=8)
    review_h: float = Field(default=4.0, ge=0.0)
    """How long the operator takes to review an automatic pause."""
    horizon_days: float = Field(default=60.0, gt=0.0)
    sample_min: float = Field(default=60.0, gt=0.0)

    @model_validator(mode="after")
    def _unique_names(self) -> RolloutParams:
        names = [p.name for p in self.policies]
        if len(set(names)) != len(names):
            raise ValueError(f"policy names must differ: {names}")
        return self


@dataclass
class _Stop:
    """The campaign's first automatic stop, with the counts at that moment."""

    at: float
    campaign: Campaign
    status: CampaignStatus


@dataclass
class _Track:
    """One policy's world and what was seen of it."""

    policy: Policy
    world: FleetWorld
    stop: _Stop | None = None
    pauses: int = 0
    ended_at: float | None = None
    changes: list[tuple[float, Campaign]] = field(default_factory=list)


def _reached(status: CampaignStatus) -> int:
    return sum(n for s, n in status.totals().items() if s not in _UNREACHED)


def _failed(status: CampaignStatus) -> int:
    totals = status.totals()
    return sum(totals.get(s, 0) for s in FAILURE_STATES)


@register
class RolloutPoliciesScenario(Scenario):
    """The same fleet and bad batch under hawkBit-, AWS IoT Jobs- and Mender-like policies."""

    name = "rollout-policies"
    summary = (
        "one modeled fleet and failure pattern under several rollout policies (waves with "
        "thresholds, exponential rate with abort criteria, timed phases), compared on time "
        "to complete, vehicles hit before the automatic stop and peak backend load"
    )
    fidelity = "modeled"
    Params = RolloutParams

    def time_limit(self) -> float:
        """Return the horizon in virtual seconds (plus a day for the last reviews)."""
        params = self.run.params
        assert isinstance(params, RolloutParams)
        return params.horizon_days * DAY + DAY

    def main(self) -> ProcessGenerator:
        """Build one world per policy, run their campaigns side by side, compare them."""
        run = self.run
        params = run.params
        assert isinstance(params, RolloutParams)
        tracks: list[_Track] = []
        for policy in params.policies:
            world = FleetWorld(
                run, params, rng=random.Random(run.seed), fates_seed=run.seed, name=policy.name
            )
            world.build()
            tracks.append(_Track(policy, world))
        for track in tracks:
            track.world.on_campaign_change.append(self._watcher(track))
        for track in tracks:
            track.world.start_campaign(track.policy.campaign, name=track.policy.name)
        operators = [run.env.process(self._operate(track)) for track in tracks]
        horizon = params.horizon_days * DAY
        while run.now < horizon:
            self._sample(tracks)
            running = [p for p in operators if not p.processed]
            if not running:
                break
            # Processes, not a nested condition: SimPy takes a condition's
            # callbacks off its inner conditions once the outer one fires.
            step = min(params.sample_min * MINUTE, horizon - run.now)
            yield run.env.any_of([*running, run.env.timeout(step)])
        self._judge(tracks)

    def _watcher(self, track: _Track) -> Callable[[Campaign], None]:
        run = self.run

        def changed(campaign: Campaign) -> None:
            track.changes.append((run.now, campaign))
            run.event(track.policy.name, campaign.state.value, campaign.pause_reason)
            automatic = (campaign.state is CampaignState.PAUSED and campaign.auto_paused) or (
                campaign.state is CampaignState.ABORTED
                and campaign.pause_reason.startswith("abort criterion")
            )
            if campaign.state is CampaignState.PAUSED and campaign.auto_paused:
                track.pauses += 1
            if automatic and track.stop is None:
                track.stop = _Stop(run.now, campaign, track.world.status())

        return changed

    def _operate(self, track: _Track) -> ProcessGenerator:
        """Act as one policy's operator: resume automatic pauses after a review, see the end."""
        run = self.run
        params = run.params
        assert isinstance(params, RolloutParams)
        world = track.world
        handled = 0
        while True:
            status = world.status()
            campaign = status.campaign
            active = world.active_actions(status)
            if campaign.state in (CampaignState.COMPLETED, CampaignState.ABORTED) and not active:
                track.ended_at = run.now
                return
            if campaign.state is CampaignState.PAUSED and campaign.auto_paused:
                if track.policy.on_pause == "stop" and not active:
                    track.ended_at = run.now
                    return
                if track.policy.on_pause == "resume" and track.pauses > handled:
                    handled = track.pauses
                    yield run.env.timeout(params.review_h * HOUR)
                    run.event(track.policy.name, "resume", "failures reviewed and accepted")
                    world.resume()
                    continue
            yield run.env.timeout(params.sample_min * MINUTE)

    def _sample(self, tracks: list[_Track]) -> None:
        run = self.run
        statuses = [(t.policy.name, t.world.status()) for t in tracks]
        run.sample(
            "updated",
            **{name: float(s.totals().get(ActionState.SUCCEEDED, 0)) for name, s in statuses},
        )
        run.sample("failed", **{name: float(_failed(s)) for name, s in statuses})
        run.sample("reached", **{name: float(_reached(s)) for name, s in statuses})
        run.status(
            f"day {run.now / DAY:5.1f}  "
            + "  ".join(
                f"{name}: {s.campaign.state.value} "
                f"{s.totals().get(ActionState.SUCCEEDED, 0)} ok {_failed(s)} failed"
                for name, s in statuses
            )
        )

    # ------------------------------------------------------------------ judge
    def _judge(self, tracks: list[_Track]) -> None:
        run = self.run
        comparison = []
        for track in tracks:
            name = track.policy.name
            world = track.world
            status = world.status()
            campaign = status.campaign
            totals = status.totals()
            events = world.log_backend_events(f"backend {name}")
            self._check_rules(track, status, events)
            self._check_vehicles(track)
            stop = track.stop
            completed_at = next(
                (at for at, c in track.changes if c.state is CampaignState.COMPLETED), None
            )
            row: dict[str, object] = {
                "policy": name,
                "summary": track.policy.summary,
                "end state": campaign.state.value,
                "days to complete": None if completed_at is None else round(completed_at / DAY, 3),
                "days to end": None if track.ended_at is None else round(track.ended_at / DAY, 3),
                "targets": campaign.target_count,
                "updated": totals.get(ActionState.SUCCEEDED, 0),
                "failed or rolled back": _failed(status),
                "automatic stop": None
                if stop is None
                else ("pause" if stop.campaign.state is CampaignState.PAUSED else "abort"),
                "days to automatic stop": None if stop is None else round(stop.at / DAY, 3),
                "failed before the automatic stop": _failed(stop.status if stop else status),
                "reached before the automatic stop": _reached(stop.status if stop else status),
                "automatic pauses": track.pauses,
                "peak backend calls per minute": world.peak_load(),
                "backend calls": sum(world.stats.calls.values()),
            }
            comparison.append(row)
            for key, value in row.items():
                if key not in ("policy", "summary") and value is not None:
                    run.figure(f"{name}: {key}", value)
        run.outcomes.extend(comparison)
        run.figure("virtual time (days)", round(run.now / DAY, 3))

    def _check_rules(
        self, track: _Track, status: CampaignStatus, events: list[CampaignEvent]
    ) -> None:
        """Check that each rule of the policy did what the engine's documentation says."""
        run = self.run
        name = track.policy.name
        campaign = status.campaign
        spec = track.policy.campaign
        stop = track.stop
        # An automatic stop must be justified by the counts at that moment.
        if stop is not None:
            counts = stop.status
            reason = stop.campaign.pause_reason
            if stop.campaign.state is CampaignState.ABORTED:
                totals = counts.totals()
                executed = sum(
                    totals.get(s, 0)
                    for s in (ActionState.SUCCEEDED, ActionState.FAILED, ActionState.ROLLED_BACK)
                )
                held = any(
                    executed >= c.min_executed
                    and _failures(totals, c.failure) * 100.0 >= c.threshold_pct * executed
                    for c in spec.abort_criteria
                )
                run.check(f"{name}: abort justified", held, f"{reason}; {executed} executed")
                # Nothing reached a vehicle after the abort.
                later = [
                    e
                    for e in events
                    if e.at > stop.at
                    and e.kind == "action"
                    and e.action_state is ActionState.NOTIFIED
                ]
                run.check(
                    f"{name}: no vehicle notified after the abort",
                    not later,
                    f"{len(later)} notified after day {stop.at / DAY:.2f}",
                )
            elif reason.startswith("error threshold"):
                wave = stop.campaign.current_wave
                wave_counts = counts.wave_counts.get(wave, {})
                failed = sum(wave_counts.get(s, 0) for s in FAILURE_STATES)
                size = stop.campaign.wave_sizes[wave]
                run.check(
                    f"{name}: pause justified",
                    failed * 100.0 >= stop.campaign.error_threshold_pct * size,
                    f"{reason}; wave {wave}: {failed} of {size} failed",
                )
        if not spec.abort_criteria and spec.error_threshold_pct >= 100.0:
            run.check(
                f"{name}: no automatic stop without stop rules",
                stop is None,
                "stopped" if stop else "never stopped",
            )
        # Timed waves never started before their time.
        started_at = campaign.started_at or 0.0
        wave_starts = [e for e in events if e.kind == "wave_started"]
        early = []
        for event in wave_starts:
            wave = int(event.detail.split()[1].rstrip(":"))
            gate = campaign.wave_start_after_s[wave] if campaign.wave_start_after_s else 0.0
            if event.at + 1e-6 < started_at + gate:
                early.append(f"wave {wave} at {event.at / HOUR:.2f} h < {gate / HOUR:.2f} h")
        if any(campaign.wave_start_after_s):
            run.check(
                f"{name}: timed waves started no earlier than their time",
                not early and len(wave_starts) > 0,
                "; ".join(early) or f"{len(wave_starts)} wave(s) started on time",
            )
        # The rollout rate was never exceeded.
        rate = spec.rollout_rate
        if rate is not None:
            maximum = rate.maximum_per_minute or rate.base_per_minute
            released = [e for e in events if e.kind == "released"]
            total = sum(int(e.detail.split()[0]) for e in released)
            tick_s = track.world.options.backend_tick_s
            elapsed = max((e.at for e in released), default=started_at) - started_at
            bound = maximum * (elapsed + tick_s) / MINUTE + 1
            run.check(
                f"{name}: releases within the maximum rate",
                0 < total <= bound and total == campaign.released,
                f"{total} released in {elapsed / HOUR:.1f} h (at most {bound:.0f}); "
                f"campaign says {campaign.released}",
            )

    def _check_vehicles(self, track: _Track) -> None:
        """Every vehicle runs what its action says, the backend knows it, none is mid-update."""
        run = self.run
        name = track.policy.name
        world = track.world
        wrong_vehicle, wrong_backend = world.disagreements()
        run.check(
            f"{name}: every vehicle runs what its action says",
            wrong_vehicle == 0,
            f"{wrong_vehicle} of {len(world.cars)} disagree",
        )
        run.check(
            f"{name}: backend inventory matches every vehicle",
            wrong_backend == 0,
            f"{wrong_backend} of {len(world.cars)} disagree",
        )
        status = world.status()
        totals = status.totals()
        ended = sum(totals.get(s, 0) for s in TERMINAL_ACTION_STATES)
        run.check(
            f"{name}: no vehicle left mid-update",
            world.active_actions(status) == 0,
            f"{ended} ended, {sum(totals.values()) - ended} not",
        )


def _failures(totals: dict[ActionState, int], failure: str) -> int:
    if failure == "failed":
        return totals.get(ActionState.FAILED, 0)
    if failure == "rolled_back":
        return totals.get(ActionState.ROLLED_BACK, 0)
    return sum(totals.get(s, 0) for s in FAILURE_STATES)
