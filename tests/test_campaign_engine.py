"""The campaign engine's rules over every store (memory, SQLite file, PostgreSQL)."""

from __future__ import annotations

import itertools

import pytest
from backend_helpers import seed, vehicle, vin
from helpers import FakeClock

from backend_stub.engine import CampaignEngine, split_waves
from backend_stub.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from backend_stub.model import (
    ActionState,
    CampaignSpec,
    CampaignState,
    DeploymentReport,
    VehicleFilter,
    WaveSpec,
)

_reports = itertools.count()


def report(engine, vin_, dep, state, **kw):
    return engine.report(
        DeploymentReport(
            vin=vin_, deployment_id=dep, report_id=f"r{next(_reports)}", state=state, **kw
        )
    )


def deliver(engine, n, outcome=ActionState.SUCCEEDED, **kw):
    """Vehicle ``n`` checks in and, if offered a deployment, runs it to ``outcome``."""
    offers = engine.check_in(vin(n))
    if not offers:
        return None
    dep = offers[0].action.deployment_id
    report(engine, vin(n), dep, ActionState.DOWNLOADING)
    report(engine, vin(n), dep, ActionState.INSTALLING)
    return report(engine, vin(n), dep, outcome, **kw)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def engine(store, clock):
    return CampaignEngine(store, clock)


TWO_FIRST = (WaveSpec(count=2),)


def make(engine, store, n=10, waves=TWO_FIRST, **kw):
    (rel,) = seed(store, [vehicle(i) for i in range(n)])
    spec = CampaignSpec(name="c", release_id=rel.release_id, waves=waves, **kw)
    return engine.create(spec)


def test_split_waves():
    assert split_waves(10, [WaveSpec(count=2), WaveSpec(percent=50)]) == [2, 5, 3]
    assert split_waves(3, [WaveSpec(percent=1)]) == [1, 2]
    assert split_waves(5, [WaveSpec(count=10)]) == [5]
    assert split_waves(5, []) == [5]
    assert split_waves(4, [WaveSpec(count=1)] * 6) == [1, 1, 1, 1]


def test_create_targets_filter_and_compatible_hardware(engine, store):
    fleet = [vehicle(0, model="a"), vehicle(1, model="a", ecm_hw="HW-OTHER"), vehicle(2, model="b")]
    (rel,) = seed(store, fleet)
    campaign = engine.create(
        CampaignSpec(name="c", release_id=rel.release_id, filter=VehicleFilter(model="a"))
    )
    assert campaign.state is CampaignState.DRAFT
    assert (campaign.target_count, campaign.excluded_count) == (1, 1)
    forced = engine.create(
        CampaignSpec(
            name="c2", release_id=rel.release_id, filter=VehicleFilter(model="a"), force=True
        )
    )
    assert forced.target_count == 2
    with pytest.raises(FailedPrecondition, match="no registered vehicle matches"):
        engine.create(
            CampaignSpec(name="c", release_id=rel.release_id, filter=VehicleFilter(model="zz"))
        )
    with pytest.raises(NotFound):
        engine.create(CampaignSpec(name="c", release_id="rel-999"))
    with pytest.raises(InvalidArgument):
        engine.create(CampaignSpec(name="c", release_id="release-1"))
    with pytest.raises(InvalidArgument, match="success_threshold_pct"):
        engine.create(CampaignSpec(name="c", release_id=rel.release_id, success_threshold_pct=101))
    with pytest.raises(InvalidArgument, match="waves"):
        engine.create(CampaignSpec(name="c", release_id=rel.release_id, waves=(WaveSpec(),)))


def test_create_is_idempotent_by_request_id(engine, store):
    (rel,) = seed(store, [vehicle(0)])
    spec = CampaignSpec(name="c", release_id=rel.release_id, request_id="req-1")
    assert engine.create(spec).key == engine.create(spec).key


def test_waves_run_in_order_and_complete(engine, store):
    campaign = make(engine, store, n=5, waves=(WaveSpec(count=2),), success_threshold_pct=100)
    cid = campaign.campaign_id
    assert engine.check_in(vin(0)) == []  # draft: nothing offered
    engine.start(cid)
    status = engine.status(cid)
    assert status.wave_counts[0] == {ActionState.PENDING: 2}
    assert status.wave_counts[1] == {ActionState.SCHEDULED: 3}
    assert engine.check_in(vin(3)) == []  # wave 1 not started yet
    deliver(engine, 0)
    assert engine.status(cid).campaign.current_wave == 0
    deliver(engine, 1)
    assert engine.status(cid).campaign.current_wave == 1
    for n in (2, 3, 4):
        deliver(engine, n)
    final = engine.status(cid)
    assert final.campaign.state is CampaignState.COMPLETED
    assert final.totals() == {ActionState.SUCCEEDED: 5}


def test_check_in_offers_one_deployment_and_keeps_offering_it(engine, store, clock):
    campaign = make(engine, store, n=2, waves=())
    engine.start(campaign.campaign_id)
    (offer,) = engine.check_in(vin(0))
    assert offer.action.state is ActionState.NOTIFIED and offer.action.attempts == 1
    (again,) = engine.check_in(vin(0))
    assert again.action.deployment_id == offer.action.deployment_id
    assert again.action.attempts == 1
    with pytest.raises(NotFound, match="not registered"):
        engine.check_in("WHLZZZ00000000000")


def test_error_threshold_pauses_with_reason_and_resume_accepts(engine, store):
    campaign = make(
        engine,
        store,
        n=10,
        waves=(WaveSpec(count=4),),
        error_threshold_pct=50,
        success_threshold_pct=50,
    )
    cid = campaign.campaign_id
    engine.start(cid)
    deliver(engine, 0, ActionState.FAILED, failure_step="download", failure_reason="x")
    assert engine.status(cid).campaign.state is CampaignState.RUNNING
    deliver(engine, 1, ActionState.ROLLED_BACK, failure_step="boot", failure_reason="y")
    paused = engine.status(cid).campaign
    assert paused.state is CampaignState.PAUSED
    assert "error threshold reached in wave 0: 2 of 4" in paused.pause_reason
    # Paused: vehicles of the wave are not notified; the next wave does not start.
    assert engine.check_in(vin(2)) == []
    resumed = engine.resume(cid)
    assert resumed.state is CampaignState.RUNNING and resumed.pause_reason == ""
    deliver(engine, 2, ActionState.FAILED)  # accepted wave: no new pause
    assert engine.status(cid).campaign.state is CampaignState.RUNNING
    deliver(engine, 3)
    status = engine.status(cid)
    # 1 of 4 succeeded is below 50 %, but the wave ended and was accepted: next wave.
    assert status.campaign.current_wave == 1
    assert status.campaign.state is CampaignState.RUNNING


def test_wave_ending_below_success_threshold_pauses(engine, store):
    campaign = make(
        engine,
        store,
        n=4,
        waves=(WaveSpec(count=2),),
        error_threshold_pct=100,
        success_threshold_pct=100,
    )
    cid = campaign.campaign_id
    engine.start(cid)
    deliver(engine, 0)
    deliver(engine, 1, ActionState.FAILED)
    paused = engine.status(cid).campaign
    assert paused.state is CampaignState.PAUSED
    assert "below the 100% success threshold" in paused.pause_reason


def test_retries_until_the_limit(engine, store):
    campaign = make(engine, store, n=1, waves=(), max_retries=2, error_threshold_pct=100)
    cid = campaign.campaign_id
    engine.start(cid)
    for attempt in (1, 2):
        outcome = deliver(engine, 0, ActionState.FAILED)
        assert outcome.action.state is ActionState.PENDING
        assert outcome.action.attempts == attempt
    final = deliver(engine, 0, ActionState.FAILED, failure_step="flash", failure_reason="nrc 0x72")
    assert final.action.state is ActionState.FAILED and final.action.attempts == 3
    assert final.action.failure_reason == "nrc 0x72"
    assert engine.status(cid).campaign.state is CampaignState.PAUSED


def test_abort_cancels_all_but_installing(engine, store):
    campaign = make(engine, store, n=4, waves=())
    cid = campaign.campaign_id
    engine.start(cid)
    (installing,) = engine.check_in(vin(0))
    report(engine, vin(0), installing.action.deployment_id, ActionState.INSTALLING)
    (downloading,) = engine.check_in(vin(1))
    report(engine, vin(1), downloading.action.deployment_id, ActionState.DOWNLOADING)
    engine.abort(cid, "bad release")
    status = engine.status(cid)
    assert status.campaign.state is CampaignState.ABORTED
    assert status.campaign.pause_reason == "bad release"
    assert status.totals() == {ActionState.INSTALLING: 1, ActionState.CANCELED: 3}
    with pytest.raises(FailedPrecondition, match="canceled"):
        report(engine, vin(1), downloading.action.deployment_id, ActionState.INSTALLING)
    done = report(engine, vin(0), installing.action.deployment_id, ActionState.SUCCEEDED)
    assert done.action.state is ActionState.SUCCEEDED
    assert engine.status(cid).campaign.state is CampaignState.ABORTED
    for verb in (engine.start, engine.pause, engine.resume, engine.abort):
        with pytest.raises(FailedPrecondition):
            verb(cid)


def test_illegal_transitions_and_bad_reports(engine, store):
    campaign = make(engine, store, n=2, waves=())
    engine.start(campaign.campaign_id)
    (offer,) = engine.check_in(vin(0))
    dep = offer.action.deployment_id
    with pytest.raises(InvalidArgument, match="may report"):
        report(engine, vin(0), dep, ActionState.CANCELED)
    report(engine, vin(0), dep, ActionState.INSTALLING)
    with pytest.raises(FailedPrecondition, match="cannot become downloading"):
        report(engine, vin(0), dep, ActionState.DOWNLOADING)
    with pytest.raises(PermissionDenied):
        report(engine, vin(1), dep, ActionState.SUCCEEDED)
    with pytest.raises(NotFound):
        report(engine, vin(0), "dep-999999", ActionState.SUCCEEDED)
    with pytest.raises(NotFound):
        report(engine, vin(0), "nonsense", ActionState.SUCCEEDED)
    with pytest.raises(InvalidArgument, match="progress_pct"):
        report(engine, vin(0), dep, ActionState.INSTALLING, progress_pct=101)
    progress = report(engine, vin(0), dep, ActionState.INSTALLING, progress_pct=40)
    assert progress.action.progress_pct == 40
    report(engine, vin(0), dep, ActionState.SUCCEEDED)
    with pytest.raises(FailedPrecondition):
        report(engine, vin(0), dep, ActionState.FAILED)


def test_duplicate_report_is_applied_once(engine, store):
    campaign = make(engine, store, n=1, waves=(), max_retries=5, error_threshold_pct=100)
    engine.start(campaign.campaign_id)
    (offer,) = engine.check_in(vin(0))
    failed = DeploymentReport(
        vin=vin(0),
        deployment_id=offer.action.deployment_id,
        report_id="once",
        state=ActionState.FAILED,
    )
    first = engine.report(failed)
    second = engine.report(failed)
    assert not first.duplicate and second.duplicate
    assert second.action.state is ActionState.PENDING
    events = store.run(lambda tx: tx.events_after(campaign.key, after_key=0, limit=100))
    assert sum(e.action_state is ActionState.FAILED for e in events) == 1


def test_rejected_report_leaves_no_trace(engine, store):
    campaign = make(engine, store, n=1, waves=())
    engine.start(campaign.campaign_id)
    (offer,) = engine.check_in(vin(0))
    dep = offer.action.deployment_id
    engine.abort(campaign.campaign_id)
    bad = DeploymentReport(vin=vin(0), deployment_id=dep, report_id="x", state=ActionState.FAILED)
    with pytest.raises(FailedPrecondition):
        engine.report(bad)
    # The refused report's id was rolled back with the rest of its transaction.
    assert store.run(lambda tx: tx.claim_report("x", at=0.0))


def test_timeout_fails_silent_vehicles(engine, store, clock):
    campaign = make(engine, store, n=2, waves=(), action_timeout_s=60, error_threshold_pct=100)
    engine.start(campaign.campaign_id)
    engine.check_in(vin(0))
    (offer,) = engine.check_in(vin(1))
    clock.advance(30)
    report(engine, vin(1), offer.action.deployment_id, ActionState.DOWNLOADING)
    clock.advance(31)
    assert engine.tick() == 1
    actions = store.run(lambda tx: tx.list_actions(campaign.key))
    by_vin = {a.vin: a for a in actions}
    assert by_vin[vin(0)].state is ActionState.FAILED
    assert by_vin[vin(0)].failure_step == "timeout"
    assert by_vin[vin(1)].state is ActionState.DOWNLOADING
    assert engine.tick() == 0


def test_pause_stops_notifications_and_resume_continues(engine, store):
    campaign = make(engine, store, n=3, waves=())
    cid = campaign.campaign_id
    engine.start(cid)
    engine.pause(cid, "maintenance window")
    assert engine.status(cid).campaign.pause_reason == "maintenance window"
    assert engine.check_in(vin(0)) == []
    with pytest.raises(FailedPrecondition):
        engine.pause(cid)
    engine.resume(cid)
    assert len(engine.check_in(vin(0))) == 1


def test_vehicle_sees_only_its_own_deployment(engine, store):
    campaign = make(engine, store, n=2, waves=())
    engine.start(campaign.campaign_id)
    (offer,) = engine.check_in(vin(0))
    action, found = engine.deployment(vin(0), offer.action.deployment_id)
    assert action.vin == vin(0) and found.key == campaign.key
    with pytest.raises(PermissionDenied):
        engine.deployment(vin(1), offer.action.deployment_id)
