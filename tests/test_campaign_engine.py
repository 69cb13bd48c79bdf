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
    AbortCriterion,
    ActionState,
    Campaign,
    CampaignSpec,
    CampaignState,
    DeploymentReport,
    RolloutRate,
    VehicleFilter,
    WaveSpec,
    parse_id,
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
    first = deliver(engine, 0, ActionState.FAILED, failure_step="download", failure_reason="x")
    assert first.campaign.state is CampaignState.RUNNING
    assert engine.status(cid).campaign.state is CampaignState.RUNNING
    second = deliver(engine, 1, ActionState.ROLLED_BACK, failure_step="boot", failure_reason="y")
    paused = engine.status(cid).campaign
    assert paused.state is CampaignState.PAUSED
    # The report's outcome carries the campaign as the report left it.
    assert second.campaign == paused
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


def test_positional_copies_keep_every_field_in_its_place():
    from backend_stub.model import Action, EcuInfo, Vehicle, copy_with

    action = Action(1, 2, vin(3), 4, ActionState.INSTALLING, 5.0, 6, 7, "step", "reason")
    assert action.advanced(ActionState.FAILED, 8.0, 9, 10, "s2", "r2") == copy_with(
        action,
        {
            "state": ActionState.FAILED,
            "updated_at": 8.0,
            "attempts": 9,
            "progress_pct": 10,
            "failure_step": "s2",
            "failure_reason": "r2",
        },
    )
    car = Vehicle(vin(1), "m", ("t",), (EcuInfo("ecm"),), "parked", 1.0, 2.0, 3, {"v": 1.0})
    ecus = [EcuInfo("bms")]
    assert car.touched(9.0, "driving", ecus) == copy_with(
        car, {"last_seen_at": 9.0, "checkins": 4, "state": "driving", "ecus": tuple(ecus)}
    )
    assert car.touched(9.0, None, None) == copy_with(car, {"last_seen_at": 9.0, "checkins": 4})


def test_copy_with_refuses_a_field_the_record_does_not_have():
    from backend_stub.model import Action, copy_with

    action = Action(1, 2, vin(3), 0, ActionState.PENDING, 0.0)
    with pytest.raises(AttributeError, match=r"Action has no field\(s\) \['colour'\]"):
        copy_with(action, {"state": ActionState.NOTIFIED, "colour": "red"})
    assert copy_with(action, {}) == action


def test_a_maker_fills_every_field_in_its_place_and_takes_them_all():
    from backend_stub.model import CampaignEvent, DeploymentReport, EcuInfo, maker

    make_event = maker(CampaignEvent)
    args = (7, 2, 3.5, "action", vin(1), ActionState.FAILED, CampaignState.RUNNING, "boot")
    made = make_event(*args)
    assert type(made) is CampaignEvent
    assert made == CampaignEvent(*args)
    assert hash(made) == hash(CampaignEvent(*args))
    report = (vin(2), "dep-4", "r/1", ActionState.INSTALLING, 50, "", "", (), (EcuInfo("bms"),), "")
    assert maker(DeploymentReport)(*report) == DeploymentReport(*report)
    # Defaults are not filled in: a field left out is an error, not a silent default.
    with pytest.raises(TypeError):
        make_event(*args[:-1])


def test_ids_take_ascii_digits_only(engine, store):
    campaign = make(engine, store, n=1, waves=())
    engine.start(campaign.campaign_id)
    (offer,) = engine.check_in(vin(0))
    key = offer.action.key
    # The same number in another script's digits is not the deployment (nor a crash).
    other_script = "dep-" + "".join(chr(0x0660 + int(d)) for d in str(key))
    for bad in (other_script, "dep-\u00b2", "dep-1\u00b2"):
        with pytest.raises(NotFound):
            engine.deployment(vin(0), bad)
        with pytest.raises(NotFound):
            report(engine, vin(0), bad, ActionState.DOWNLOADING)
    with pytest.raises(NotFound):
        engine.status("cmp-\u00b2")
    with pytest.raises(InvalidArgument, match="not an id of the form rel-N"):
        parse_id("rel", "rel-\u00b2", "release_id")
    assert engine.deployment(vin(0), f"dep-{key}")[0].key == key


def test_an_id_that_is_not_a_string_is_refused_with_its_reason(engine, store):
    # What a Python caller may pass by mistake: the error names it, no AttributeError.
    for bad in (None, 7):
        with pytest.raises(NotFound):
            engine.deployment(vin(0), bad)
        with pytest.raises(NotFound):
            engine.status(bad)
    with pytest.raises(InvalidArgument, match="release_id is required"):
        parse_id("rel", None, "release_id")
    with pytest.raises(InvalidArgument, match="release_id 7 is not an id of the form rel-N"):
        parse_id("rel", 7, "release_id")


def test_put_vehicles_is_put_vehicle_one_by_one_and_undone_as_one(store):
    seed(store, [vehicle(5), vehicle(1)])
    batch = [
        vehicle(3),
        vehicle(1, model="other"),
        vehicle(0),
        vehicle(3, model="last"),  # a VIN twice: the later one stays, as one by one
    ]
    store.run(lambda tx: tx.put_vehicles(batch))

    def everyone(after: str = "") -> list:
        return store.run(lambda tx: tx.find_vehicles(VehicleFilter(), after_vin=after))

    found = everyone()
    assert [v.vin for v in found] == [vin(0), vin(1), vin(3), vin(5)]
    assert [v.model for v in found] == ["demo", "other", "last", "demo"]
    assert [v.vin for v in everyone(after=vin(1))] == [vin(3), vin(5)]

    def failing(tx):
        tx.put_vehicles([vehicle(7), vehicle(0, model="gone"), vehicle(2), vehicle(7, model="x")])
        raise RuntimeError("the transaction fails after the batch")

    def stopped_halfway():
        yield vehicle(8)
        yield vehicle(1, model="half")
        raise KeyboardInterrupt  # a batch interrupted while it is written

    with pytest.raises(RuntimeError):
        store.run(failing)
    with pytest.raises(KeyboardInterrupt):
        store.run(lambda tx: tx.put_vehicles(stopped_halfway()))
    assert everyone() == found
    assert [v.vin for v in everyone(after=vin(0))] == [vin(1), vin(3), vin(5)]
    assert store.run(lambda tx: [tx.get_vehicle(vin(n)) for n in (2, 7, 8)]) == [None] * 3


def test_add_campaign_takes_targets_in_any_wave_order_and_vehicles_targeted_before(store):
    (rel,) = seed(store, [vehicle(i) for i in range(6)])
    template = Campaign(
        key=0,
        name="c",
        release_key=rel.key,
        state=CampaignState.DRAFT,
        filter=VehicleFilter(),
        wave_sizes=(2, 2, 2),
        success_threshold_pct=90.0,
        error_threshold_pct=10.0,
        max_retries=0,
        action_timeout_s=0.0,
        target_count=6,
        excluded_count=0,
        created_at=1.0,
        updated_at=1.0,
    )
    # Waves in order, then out of order over the same vehicles (targeted before).
    first = store.run(lambda tx: tx.add_campaign(template, [(vin(i), i // 2) for i in range(6)]))
    waves = [2, 0, 1, 0, 2, 1]
    second = store.run(
        lambda tx: tx.add_campaign(template, [(vin(i), w) for i, w in enumerate(waves)])
    )

    def failing(tx):
        tx.add_campaign(template, [(vin(i), 0) for i in range(6)])
        raise RuntimeError("the transaction fails after the campaign")

    with pytest.raises(RuntimeError):
        store.run(failing)
    for campaign, expected in ((first, [i // 2 for i in range(6)]), (second, waves)):
        actions = store.run(lambda tx, c=campaign: tx.list_actions(c.key, limit=100))
        assert sorted((a.vin, a.wave) for a in actions) == [
            (vin(i), w) for i, w in enumerate(expected)
        ]
        counts = store.run(lambda tx, c=campaign: tx.wave_counts(c.key))
        assert counts == {w: {ActionState.SCHEDULED: 2} for w in range(3)}
    scheduled = {ActionState.SCHEDULED}
    for n in range(6):
        mine = store.run(lambda tx, n=n: tx.actions_of_vehicle(vin(n), scheduled))
        assert [a.campaign_key for a in mine] == [first.key, second.key]


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


# ------------------------------------------------------------------ timed waves
def events_of(store, campaign, kind=None):
    found = store.run(lambda tx: tx.events_after(campaign.key, after_key=0, limit=10_000))
    return [e for e in found if kind is None or e.kind == kind]


def test_timed_wave_waits_for_its_time_after_its_predecessor_passed(engine, store, clock):
    campaign = make(
        engine,
        store,
        n=4,
        waves=(WaveSpec(count=2), WaveSpec(count=2, start_after_s=3600)),
        success_threshold_pct=100,
    )
    cid = campaign.campaign_id
    started = engine.start(cid)
    assert started.started_at == 1000.0
    assert started.wave_start_after_s == (0.0, 3600.0)
    deliver(engine, 0)
    deliver(engine, 1)
    status = engine.status(cid)
    assert status.campaign.current_wave == 0  # wave 0 passed, wave 1 waits for its time
    assert status.wave_counts[1] == {ActionState.SCHEDULED: 2}
    assert engine.check_in(vin(2)) == []
    clock.advance(3599)
    engine.tick()
    assert engine.status(cid).campaign.current_wave == 0
    clock.advance(1)
    engine.tick()
    status = engine.status(cid)
    assert status.campaign.current_wave == 1
    assert status.wave_counts[1] == {ActionState.PENDING: 2}
    (wave_1,) = [e for e in events_of(store, campaign, "wave_started") if "wave 1" in e.detail]
    assert wave_1.at == 4600.0
    deliver(engine, 2)
    deliver(engine, 3)
    assert engine.status(cid).campaign.state is CampaignState.COMPLETED


def test_wave_whose_time_has_come_starts_when_its_predecessor_passes(engine, store, clock):
    campaign = make(
        engine,
        store,
        n=4,
        waves=(WaveSpec(count=2), WaveSpec(count=2, start_after_s=60)),
        success_threshold_pct=100,
    )
    cid = campaign.campaign_id
    engine.start(cid)
    clock.advance(120)
    engine.tick()  # time has come, but wave 0 has not passed
    assert engine.status(cid).campaign.current_wave == 0
    deliver(engine, 0)
    deliver(engine, 1)  # the report starts wave 1: no tick needed
    assert engine.status(cid).wave_counts[1] == {ActionState.PENDING: 2}


def test_waves_start_by_time_alone_with_a_zero_success_threshold(engine, store, clock):
    campaign = make(
        engine,
        store,
        n=6,
        waves=(WaveSpec(count=2), WaveSpec(count=2, start_after_s=60), WaveSpec(percent=100)),
        success_threshold_pct=0,
    )
    # The last listed wave takes the rest and has no gate of its own here: make it timed.
    cid = campaign.campaign_id
    engine.start(cid)
    assert engine.status(cid).campaign.current_wave == 0  # wave 1 waits, so wave 2 too
    clock.advance(59)
    engine.tick()
    assert engine.status(cid).wave_counts[1] == {ActionState.SCHEDULED: 2}
    clock.advance(1)
    engine.tick()  # no report ever came: time alone starts wave 1, and wave 2 follows
    status = engine.status(cid)
    assert status.campaign.current_wave == 2
    assert status.totals() == {ActionState.PENDING: 6}


def test_delayed_first_wave_runs_but_releases_nothing_until_its_time(engine, store, clock):
    campaign = make(engine, store, n=3, waves=(WaveSpec(count=2, start_after_s=300),))
    cid = campaign.campaign_id
    started = engine.start(cid)
    assert started.state is CampaignState.RUNNING and started.awaiting_start
    assert engine.status(cid).totals() == {ActionState.SCHEDULED: 3}
    assert engine.check_in(vin(0)) == []
    assert events_of(store, campaign, "wave_started") == []
    (event,) = events_of(store, campaign, "started")
    assert "wave 0 starts after 300 s" in event.detail
    clock.advance(299)
    engine.tick()
    assert engine.status(cid).campaign.awaiting_start
    clock.advance(1)
    engine.tick()
    status = engine.status(cid)
    assert not status.campaign.awaiting_start
    assert status.wave_counts[0] == {ActionState.PENDING: 2}
    (wave_0,) = events_of(store, campaign, "wave_started")
    assert wave_0.at == 1300.0
    assert len(engine.check_in(vin(0))) == 1


def test_delayed_first_wave_of_a_paused_campaign_waits_for_resume(engine, store, clock):
    campaign = make(engine, store, n=3, waves=(WaveSpec(count=2, start_after_s=10),))
    cid = campaign.campaign_id
    engine.start(cid)
    engine.pause(cid)
    clock.advance(20)
    engine.tick()
    assert engine.status(cid).totals() == {ActionState.SCHEDULED: 3}
    engine.resume(cid)
    assert engine.status(cid).wave_counts[0] == {ActionState.PENDING: 2}


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), 365 * 86400.0 + 1])
def test_wave_start_after_is_checked(engine, store, bad):
    (rel,) = seed(store, [vehicle(0)])
    with pytest.raises(InvalidArgument, match=r"waves\[1\]\.start_after_s"):
        engine.create(
            CampaignSpec(
                name="c",
                release_id=rel.release_id,
                waves=(WaveSpec(count=1), WaveSpec(count=1, start_after_s=bad)),
            )
        )
    ok = (WaveSpec(count=1, start_after_s=365 * 86400.0), WaveSpec(count=1, start_after_s=0))
    assert engine.create(CampaignSpec(name="c", release_id=rel.release_id, waves=ok))


# ----------------------------------------------------------------- rollout rate
def pending_keys(store, campaign):
    found = store.run(
        lambda tx: tx.list_actions(campaign.key, states=(ActionState.PENDING,), limit=10_000)
    )
    return [a.key for a in found]


def all_keys(store, campaign):
    return [a.key for a in store.run(lambda tx: tx.list_actions(campaign.key, limit=10_000))]


def release(campaign, limit, *, wave=None):
    """A transaction making up to ``limit`` SCHEDULED actions PENDING, lowest keys first."""
    return lambda tx: tx.move_actions(
        campaign.key,
        wave=wave,
        states=(ActionState.SCHEDULED,),
        to=ActionState.PENDING,
        at=5.0,
        limit=limit,
    )


def test_rate_releases_at_the_base_rate_lowest_keys_first(engine, store, clock):
    campaign = make(engine, store, n=40, waves=(), rollout_rate=RolloutRate(60))
    cid = campaign.campaign_id
    started = engine.start(cid)
    assert started.rate_per_minute == 60.0 and started.released == 0
    assert engine.status(cid).totals() == {ActionState.SCHEDULED: 40}  # nothing at once
    keys = all_keys(store, campaign)
    for tick in range(1, 4):
        clock.advance(10)
        engine.tick()
        assert pending_keys(store, campaign) == keys[: 10 * tick]
    status = engine.status(cid)
    assert status.campaign.released == 30 and status.campaign.release_credit == 0.0
    assert status.totals() == {ActionState.PENDING: 30, ActionState.SCHEDULED: 10}
    released = [e.detail for e in events_of(store, campaign, "released")]
    assert released == [f"10 vehicle(s) at 60/min ({n} so far)" for n in (10, 20, 30)]
    assert len(engine.check_in(vin(0))) == 1
    assert engine.check_in(vin(35)) == []  # not released yet


def test_rate_carries_the_fractional_credit(engine, store, clock):
    campaign = make(engine, store, n=20, waves=(), rollout_rate=RolloutRate(7))
    engine.start(campaign.campaign_id)
    released = []
    for _ in range(6):
        clock.advance(10)
        engine.tick()
        released.append(engine.status(campaign.campaign_id).campaign.released)
    # 7 per minute in 10 s ticks: floor(7 * t / 60), the fraction carried over.
    assert released == [1, 2, 3, 4, 5, 7]


def test_rate_grows_after_notified_vehicles_up_to_the_maximum(engine, store, clock):
    rate = RolloutRate(60, increment_factor=2.0, increase_every=5, maximum_per_minute=200)
    campaign = make(engine, store, n=100, waves=(), rollout_rate=rate)
    cid = campaign.campaign_id
    engine.start(cid)
    clock.advance(10)
    engine.tick()
    for n in range(5):
        assert engine.check_in(vin(n))  # 5 notified
    clock.advance(10)
    engine.tick()  # this interval still at 60/min; then x2
    c = engine.status(cid).campaign
    assert (c.released, c.rate_per_minute, c.rate_mark) == (20, 120.0, 5)
    clock.advance(10)
    engine.tick()
    c = engine.status(cid).campaign
    assert (c.released, c.rate_per_minute) == (40, 120.0)  # no new notifications: no growth
    for n in range(5, 15):
        assert engine.check_in(vin(n))  # 15 notified: two more steps, 480 capped at 200
    clock.advance(10)
    engine.tick()
    c = engine.status(cid).campaign
    assert (c.released, c.rate_per_minute, c.rate_mark) == (60, 200.0, 15)
    clock.advance(12)
    engine.tick()
    assert engine.status(cid).campaign.released == 100  # 40 at 200/min, all that was left
    (increase, *_) = events_of(store, campaign, "rate_increased")
    assert increase.detail == "60/min -> 120/min after 5 vehicle(s) notified"


def test_rate_grows_after_succeeded_vehicles(engine, store, clock):
    rate = RolloutRate(60, increment_factor=1.5, increase_every=2, increase_on="succeeded")
    campaign = make(engine, store, n=50, waves=(), rollout_rate=rate)
    cid = campaign.campaign_id
    engine.start(cid)
    clock.advance(10)
    engine.tick()
    for n in range(4):
        engine.check_in(vin(n))  # notified, not succeeded: no growth
    clock.advance(10)
    engine.tick()
    assert engine.status(cid).campaign.rate_per_minute == 60.0
    deliver(engine, 0)
    deliver(engine, 1)
    deliver(engine, 2)
    clock.advance(10)
    engine.tick()
    c = engine.status(cid).campaign
    assert (c.rate_per_minute, c.rate_mark) == (90.0, 2)
    assert c.rollout_rate.maximum_per_minute == 100_000  # the default, filled in


def test_rate_never_releases_beyond_the_started_waves(engine, store, clock):
    campaign = make(
        engine,
        store,
        n=10,
        waves=(WaveSpec(count=4),),
        rollout_rate=RolloutRate(600),
        success_threshold_pct=50,
    )
    cid = campaign.campaign_id
    engine.start(cid)
    clock.advance(10)
    engine.tick()  # 100 owed, 4 in the wave
    status = engine.status(cid)
    assert status.wave_counts == {0: {ActionState.PENDING: 4}, 1: {ActionState.SCHEDULED: 6}}
    assert status.campaign.released == 4 and status.campaign.release_credit == 0.0
    clock.advance(600)
    engine.tick()  # credit does not pile up while nothing waits
    deliver(engine, 0)
    deliver(engine, 1)  # 50 %: wave 1 starts, its vehicles are released by the rate
    status = engine.status(cid)
    assert status.campaign.current_wave == 1
    assert status.wave_counts[1] == {ActionState.SCHEDULED: 6}
    clock.advance(0.5)
    engine.tick()
    assert engine.status(cid).campaign.released == 9  # 5 at 600/min in 0.5 s, not a burst


def test_rate_releases_a_passed_wave_s_leftovers_first(engine, store, clock):
    campaign = make(
        engine,
        store,
        n=8,
        waves=(WaveSpec(count=4),),
        rollout_rate=RolloutRate(12),
        success_threshold_pct=50,
    )
    cid = campaign.campaign_id
    engine.start(cid)
    clock.advance(10)
    engine.tick()  # 2 of wave 0
    deliver(engine, 0)
    deliver(engine, 1)  # wave 0 passed with 2 still scheduled; wave 1 starts
    assert engine.status(cid).campaign.current_wave == 1
    clock.advance(10)
    engine.tick()
    keys = all_keys(store, campaign)
    assert pending_keys(store, campaign) == keys[2:4]  # wave 0's rest before wave 1
    clock.advance(10)
    engine.tick()
    assert pending_keys(store, campaign) == keys[2:6]


def test_rate_gives_no_credit_for_a_pause(engine, store, clock):
    campaign = make(engine, store, n=100, waves=(), rollout_rate=RolloutRate(60))
    cid = campaign.campaign_id
    engine.start(cid)
    clock.advance(10)
    engine.tick()
    engine.pause(cid)
    clock.advance(3600)
    engine.tick()
    assert engine.status(cid).campaign.released == 10
    engine.resume(cid)
    clock.advance(10)
    engine.tick()
    assert engine.status(cid).campaign.released == 20


def test_rate_with_a_delayed_first_wave(engine, store, clock):
    campaign = make(
        engine,
        store,
        n=30,
        waves=(WaveSpec(percent=100, start_after_s=60),),
        rollout_rate=RolloutRate(60),
    )
    cid = campaign.campaign_id
    engine.start(cid)
    clock.advance(50)
    engine.tick()
    assert engine.status(cid).campaign.released == 0
    clock.advance(10)
    engine.tick()  # wave 0 starts at 60 s; credit for the wait was dropped
    clock.advance(10)
    engine.tick()
    assert engine.status(cid).campaign.released == 10


@pytest.mark.parametrize(
    ("rate", "match"),
    [
        (RolloutRate(0), "base_per_minute"),
        (RolloutRate(100_001), "base_per_minute"),
        (RolloutRate(10, increment_factor=0.5), "increment_factor"),
        (RolloutRate(10, increment_factor=5.5), "increment_factor"),
        (RolloutRate(10, increment_factor=float("nan")), "increment_factor"),
        (RolloutRate(10, increase_every=-1), "increase_every"),
        (RolloutRate(10, increase_every=10_000_001), "increase_every"),
        (RolloutRate(10, increase_on="installed"), "increase_on"),  # type: ignore[arg-type]
        (RolloutRate(10, maximum_per_minute=9), "maximum_per_minute"),
        (RolloutRate(10, maximum_per_minute=100_001), "maximum_per_minute"),
    ],
)
def test_rollout_rate_is_checked(engine, store, rate, match):
    (rel,) = seed(store, [vehicle(0)])
    with pytest.raises(InvalidArgument, match=f"rollout_rate.{match}"):
        engine.create(CampaignSpec(name="c", release_id=rel.release_id, rollout_rate=rate))


def test_bounded_move_takes_lowest_keys_and_rolls_back_cleanly(engine, store):
    campaign = make(engine, store, n=10, waves=(WaveSpec(count=6),))
    keys = all_keys(store, campaign)

    def move(limit, wave=0):
        return release(campaign, limit, wave=wave)

    assert store.run(move(2)) == 2
    cursors = dict(getattr(store, "cursors", {}))

    class Boom(Exception):
        pass

    def moved_then_failed(tx):
        assert move(3)(tx) == 3
        raise Boom

    with pytest.raises(Boom):
        store.run(moved_then_failed)
    if hasattr(store, "cursors"):  # the memory store's cursor is undone with the rest
        assert store.cursors == cursors
    assert pending_keys(store, campaign) == keys[:2]
    assert store.run(move(3)) == 3
    assert pending_keys(store, campaign) == keys[:5]
    # Another move makes no action SCHEDULED again; the next bounded move skips it.
    assert store.run(move(10)) == 1  # only 1 left in wave 0
    assert store.run(move(0)) == 0
    assert pending_keys(store, campaign) == keys[:6]
    assert engine.status(campaign.campaign_id).wave_counts == {
        0: {ActionState.PENDING: 6},
        1: {ActionState.SCHEDULED: 4},
    }


def test_wave_counts_list_states_present_and_a_rollback_puts_them_back(engine, store):
    campaign = make(engine, store, n=2, waves=())
    before = store.run(lambda tx: tx.wave_counts(campaign.key))
    assert before == {0: {ActionState.SCHEDULED: 2}}

    class Boom(Exception):
        pass

    def moved_then_failed(tx):
        # Empties SCHEDULED and enters PENDING, then NOTIFIED for one action.
        tx.move_actions(
            campaign.key, wave=0, states=(ActionState.SCHEDULED,), to=ActionState.PENDING, at=1.0
        )
        (first, _) = tx.list_actions(campaign.key)
        moved = first.advanced(ActionState.NOTIFIED, 2.0, 1, 0, "", "")
        assert tx.update_action(moved, expected=ActionState.PENDING)
        assert tx.wave_counts(campaign.key, 0) == {
            0: {ActionState.PENDING: 1, ActionState.NOTIFIED: 1}
        }
        raise Boom

    with pytest.raises(Boom):
        store.run(moved_then_failed)
    assert store.run(lambda tx: tx.wave_counts(campaign.key)) == before
    assert store.run(lambda tx: tx.count_actions()) == {ActionState.SCHEDULED: 2}


def test_move_from_several_states_across_waves_counts_and_rolls_back(engine, store):
    campaign = make(engine, store, n=6, waves=(WaveSpec(count=2), WaveSpec(count=2)))
    keys = all_keys(store, campaign)

    def prepare(tx):
        # Wave 0 pending, one of its actions notified; wave 1 pending; wave 2 scheduled.
        for wave in (0, 1):
            tx.move_actions(
                campaign.key,
                wave=wave,
                states=(ActionState.SCHEDULED,),
                to=ActionState.PENDING,
                at=1.0,
            )
        first = tx.get_action(keys[0])
        notified = first.advanced(ActionState.NOTIFIED, 2.0, 1, 0, "", "")
        assert tx.update_action(notified, expected=ActionState.PENDING)

    store.run(prepare)
    before_counts = store.run(lambda tx: tx.wave_counts(campaign.key))
    before_actions = store.run(lambda tx: tx.list_actions(campaign.key, limit=100))
    assert before_counts == {
        0: {ActionState.PENDING: 1, ActionState.NOTIFIED: 1},
        1: {ActionState.PENDING: 2},
        2: {ActionState.SCHEDULED: 2},
    }
    cancelable = (ActionState.SCHEDULED, ActionState.PENDING, ActionState.NOTIFIED)

    def cancel(tx, limit=None):
        return tx.move_actions(
            campaign.key, wave=None, states=cancelable, to=ActionState.CANCELED, at=3.0, limit=limit
        )

    class Boom(Exception):
        pass

    def canceled_then_failed(tx):
        # Single updates before and after the batch, undone with it in reverse order.
        pending = tx.get_action(keys[1])
        assert tx.update_action(
            pending.advanced(ActionState.NOTIFIED, 2.5, 1, 0, "", ""),
            expected=ActionState.PENDING,
        )
        assert cancel(tx) == 6
        assert tx.wave_counts(campaign.key) == {w: {ActionState.CANCELED: 2} for w in range(3)}
        again = tx.get_action(keys[0])
        assert tx.update_action(
            again.advanced(ActionState.CANCELED, 4.0, 7, 0, "", ""),
            expected=ActionState.CANCELED,
        )
        raise Boom

    with pytest.raises(Boom):
        store.run(canceled_then_failed)
    assert store.run(lambda tx: tx.wave_counts(campaign.key)) == before_counts
    assert store.run(lambda tx: tx.list_actions(campaign.key, limit=100)) == before_actions
    # A bounded move across waves stops at its limit, lowest keys first.
    assert store.run(lambda tx: cancel(tx, limit=3)) == 3
    assert store.run(lambda tx: tx.wave_counts(campaign.key)) == {
        0: {ActionState.CANCELED: 2},
        1: {ActionState.CANCELED: 1, ActionState.PENDING: 1},
        2: {ActionState.SCHEDULED: 2},
    }
    moved = store.run(lambda tx: tx.list_actions(campaign.key, limit=100))
    assert [a.key for a in moved if a.state is ActionState.CANCELED] == keys[:3]
    assert all(a.updated_at == 3.0 for a in moved[:3])
    assert moved[0].attempts == 1  # what the move does not change, it keeps


def test_a_move_into_a_state_it_is_asked_to_move_from_leaves_those_actions_alone(engine, store):
    campaign = make(engine, store, n=6, waves=(WaveSpec(count=2), WaveSpec(count=2)))
    keys = all_keys(store, campaign)

    def move(states, to, *, wave=None, limit=None):
        return lambda tx: tx.move_actions(
            campaign.key, wave=wave, states=states, to=to, at=2.0, limit=limit
        )

    scheduled = (ActionState.SCHEDULED,)
    # Nothing moves, and nothing is left behind for the next move to skip.
    assert store.run(move(scheduled, ActionState.SCHEDULED)) == 0
    assert store.run(move(scheduled, ActionState.SCHEDULED, wave=0, limit=1)) == 0
    assert store.run(move(scheduled, ActionState.PENDING, wave=0)) == 2
    assert pending_keys(store, campaign) == keys[:2]
    # Only the actions in the other states count against the limit and in the result.
    both = (ActionState.PENDING, ActionState.CANCELED)
    assert store.run(move((ActionState.PENDING,), ActionState.CANCELED, limit=1)) == 1
    assert store.run(move(both, ActionState.CANCELED, limit=1)) == 1
    assert store.run(move(both, ActionState.CANCELED)) == 0
    assert store.run(lambda tx: tx.wave_counts(campaign.key)) == {
        0: {ActionState.CANCELED: 2},
        1: {ActionState.SCHEDULED: 2},
        2: {ActionState.SCHEDULED: 2},
    }


def test_a_bounded_move_that_ends_at_a_wave_end_goes_on_in_the_next_wave(engine, store):
    campaign = make(engine, store, n=6, waves=(WaveSpec(count=2), WaveSpec(count=2)))
    keys = all_keys(store, campaign)

    assert store.run(release(campaign, 2)) == 2  # exactly wave 0
    assert pending_keys(store, campaign) == keys[:2]
    assert store.run(release(campaign, 2)) == 2  # exactly wave 1
    assert pending_keys(store, campaign) == keys[:4]
    assert store.run(release(campaign, 5)) == 2  # what is left
    assert store.run(release(campaign, 5)) == 0
    assert pending_keys(store, campaign) == keys
    assert store.run(lambda tx: tx.wave_counts(campaign.key)) == {
        w: {ActionState.PENDING: 2} for w in range(3)
    }


def test_the_memory_store_runs_one_transaction_at_a_time_as_it_says(tmp_path):
    import threading

    from backend_stub.store import MemoryStore
    from backend_stub.store.sql import SqlStore, sqlite_url

    store = MemoryStore()
    inside = threading.Event()
    leave = threading.Event()
    order: list[str] = []
    said: list[bool] = []

    def slow(tx):
        order.append("first in")
        inside.set()
        assert leave.wait(10)
        order.append("first out")
        return tx.serialised

    first = threading.Thread(target=lambda: said.append(store.run(slow)))
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=lambda: store.run(lambda tx: order.append("second")))
    second.start()
    second.join(0.2)
    assert second.is_alive()  # held off while the first runs
    leave.set()
    first.join(10)
    second.join(10)
    assert order == ["first in", "first out", "second"]
    assert said == [True]
    # The SQL store's transactions run side by side: the engine reads again after a lock.
    sql = SqlStore(sqlite_url(tmp_path))
    try:
        assert sql.run(lambda tx: tx.serialised, write=False) is False
    finally:
        sql.close()


def test_memory_bounded_move_is_amortised():
    from backend_stub.store import MemoryStore

    store = MemoryStore()
    engine = CampaignEngine(store, FakeClock())
    campaign = make(engine, store, n=2000, waves=())
    visited = 0
    real = store.actions

    class Counting(dict):
        def __getitem__(self, key):
            nonlocal visited
            visited += 1
            return super().__getitem__(key)

    store.actions = Counting(real)
    for _ in range(200):
        store.run(
            lambda tx: tx.move_actions(
                campaign.key,
                wave=0,
                states=(ActionState.SCHEDULED,),
                to=ActionState.PENDING,
                at=1.0,
                limit=5,
            )
        )
    # 1000 moved in 200 moves of 5: each action read once, not a scan from the start.
    assert visited <= 1000 * 2


# --------------------------------------------------------------- abort criteria
def test_abort_criterion_fires_exactly_at_its_threshold_after_min_executed(engine, store):
    campaign = make(
        engine,
        store,
        n=10,
        waves=(WaveSpec(count=8),),
        success_threshold_pct=100,
        error_threshold_pct=100,
        abort_criteria=(AbortCriterion("failed", 20.0, 5),),
    )
    cid = campaign.campaign_id
    engine.start(cid)
    deliver(engine, 0, ActionState.FAILED)  # 1 of 1: 100 %, but fewer than 5 executed
    for n in (1, 2, 3):
        deliver(engine, n)
    assert engine.status(cid).campaign.state is CampaignState.RUNNING  # 1 of 4
    (installing,) = engine.check_in(vin(4))
    report(engine, vin(4), installing.action.deployment_id, ActionState.INSTALLING)
    engine.check_in(vin(5))  # notified
    deliver(engine, 6)  # 1 of 5 executed failed: 20 % >= 20 %
    status = engine.status(cid)
    assert status.campaign.state is CampaignState.ABORTED
    reason = "abort criterion: 1 of 5 executed vehicles failed (20% >= 20%)"
    assert status.campaign.pause_reason == reason
    (aborted,) = events_of(store, campaign, "aborted")
    assert aborted.detail == f"{reason}; 4 action(s) canceled"
    # Canceled: notified (5), pending (7) and scheduled (8, 9); installing (4) is left alone.
    assert status.totals() == {
        ActionState.SUCCEEDED: 4,
        ActionState.FAILED: 1,
        ActionState.INSTALLING: 1,
        ActionState.CANCELED: 4,
    }


def test_abort_criteria_count_across_waves_and_by_kind(engine, store):
    campaign = make(
        engine,
        store,
        n=10,
        waves=(WaveSpec(count=2),),
        success_threshold_pct=50,
        error_threshold_pct=100,
        abort_criteria=(
            AbortCriterion("rolled_back", 60.0, 2),
            AbortCriterion("any", 75.0, 4),
        ),
    )
    cid = campaign.campaign_id
    engine.start(cid)
    deliver(engine, 0)
    deliver(engine, 1, ActionState.ROLLED_BACK)  # 1 of 2 rolled back: 50 % < 60 %
    assert engine.status(cid).campaign.current_wave == 1  # wave 0 passed at 50 %
    deliver(engine, 2, ActionState.FAILED)  # rolled back 1 of 3; any 2 of 3 (< 4 executed)
    assert engine.status(cid).campaign.state is CampaignState.RUNNING
    deliver(engine, 3, ActionState.FAILED)  # any: 3 of 4 = 75 %, over two waves
    status = engine.status(cid)
    assert status.campaign.state is CampaignState.ABORTED
    assert status.campaign.pause_reason == (
        "abort criterion: 3 of 4 executed vehicles failed or rolled back (75% >= 75%)"
    )


def test_retried_failures_count_only_when_final(engine, store):
    campaign = make(
        engine,
        store,
        n=3,
        waves=(),
        max_retries=1,
        error_threshold_pct=100,
        abort_criteria=(AbortCriterion("failed", 50.0, 1),),
    )
    cid = campaign.campaign_id
    engine.start(cid)
    first = deliver(engine, 0, ActionState.FAILED)
    assert first.action.state is ActionState.PENDING  # retry left: not executed yet
    assert engine.status(cid).campaign.state is CampaignState.RUNNING
    deliver(engine, 0, ActionState.FAILED)
    assert engine.status(cid).campaign.state is CampaignState.ABORTED


def one_success_then_abort_at_half(engine, store):
    """Four vehicles, the first updated; abort once half of two or more executed failed."""
    campaign = make(
        engine,
        store,
        n=4,
        waves=(),
        action_timeout_s=60,
        error_threshold_pct=100,
        abort_criteria=(AbortCriterion("any", 50.0, 2),),
    )
    engine.start(campaign.campaign_id)
    deliver(engine, 0)
    return campaign


def test_abort_criteria_apply_while_paused_and_on_tick(engine, store, clock):
    campaign = one_success_then_abort_at_half(engine, store)
    cid = campaign.campaign_id
    assert engine.check_in(vin(1))  # notified, then silent
    engine.pause(cid, "night")
    clock.advance(61)
    assert engine.tick() == 1  # the silent vehicle times out: 1 of 2 failed while paused
    status = engine.status(cid)
    assert status.campaign.state is CampaignState.ABORTED
    assert status.campaign.pause_reason.startswith("abort criterion: 1 of 2 executed")


def test_tick_counts_only_the_actions_it_timed_out(engine, store, clock):
    campaign = one_success_then_abort_at_half(engine, store)
    cid = campaign.campaign_id
    for n in (1, 2, 3):
        assert engine.check_in(vin(n))  # notified, then silent
    clock.advance(61)
    # The first silent vehicle's timeout makes 1 of 2 executed fail: the abort
    # cancels the other two, which this tick then did not time out.
    assert engine.tick() == 1
    states = {a.vin: a.state for a in store.run(lambda tx: tx.list_actions(campaign.key))}
    assert states == {
        vin(0): ActionState.SUCCEEDED,
        vin(1): ActionState.FAILED,
        vin(2): ActionState.CANCELED,
        vin(3): ActionState.CANCELED,
    }
    assert engine.status(cid).campaign.state is CampaignState.ABORTED
    assert engine.tick() == 0


def test_abort_while_paused_on_a_report(engine, store):
    campaign = make(
        engine,
        store,
        n=4,
        waves=(),
        error_threshold_pct=100,
        abort_criteria=(AbortCriterion("failed", 100.0, 1),),
    )
    cid = campaign.campaign_id
    engine.start(cid)
    (offer,) = engine.check_in(vin(0))
    report(engine, vin(0), offer.action.deployment_id, ActionState.INSTALLING)
    engine.pause(cid)
    report(engine, vin(0), offer.action.deployment_id, ActionState.FAILED)
    assert engine.status(cid).campaign.state is CampaignState.ABORTED


def test_abort_criteria_come_before_the_error_threshold(engine, store):
    campaign = make(
        engine,
        store,
        n=10,
        waves=(),
        error_threshold_pct=10,
        abort_criteria=(AbortCriterion("failed", 10.0, 1),),
    )
    engine.start(campaign.campaign_id)
    deliver(engine, 0, ActionState.FAILED)  # both rules hold: abort wins over a pause
    assert engine.status(campaign.campaign_id).campaign.state is CampaignState.ABORTED


@pytest.mark.parametrize(
    ("criteria", "match"),
    [
        ((AbortCriterion("failed", 0.0, 1),), r"abort_criteria\[0\]\.threshold_pct"),
        ((AbortCriterion("failed", 100.5, 1),), r"abort_criteria\[0\]\.threshold_pct"),
        ((AbortCriterion("failed", float("nan"), 1),), r"abort_criteria\[0\]\.threshold_pct"),
        ((AbortCriterion("failed", 5.0, 0),), r"abort_criteria\[0\]\.min_executed"),
        ((AbortCriterion("bogus", 5.0, 1),), r"abort_criteria\[0\]\.failure"),  # type: ignore[arg-type]
        ((AbortCriterion("any", 5.0, 1),) * 11, "at most 10 abort criteria"),
    ],
)
def test_abort_criteria_are_checked(engine, store, criteria, match):
    (rel,) = seed(store, [vehicle(0)])
    with pytest.raises(InvalidArgument, match=match):
        engine.create(CampaignSpec(name="c", release_id=rel.release_id, abort_criteria=criteria))


def test_reports_read_the_counts_once(monkeypatch):
    """The hot path: one wave_counts read per final report, with or without criteria."""
    from backend_stub.store import MemoryStore
    from backend_stub.store.memory import _MemoryTx

    calls = []
    real = _MemoryTx.wave_counts

    def counting(self, campaign_key, wave=None):
        calls.append(wave)
        return real(self, campaign_key, wave)

    monkeypatch.setattr(_MemoryTx, "wave_counts", counting)
    for criteria in ((), (AbortCriterion("failed", 50.0, 100),)):
        store = MemoryStore()
        engine = CampaignEngine(store, FakeClock())
        campaign = make(engine, store, n=10, waves=(), abort_criteria=criteria)
        engine.start(campaign.campaign_id)
        (offer,) = engine.check_in(vin(0))
        calls.clear()
        report(engine, vin(0), offer.action.deployment_id, ActionState.DOWNLOADING)
        assert calls == []
        report(engine, vin(0), offer.action.deployment_id, ActionState.SUCCEEDED)
        assert len(calls) == 1, (criteria, calls)


# ------------------------------------------------------------ schema migration
V1_CAMPAIGN_COLUMNS = [
    "key",
    "name",
    "release_key",
    "state",
    "filter",
    "wave_sizes",
    "success_threshold_pct",
    "error_threshold_pct",
    "max_retries",
    "action_timeout_s",
    "target_count",
    "excluded_count",
    "created_at",
    "updated_at",
    "current_wave",
    "pause_reason",
    "accepted_waves",
    "auto_paused",
    "request_id",
]


def downgrade_to_v1(url: str) -> None:
    """Turn a database made by this backend into what a version-1 backend left behind."""
    import sqlalchemy as sa

    from backend_stub.store.sql import _V2_CAMPAIGN_COLUMNS

    admin = sa.create_engine(url)
    try:
        with admin.begin() as conn:
            for name in _V2_CAMPAIGN_COLUMNS:
                conn.exec_driver_sql(f"ALTER TABLE campaigns DROP COLUMN {name}")
            conn.exec_driver_sql("DROP INDEX ix_actions_wave_state_key")
            conn.exec_driver_sql(
                "CREATE INDEX ix_actions_wave_state ON actions (campaign_key, wave, state)"
            )
            conn.exec_driver_sql("UPDATE schema_info SET version = 1")
        with admin.connect() as conn:
            inspector = sa.inspect(conn)
            assert [c["name"] for c in inspector.get_columns("campaigns")] == V1_CAMPAIGN_COLUMNS
    finally:
        admin.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_version_1_database_is_migrated_in_place(kind, tmp_path, request):
    import sqlalchemy as sa

    from backend_stub.errors import StoreError
    from backend_stub.store.sql import SCHEMA_VERSION, SqlStore, sqlite_url

    url = sqlite_url(tmp_path) if kind == "sqlite" else request.getfixturevalue("pg_url")
    clock = FakeClock()
    store = SqlStore(url)
    engine = CampaignEngine(store, clock)
    old = make(engine, store, n=4, waves=(WaveSpec(count=2),), success_threshold_pct=100)
    engine.start(old.campaign_id)
    deliver(engine, 0)
    before = engine.status(old.campaign_id)
    store.close()
    downgrade_to_v1(url)

    store = SqlStore(url)  # migrates
    try:
        engine = CampaignEngine(store, clock)
        after = engine.status(old.campaign_id)
        # The campaign as a version-1 backend knew it, with the new rules off.
        assert after.campaign == before.campaign.with_changes(
            started_at=None, wave_start_after_s=()
        )
        assert after.wave_counts == before.wave_counts
        deliver(engine, 1)
        deliver(engine, 2)
        deliver(engine, 3)
        assert engine.status(old.campaign_id).campaign.state is CampaignState.COMPLETED
        # The new rules work on the migrated database.
        new = engine.create(
            CampaignSpec(
                name="new",
                release_id=old.release_id,
                waves=(WaveSpec(count=1, start_after_s=30.5),),
                rollout_rate=RolloutRate(60, 2.0, 10, "succeeded", 600),
                abort_criteria=(AbortCriterion("rolled_back", 12.5, 3),),
                force=True,
            )
        )
        stored = engine.status(new.campaign_id).campaign
        assert stored == new
        assert stored.wave_start_after_s == (30.5, 0.0)
        assert stored.rollout_rate == RolloutRate(60, 2.0, 10, "succeeded", 600)
        assert stored.abort_criteria == (AbortCriterion("rolled_back", 12.5, 3),)
    finally:
        store.close()
    admin = sa.create_engine(url)
    try:
        with admin.begin() as conn:
            assert conn.exec_driver_sql("SELECT version FROM schema_info").scalars().all() == [
                SCHEMA_VERSION
            ]
            indexes = {i["name"] for i in sa.inspect(conn).get_indexes("actions")}
            assert "ix_actions_wave_state_key" in indexes
            assert "ix_actions_wave_state" not in indexes
            # A database from a newer backend is refused, not "migrated".
            conn.exec_driver_sql(f"UPDATE schema_info SET version = {SCHEMA_VERSION + 1}")
    finally:
        admin.dispose()
    with pytest.raises(StoreError, match="schema version 3"):
        SqlStore(url)
