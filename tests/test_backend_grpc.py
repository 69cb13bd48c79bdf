"""The backend over real gRPC on 127.0.0.1: every RPC's happy path and its refusals."""

from __future__ import annotations

import hashlib
import threading
import urllib.request

import grpc
import pytest
from backend_helpers import TIMEOUT, code_of, demo_ecus
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import make_image, wait_for

from backend_stub.api import campaign_pb2, common_pb2, device_pb2, update_pb2
from ota_formats.release import verify_manifest

VIN = "WHLDMV00000000001"
OTHER = "WHLDMV00000000002"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture
def images(demo):
    return {ecu.name: make_image(ecu, "2.0.0", 2, size=20_000) for ecu in demo.ecus}


@pytest.fixture
def release(client, images):
    shas = [(name, client.upload(data).sha256) for name, data in images.items()]
    return client.release(shas)


def running_campaign(client, release, vins=(VIN,), **kw):
    for v in vins:
        client.register(v)
    created = client.campaign_create(release.release_id, **kw)
    return client.campaign.StartCampaign(
        campaign_pb2.CampaignRequest(campaign_id=created.campaign_id), timeout=TIMEOUT
    )


def test_health_is_serving(backend):
    with grpc.insecure_channel(f"127.0.0.1:{backend.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "hil.ota.v1.DeviceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_upload_is_checked_and_content_addressed(client, images, demo):
    data = images["ecm"]
    first = client.upload(data)
    assert first.sha256 == hashlib.sha256(data).hexdigest()
    assert (first.hardware_id, first.version, first.anti_rollback) == (
        demo.ecu("ecm").hardware_id,
        "2.0.0",
        2,
    )
    assert not first.already_existed
    assert client.upload(data).already_existed
    fetched = client.update.GetArtifact(update_pb2.GetArtifactRequest(sha256=first.sha256))
    assert fetched.size_bytes == len(data)
    # Refusals: wrong digest, wrong size, tampered payload, unsigned junk, no header.
    assert code_of(lambda: client.upload(data, sha="0" * 64)) == INVALID
    assert code_of(lambda: client.upload(data, size=len(data) + 1)) == INVALID
    assert code_of(lambda: client.upload(data, sha="XYZ")) == INVALID
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    assert code_of(lambda: client.upload(tampered)) == INVALID
    assert code_of(lambda: client.upload(b"not an image" * 100)) == INVALID
    only_data = iter([update_pb2.UploadArtifactRequest(data=b"x")])
    assert code_of(lambda: client.update.UploadArtifact(only_data, timeout=TIMEOUT)) == INVALID
    empty = iter([])
    assert code_of(lambda: client.update.UploadArtifact(empty, timeout=TIMEOUT)) == INVALID
    assert (
        code_of(lambda: client.update.GetArtifact(update_pb2.GetArtifactRequest(sha256="a" * 64)))
        == NOT_FOUND
    )
    listed = client.update.ListArtifacts(update_pb2.ListArtifactsRequest(), timeout=TIMEOUT)
    assert [a.sha256 for a in listed.artifacts] == [first.sha256]


def test_upload_size_limit(backend, client, images):
    limit = backend.backend.limits.max_artifact_bytes
    data = images["ecm"]
    assert code_of(lambda: client.upload(data, size=limit + 1)) == INVALID


def test_release_is_signed_by_the_backend(backend, client, release, images):
    manifest = verify_manifest(release.metadata, release.signature, [backend.release_public_key])
    assert manifest.release_id == release.release_id
    assert [i.ecu for i in manifest.images] == list(images)
    assert [i.sha256 for i in manifest.images] == [i.sha256 for i in release.images]
    assert release.images[0].compatible_hardware_ids == [release.images[0].hardware_id]
    got = client.update.GetRelease(update_pb2.GetReleaseRequest(release_id=release.release_id))
    assert got.metadata == release.metadata
    # Refusals
    shas = [(i.ecu, i.sha256) for i in release.images]
    assert code_of(lambda: client.release(shas)) == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(lambda: client.release([("ecm", "b" * 64)], version="3")) == NOT_FOUND
    assert code_of(lambda: client.release([], version="3")) == INVALID
    assert code_of(lambda: client.release([shas[0], shas[0]], version="3")) == INVALID
    assert code_of(lambda: client.release(shas, name="", version="3")) == INVALID
    bad_compat = update_pb2.CreateReleaseRequest(
        name="x",
        version="1",
        images=[
            update_pb2.ReleaseImage(ecu="ecm", sha256=shas[0][1], compatible_hardware_ids=["Z"])
        ],
    )
    assert code_of(lambda: client.update.CreateRelease(bad_compat, timeout=TIMEOUT)) == INVALID
    for rid in ("rel-999", "nonsense", ""):
        assert (
            code_of(
                lambda rid=rid: client.update.GetRelease(
                    update_pb2.GetReleaseRequest(release_id=rid)
                )
            )
            == NOT_FOUND
        )
    listed = client.update.ListReleases(update_pb2.ListReleasesRequest(), timeout=TIMEOUT)
    assert [r.release_id for r in listed.releases] == [release.release_id]


def test_register_check_in_telemetry_and_listing(client):
    vehicle = client.register(VIN, model="demo", tags=["eu", "fleet-a"])
    assert vehicle.vin == VIN and len(vehicle.ecus) == 3 and vehicle.state == "registered"
    client.register(OTHER, model="other", ecus=demo_ecus(ecm_hw="HW-X"))
    reply = client.check_in(VIN)
    assert list(reply.deployments) == [] and reply.next_checkin_s > 0
    client.device.CheckIn(device_pb2.CheckInRequest(vin=VIN, state="parked"), timeout=TIMEOUT)
    client.device.ReportTelemetry(
        device_pb2.ReportTelemetryRequest(vin=VIN, values={"battery_v": 12.6}), timeout=TIMEOUT
    )
    got = client.device.GetVehicle(device_pb2.GetVehicleRequest(vin=VIN), timeout=TIMEOUT)
    assert got.checkins == 2 and got.state == "parked" and got.telemetry["battery_v"] == 12.6
    assert got.last_seen_at.seconds >= got.registered_at.seconds

    def listed(**flt):
        request = device_pb2.ListVehiclesRequest(filter=common_pb2.VehicleFilter(**flt))
        return [v.vin for v in client.device.ListVehicles(request, timeout=TIMEOUT).vehicles]

    assert listed() == [VIN, OTHER]
    assert listed(model="other") == [OTHER]
    assert listed(tags=["eu"]) == [VIN]
    assert listed(hardware_id="HW-X") == [OTHER]
    assert listed(ecu_name="ecm", software_version="1.0.0") == [VIN, OTHER]
    page = client.device.ListVehicles(device_pb2.ListVehiclesRequest(page_size=1), timeout=TIMEOUT)
    assert [v.vin for v in page.vehicles] == [VIN] and page.next_page_token == VIN
    rest = client.device.ListVehicles(
        device_pb2.ListVehiclesRequest(page_size=1, page_token=page.next_page_token),
        timeout=TIMEOUT,
    )
    assert [v.vin for v in rest.vehicles] == [OTHER]
    # Refusals
    assert code_of(lambda: client.register("SHORT")) == INVALID
    assert code_of(lambda: client.register("WHLDMV0000000000I")) == INVALID  # I is not allowed
    bad_ecu = [common_pb2.EcuInfo(name="Bad Name")]
    assert code_of(lambda: client.register(VIN, ecus=bad_ecu)) == INVALID
    dup = [common_pb2.EcuInfo(name="ecm"), common_pb2.EcuInfo(name="ecm")]
    assert code_of(lambda: client.register(VIN, ecus=dup)) == INVALID
    assert code_of(lambda: client.check_in("WHLDMV00000000099")) == NOT_FOUND
    nan = device_pb2.ReportTelemetryRequest(vin=VIN, values={"x": float("nan")})
    assert code_of(lambda: client.device.ReportTelemetry(nan, timeout=TIMEOUT)) == INVALID
    assert code_of(lambda: listed(software_version="1.0.0")) == INVALID
    bad_page = device_pb2.ListVehiclesRequest(page_size=100_000)
    assert code_of(lambda: client.device.ListVehicles(bad_page, timeout=TIMEOUT)) == INVALID


def test_deployment_flow_with_report_idempotency(client, release):
    campaign = running_campaign(client, release, success_threshold_pct=100)
    assert campaign.state == common_pb2.CAMPAIGN_STATE_RUNNING
    (notice,) = client.check_in(VIN).deployments
    assert notice.state == common_pb2.ACTION_STATE_NOTIFIED
    deployment = client.update.GetDeployment(
        update_pb2.GetDeploymentRequest(vin=VIN, deployment_id=notice.deployment_id),
        timeout=TIMEOUT,
    )
    assert deployment.release.release_id == release.release_id
    assert deployment.release.signature == release.signature
    dep = notice.deployment_id
    client.report(VIN, dep, "DOWNLOADING", progress_pct=10)
    client.report(VIN, dep, "INSTALLING")
    done = client.report(VIN, dep, "SUCCEEDED", report_id="final-1")
    assert done.state == common_pb2.ACTION_STATE_SUCCEEDED and not done.duplicate
    again = client.report(VIN, dep, "SUCCEEDED", report_id="final-1")
    assert again.duplicate
    status = client.campaign.GetCampaign(
        campaign_pb2.CampaignRequest(campaign_id=campaign.campaign_id), timeout=TIMEOUT
    )
    assert status.state == common_pb2.CAMPAIGN_STATE_COMPLETED
    assert [(c.state, c.count) for c in status.counts] == [(common_pb2.ACTION_STATE_SUCCEEDED, 1)]
    # Refusals: illegal transition, bad state, unknown deployment, no report id.
    assert code_of(lambda: client.report(VIN, dep, "FAILED")) == FAILED
    assert code_of(lambda: client.report(VIN, dep, "CANCELED")) == INVALID
    assert code_of(lambda: client.report(VIN, dep, "UNSPECIFIED")) == INVALID
    assert code_of(lambda: client.report(VIN, "dep-99999", "FAILED")) == NOT_FOUND
    assert code_of(lambda: client.report(VIN, dep, "FAILED", report_id="")) == INVALID


def test_campaign_operations_and_refusals(client, release):
    client.register(VIN)
    client.register(OTHER)
    created = client.campaign_create(
        release.release_id,
        waves=[campaign_pb2.WaveSpec(count=1)],
        error_threshold_pct=50,
    )
    cid = created.campaign_id
    assert created.state == common_pb2.CAMPAIGN_STATE_DRAFT
    assert [w.size for w in created.waves] == [1, 1]

    def op(verb, **kw):
        return getattr(client.campaign, verb)(
            campaign_pb2.CampaignRequest(campaign_id=cid, **kw), timeout=TIMEOUT
        )

    assert code_of(lambda: op("ResumeCampaign")) == FAILED
    assert code_of(lambda: op("PauseCampaign")) == FAILED
    op("StartCampaign")
    assert code_of(lambda: op("StartCampaign")) == FAILED
    paused = op("PauseCampaign", reason="hold")
    assert paused.state == common_pb2.CAMPAIGN_STATE_PAUSED and paused.pause_reason == "hold"
    assert op("ResumeCampaign").state == common_pb2.CAMPAIGN_STATE_RUNNING
    (notice,) = client.check_in(VIN).deployments
    client.report(VIN, notice.deployment_id, "FAILED", failure_step="flash", failure_reason="x")
    auto = op("GetCampaign")
    assert auto.state == common_pb2.CAMPAIGN_STATE_PAUSED
    assert "error threshold" in auto.pause_reason
    actions = client.campaign.ListActions(
        campaign_pb2.ListActionsRequest(campaign_id=cid, states=[common_pb2.ACTION_STATE_FAILED]),
        timeout=TIMEOUT,
    )
    assert [(a.vin, a.failure_step) for a in actions.actions] == [(VIN, "flash")]
    aborted = op("AbortCampaign", reason="stop")
    assert aborted.state == common_pb2.CAMPAIGN_STATE_ABORTED
    assert code_of(lambda: op("ResumeCampaign")) == FAILED
    listed = client.campaign.ListCampaigns(campaign_pb2.ListCampaignsRequest(), timeout=TIMEOUT)
    assert [c.campaign_id for c in listed.campaigns] == [cid]
    # Creation refusals
    assert code_of(lambda: client.campaign_create("rel-999")) == NOT_FOUND
    assert code_of(lambda: client.campaign_create("bogus")) == INVALID
    assert code_of(lambda: client.campaign_create(release.release_id, name="")) == INVALID
    nobody = common_pb2.VehicleFilter(model="none")
    assert code_of(lambda: client.campaign_create(release.release_id, filter=nobody)) == FAILED
    assert (
        code_of(lambda: client.campaign_create(release.release_id, success_threshold_pct=120))
        == INVALID
    )
    no_size = [campaign_pb2.WaveSpec()]
    assert code_of(lambda: client.campaign_create(release.release_id, waves=no_size)) == INVALID
    missing = campaign_pb2.CampaignRequest(campaign_id="cmp-424242")
    assert code_of(lambda: client.campaign.GetCampaign(missing, timeout=TIMEOUT)) == NOT_FOUND


def test_campaign_rules_round_trip_over_grpc(client, release):
    client.register(VIN)
    client.register(OTHER)
    created = client.campaign_create(
        release.release_id,
        waves=[
            campaign_pb2.WaveSpec(count=1, start_after_s=0),
            campaign_pb2.WaveSpec(count=1, start_after_s=3600),
        ],
        success_threshold_pct=100,
        rollout_rate=campaign_pb2.RolloutRate(
            base_per_minute=6000,
            increment_factor=2.0,
            increase_every=1,
            increase_on=campaign_pb2.RATE_INCREASE_ON_SUCCEEDED,
            maximum_per_minute=9000,
        ),
        abort_criteria=[
            campaign_pb2.AbortCriterion(
                failure=campaign_pb2.ABORT_FAILURE_ROLLED_BACK, threshold_pct=50, min_executed=2
            )
        ],
    )
    assert [(w.size, w.start_after_s) for w in created.waves] == [(1, 0.0), (1, 3600.0)]
    assert not created.HasField("started_at")
    assert not any(w.HasField("starts_at") for w in created.waves)
    rate = created.rollout_rate
    assert (rate.base_per_minute, rate.increment_factor, rate.increase_every) == (6000, 2.0, 1)
    assert rate.increase_on == campaign_pb2.RATE_INCREASE_ON_SUCCEEDED
    assert rate.maximum_per_minute == 9000
    assert (created.rate_per_minute, created.released) == (6000.0, 0)
    (criterion,) = created.abort_criteria
    assert criterion.failure == campaign_pb2.ABORT_FAILURE_ROLLED_BACK
    assert (criterion.threshold_pct, criterion.min_executed) == (50.0, 2)

    def get():
        request = campaign_pb2.CampaignRequest(campaign_id=created.campaign_id)
        return client.campaign.GetCampaign(request, timeout=TIMEOUT)

    started = client.campaign.StartCampaign(
        campaign_pb2.CampaignRequest(campaign_id=created.campaign_id), timeout=TIMEOUT
    )
    assert started.HasField("started_at")
    assert [w.started for w in started.waves] == [True, False]
    assert not started.waves[0].HasField("starts_at")  # no time gate
    gate = started.waves[1].starts_at.ToNanoseconds() - started.started_at.ToNanoseconds()
    assert gate == 3600 * 10**9
    # The backend's ticker releases wave 0 at the rate.
    offers: list = []
    assert wait_for(lambda: offers.extend(client.check_in(VIN).deployments) or offers)
    assert get().released == 1
    client.report(VIN, offers[0].deployment_id, "SUCCEEDED")
    # Wave 0 passed, but wave 1 waits an hour; one success doubles the rate, capped.
    assert wait_for(lambda: get().rate_per_minute == 9000.0)
    status = get()
    assert status.current_wave == 0 and [w.started for w in status.waves] == [True, False]
    assert client.check_in(OTHER).deployments == []


def test_campaign_rules_are_checked_over_grpc(client, release):
    client.register(VIN)

    def create(**kw):
        return lambda: client.campaign_create(release.release_id, **kw)

    def rate(**kw):
        return create(rollout_rate=campaign_pb2.RolloutRate(**{"base_per_minute": 10, **kw}))

    def criterion(**kw):
        fields = {"failure": campaign_pb2.ABORT_FAILURE_FAILED, "threshold_pct": 5}
        fields["min_executed"] = 1
        return create(abort_criteria=[campaign_pb2.AbortCriterion(**{**fields, **kw})])

    def details(call):
        try:
            call()
        except grpc.RpcError as exc:
            assert exc.code() == INVALID, exc
            return exc.details()
        raise AssertionError("the call succeeded")

    assert "start_after_s" in details(
        create(waves=[campaign_pb2.WaveSpec(count=1, start_after_s=-1)])
    )
    assert "start_after_s" in details(
        create(waves=[campaign_pb2.WaveSpec(percent=5, start_after_s=float("nan"))])
    )
    assert "base_per_minute" in details(rate(base_per_minute=0))
    assert "increment_factor" in details(rate(increment_factor=9))
    assert "increment_factor" in details(rate(increment_factor=0))
    assert "maximum_per_minute" in details(rate(maximum_per_minute=5))
    assert "increase_on" in details(rate(increase_on=7))
    assert "failure is required" in details(criterion(failure=0))
    assert "threshold_pct" in details(criterion(threshold_pct=0))
    assert "threshold_pct" in details(criterion(threshold_pct=100.1))
    assert "min_executed" in details(criterion(min_executed=0))
    eleven = [campaign_pb2.AbortCriterion(failure=3, threshold_pct=5, min_executed=1)] * 11
    assert "at most 10" in details(create(abort_criteria=eleven))
    # Unset optional fields take their defaults.
    plain = client.campaign_create(
        release.release_id, rollout_rate=campaign_pb2.RolloutRate(base_per_minute=10)
    )
    assert plain.rollout_rate.increment_factor == 1.0
    assert plain.rollout_rate.increase_on == campaign_pb2.RATE_INCREASE_ON_NOTIFIED
    assert plain.rollout_rate.maximum_per_minute == 100_000


def test_watch_streams_events_until_the_campaign_ends(client, release):
    campaign = running_campaign(client, release)
    events: list = []

    def watch():
        request = campaign_pb2.WatchCampaignRequest(campaign_id=campaign.campaign_id)
        events.extend(client.campaign.WatchCampaign(request, timeout=TIMEOUT))

    watcher = threading.Thread(target=watch)
    watcher.start()
    (notice,) = client.check_in(VIN).deployments
    client.report(VIN, notice.deployment_id, "SUCCEEDED")
    watcher.join(TIMEOUT)
    assert not watcher.is_alive()
    kinds = [e.kind for e in events]
    assert kinds[:3] == ["created", "started", "wave_started"]
    assert kinds[-1] == "completed"
    assert [e.event_id for e in events] == sorted({e.event_id for e in events})
    later = list(
        client.campaign.WatchCampaign(
            campaign_pb2.WatchCampaignRequest(
                campaign_id=campaign.campaign_id, after_event_id=events[-2].event_id
            ),
            timeout=TIMEOUT,
        )
    )
    assert [e.kind for e in later] == ["completed"]


def test_download_resumes_at_an_offset_and_is_restricted(client, release, images):
    image = release.images[0]
    assert (
        code_of(lambda: client.download(image.sha256, vin_=VIN))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    running_campaign(client, release, vins=(VIN, OTHER))
    client.check_in(VIN)
    whole = b"".join(c.data for c in client.download(image.sha256, vin_=VIN, chunk_size=4096))
    assert whole == images["ecm"]
    # A transfer cut after three chunks continues from the last offset received.
    received = bytearray()
    stream = client.download(image.sha256, vin_=VIN, chunk_size=1000)
    for chunk in stream:
        assert chunk.offset == len(received)
        received += chunk.data
        if len(received) >= 3000:
            stream.cancel()
            break
    for chunk in client.download(image.sha256, offset=len(received), vin_=VIN):
        assert chunk.offset == len(received)
        received += chunk.data
    assert bytes(received) == images["ecm"]
    assert hashlib.sha256(received).hexdigest() == image.sha256
    # The other vehicle has not been notified yet: no download for it.
    denied = code_of(lambda: client.download(image.sha256, vin_=OTHER))
    assert denied == grpc.StatusCode.PERMISSION_DENIED
    beyond = code_of(lambda: client.download(image.sha256, offset=10**9))
    assert beyond == grpc.StatusCode.OUT_OF_RANGE
    assert code_of(lambda: client.download("c" * 64)) == NOT_FOUND
    assert code_of(lambda: client.download(image.sha256, chunk_size=10**8)) == INVALID
    tail = list(client.download(image.sha256, offset=image.size_bytes))
    assert tail == []


def test_vehicle_cannot_read_another_vehicles_deployment(client, release):
    running_campaign(client, release, vins=(VIN, OTHER))
    (notice,) = client.check_in(VIN).deployments
    request = update_pb2.GetDeploymentRequest(vin=OTHER, deployment_id=notice.deployment_id)
    assert (
        code_of(lambda: client.update.GetDeployment(request, timeout=TIMEOUT))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        code_of(lambda: client.report(OTHER, notice.deployment_id, "DOWNLOADING"))
        == grpc.StatusCode.PERMISSION_DENIED
    )


def test_metrics_endpoint(backend, client, release):
    client.register(VIN)
    client.check_in(VIN)
    code_of(lambda: client.check_in("WHLDMV00000000099"))
    url = f"http://127.0.0.1:{backend.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=TIMEOUT).read().decode()
    assert 'hil_backend_requests_total{code="OK",method="CheckIn"} 1.0' in text
    assert 'hil_backend_requests_total{code="NOT_FOUND",method="CheckIn"} 1.0' in text
    assert "hil_backend_request_seconds_bucket" in text
    assert "hil_backend_vehicles 1.0" in text
