"""Modeled fleet scenarios: a campaign over thousands to millions of vehicles in virtual time."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from backend_stub.model import (
    FAILURE_STATES,
    TERMINAL_ACTION_STATES,
    ActionState,
    Campaign,
    CampaignState,
)
from scenarios.core import ProcessGenerator, Scenario, ScenarioParams
from scenarios.faults import Fault
from scenarios.fleet import (
    HOUR,
    MINUTE,
    CampaignParams,
    FleetOptions,
    FleetWorld,
)
from scenarios.fleet_faults import FleetFaults, fault_target_errors
from scenarios.registry import register

# Above this many vehicles the report keeps per-group outcomes, not one per vehicle.
PER_VEHICLE_OUTCOMES = 20_000


class FleetParams(FleetOptions, ScenarioParams):
    """Parameters of the ``fleet`` scenario: the fleet, the campaign, the operator."""

    campaign: CampaignParams = CampaignParams()
    on_pause: Literal["stop", "resume", "abort"] = "stop"
    """After an automatic pause: end the run, resume after a review, or abort."""
    review_h: float = Field(default=4.0, ge=0.0)
    horizon_days: float = Field(default=120.0, gt=0.0)
    sample_min: float = Field(default=30.0, gt=0.0)
    expect: Literal["auto-pause", "completed", "any"] = "auto-pause"
    """What the campaign must come to (with the default bad batch, a pause)."""
    faults: list[Fault] = Field(default_factory=list)
    """Faults the fleet meets (:mod:`scenarios.fleet_faults`); ``at_s`` counts from the start."""

    @model_validator(mode="after")
    def _fault_targets(self) -> Self:
        """Refuse a fault naming a VIN outside the fleet or an ECU outside the release."""
        errors = fault_target_errors(self.faults, self.vehicles, list(self.release.image_kib))
        if errors:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("fault_target", message),
                        loc=location,
                        input=self.faults[int(location[1])].model_dump(),
                    )
                    for location, message in errors
                ],
            )
        return self


@register
class FleetScenario(Scenario):
    """A staged campaign over a modeled fleet, with a bad batch that trips the error threshold."""

    name = "fleet"
    summary = (
        "modeled campaign over a fleet (default 10,000 vehicles): waves, thresholds and an "
        "automatic pause when a bad batch raises failures"
    )
    fidelity = "modeled"
    Params = FleetParams
    faults: FleetFaults | None = None
    """The faults of the last run, when its parameters gave some."""

    def time_limit(self) -> float:
        """Return the horizon in virtual seconds."""
        params = self.run.params
        assert isinstance(params, FleetParams)
        return params.horizon_days * 24 * HOUR

    def main(self) -> ProcessGenerator:
        """Build the fleet, run the campaign, act on pauses, check the outcome."""
        run = self.run
        params = run.params
        assert isinstance(params, FleetParams)
        world = FleetWorld(run, params)
        world.build()
        pauses: list[tuple[float, Campaign]] = []

        def changed(campaign: Campaign) -> None:
            run.event("campaign", campaign.state.value, campaign.pause_reason)
            if campaign.state is CampaignState.PAUSED:
                pauses.append((run.now, campaign))

        world.on_campaign_change.append(changed)
        faults = FleetFaults(world, params.faults) if params.faults else None
        self.faults = faults
        world.start_campaign(params.campaign)
        if faults is not None:
            faults.start()
        handled = 0
        while True:
            status = world.status()
            totals = status.totals()
            run.sample("campaign", **{state.value: float(n) for state, n in totals.items()})
            campaign = status.campaign
            active = world.active_actions(status)
            run.status(
                f"day {run.now / 86400:5.1f}  wave {campaign.current_wave + 1}/"
                f"{len(campaign.wave_sizes)}  {campaign.state.value:9}  "
                + "  ".join(f"{s.value} {n}" for s, n in sorted(totals.items()) if n)
            )
            if campaign.state in (CampaignState.COMPLETED, CampaignState.ABORTED) and not active:
                break
            if campaign.state is CampaignState.PAUSED and len(pauses) > handled:
                handled = len(pauses)
                # The operator's calls reach the backend only while it runs.
                if params.on_pause == "abort":
                    yield from world.backend_answers(params.sample_min * MINUTE)
                    world.abort("aborted after an automatic pause")
                    continue
                if params.on_pause == "resume" and campaign.auto_paused:
                    yield run.env.timeout(params.review_h * HOUR)
                    yield from world.backend_answers(params.sample_min * MINUTE)
                    run.event("operator", "resume", "failures reviewed and accepted")
                    world.resume()
                    continue
            if campaign.state is CampaignState.PAUSED and params.on_pause == "stop" and not active:
                break
            yield run.env.timeout(params.sample_min * MINUTE)
        if faults is not None:
            faults.finish()
            for name, value in faults.figures().items():
                run.figure(name, value)
        self._judge(world, pauses)

    def _judge(self, world: FleetWorld, pauses: list[tuple[float, Campaign]]) -> None:
        run = self.run
        params = run.params
        assert isinstance(params, FleetParams)
        status = world.status()
        campaign = status.campaign
        totals = status.totals()
        world.log_backend_events()
        # The campaign's end, as the engine's rules say it should be.
        if params.expect == "auto-pause":
            first = pauses[0][1] if pauses else None
            run.check(
                "paused automatically by the error threshold",
                first is not None
                and first.auto_paused
                and first.pause_reason.startswith("error threshold"),
                first.pause_reason if first else f"campaign {campaign.state.value}, never paused",
            )
        elif params.expect == "completed":
            run.check_equal("campaign completed", campaign.state.value, "completed")
        # No vehicle beyond the waves started was ever touched.
        later = {
            wave: counts
            for wave, counts in status.wave_counts.items()
            if wave > campaign.current_wave
        }
        untouched = all(
            set(counts) <= {ActionState.SCHEDULED, ActionState.CANCELED}
            for counts in later.values()
        )
        run.check(
            "waves after the current one untouched",
            untouched,
            f"current wave {campaign.current_wave}; later waves: "
            + (
                "; ".join(
                    f"{w}: {dict((s.value, n) for s, n in c.items())}" for w, c in later.items()
                )
                or "none"
            ),
        )
        # Each automatic pause happened with its wave's failures at the threshold.
        for at, paused in pauses:
            if not paused.auto_paused:
                continue
            if paused.pause_reason.startswith("error threshold"):
                counts = status.wave_counts.get(paused.current_wave, {})
                failed = sum(counts.get(s, 0) for s in FAILURE_STATES)
                size = paused.wave_sizes[paused.current_wave]
                run.check(
                    f"pause at day {at / 86400:.2f} justified",
                    failed * 100.0 >= paused.error_threshold_pct * size,
                    f"wave {paused.current_wave}: {failed} of {size} failed now "
                    f"(threshold {paused.error_threshold_pct:g}%)",
                )
        # Every vehicle runs what its action says, and the backend knows it.
        tally = world.tally()
        wrong_vehicle, wrong_backend = tally.wrong_vehicle, tally.wrong_backend
        labels: dict[ActionState | None, str] = {s: s.value for s in ActionState}
        labels[None] = "not targeted"
        groups = world.groups
        outcome_counts: dict[tuple[str, str], int] = {}
        for (index, state), count in tally.outcomes.items():
            counted = (groups[index].label, labels[state])
            outcome_counts[counted] = outcome_counts.get(counted, 0) + count
        outcomes = []
        if len(world.cars) <= PER_VEHICLE_OUTCOMES:
            for vin, car in world.cars.items():
                state = tally.states.get(vin)
                outcomes.append(
                    {
                        "vin": vin,
                        "group": groups[car.group].label,
                        "state": labels[state],
                        "versions": {e.name: e.software_version for e in car.ecus},
                        "wakeups": car.wakeups,
                    }
                )
        run.check(
            "every vehicle runs what its action says",
            wrong_vehicle == 0,
            f"{wrong_vehicle} of {len(world.cars)} disagree",
        )
        run.check(
            "backend inventory matches every vehicle",
            wrong_backend == 0,
            f"{wrong_backend} of {len(world.cars)} disagree",
        )
        ended = sum(totals.get(s, 0) for s in TERMINAL_ACTION_STATES)
        run.check(
            "no vehicle left mid-update",
            world.active_actions(status) == 0,
            f"{ended} ended, {sum(totals.values()) - ended} not",
        )
        run.outcomes.extend(
            outcomes
            or [
                {"group": group, "state": state, "vehicles": count}
                for (group, state), count in sorted(outcome_counts.items())
            ]
        )
        failed_before_stop = sum(totals.get(s, 0) for s in FAILURE_STATES)
        run.figure("vehicles", params.vehicles)
        run.figure("targets", campaign.target_count)
        run.figure("excluded", campaign.excluded_count)
        run.figure("campaign state", campaign.state.value)
        run.figure("waves started", campaign.current_wave + 1)
        run.figure("succeeded", totals.get(ActionState.SUCCEEDED, 0))
        run.figure("failed or rolled back", failed_before_stop)
        if pauses:
            run.figure("first pause (days)", round(pauses[0][0] / 86400, 3))
        run.figure("virtual time (days)", round(run.now / 86400, 3))
        run.figure("peak backend calls per minute", world.peak_load())
        run.figure("backend calls", dict(world.stats.calls))
        run.figure("wake-ups", world.stats.wakeups)
