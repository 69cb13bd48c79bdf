"""Random requests to every RPC: each gets an answer or a fitting refusal, never INTERNAL."""

from __future__ import annotations

import grpc
import pytest
from backend_helpers import TIMEOUT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend_stub.api import campaign_pb2, common_pb2, device_pb2, update_pb2

REFUSALS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "cmp-1", "rel-1", "dep-1", "WHLDMV00000000001", "a" * 64, "cmp-", "-1"]),
)
uint = st.integers(0, 2**32 - 1)
states = st.integers(0, 12)
ecus = st.lists(
    st.builds(
        common_pb2.EcuInfo, name=text, hardware_id=text, software_version=text, active_bank=uint
    ),
    max_size=3,
)
filters = st.builds(
    common_pb2.VehicleFilter,
    model=text,
    tags=st.lists(text, max_size=2),
    vins=st.lists(text, max_size=2),
    ecu_name=text,
    hardware_id=text,
    software_version=text,
)


def requests(client):
    d, u, c = client.device, client.update, client.campaign
    return st.one_of(
        st.builds(
            lambda r: (d.RegisterVehicle, r),
            st.builds(
                device_pb2.RegisterVehicleRequest,
                vin=text,
                model=text,
                tags=st.lists(text, max_size=3),
                ecus=ecus,
            ),
        ),
        st.builds(
            lambda r: (d.CheckIn, r),
            st.builds(device_pb2.CheckInRequest, vin=text, state=text, ecus=ecus),
        ),
        st.builds(
            lambda r: (d.ReportTelemetry, r),
            st.builds(
                device_pb2.ReportTelemetryRequest,
                vin=text,
                values=st.dictionaries(text, st.floats(), max_size=3),
            ),
        ),
        st.builds(
            lambda r: (d.ReportDeployment, r),
            st.builds(
                device_pb2.ReportDeploymentRequest,
                vin=text,
                deployment_id=text,
                report_id=text,
                state=states,
                progress_pct=uint,
                failure_step=text,
                inventory=ecus,
            ),
        ),
        st.builds(lambda r: (d.GetVehicle, r), st.builds(device_pb2.GetVehicleRequest, vin=text)),
        st.builds(
            lambda r: (d.ListVehicles, r),
            st.builds(
                device_pb2.ListVehiclesRequest, filter=filters, page_size=uint, page_token=text
            ),
        ),
        st.builds(
            lambda r: (u.GetArtifact, r), st.builds(update_pb2.GetArtifactRequest, sha256=text)
        ),
        st.builds(
            lambda r: (u.ListArtifacts, r),
            st.builds(update_pb2.ListArtifactsRequest, page_size=uint, page_token=text),
        ),
        st.builds(
            lambda r: (u.CreateRelease, r),
            st.builds(
                update_pb2.CreateReleaseRequest,
                name=text,
                version=text,
                request_id=text,
                images=st.lists(
                    st.builds(update_pb2.ReleaseImage, ecu=text, sha256=text), max_size=3
                ),
            ),
        ),
        st.builds(
            lambda r: (u.GetRelease, r), st.builds(update_pb2.GetReleaseRequest, release_id=text)
        ),
        st.builds(
            lambda r: (u.ListReleases, r),
            st.builds(update_pb2.ListReleasesRequest, page_size=uint, page_token=text),
        ),
        st.builds(
            lambda r: (u.GetDeployment, r),
            st.builds(update_pb2.GetDeploymentRequest, vin=text, deployment_id=text),
        ),
        st.builds(
            lambda r: (lambda req, timeout: list(u.Download(req, timeout=timeout)), r),
            st.builds(
                update_pb2.DownloadRequest,
                sha256=text,
                offset=st.integers(0, 2**63),
                vin=text,
                chunk_size=uint,
            ),
        ),
        st.builds(
            lambda r: (c.CreateCampaign, r),
            st.builds(
                campaign_pb2.CreateCampaignRequest,
                name=text,
                release_id=text,
                filter=filters,
                waves=st.lists(
                    st.one_of(
                        st.builds(campaign_pb2.WaveSpec, count=uint),
                        st.builds(campaign_pb2.WaveSpec, percent=st.floats()),
                        st.builds(campaign_pb2.WaveSpec, count=uint, start_after_s=st.floats()),
                        st.just(campaign_pb2.WaveSpec()),
                    ),
                    max_size=3,
                ),
                success_threshold_pct=st.floats(),
                error_threshold_pct=st.floats(),
                max_retries=uint,
                action_timeout_s=uint,
                force=st.booleans(),
                request_id=text,
                rollout_rate=st.one_of(
                    st.none(),
                    st.builds(
                        campaign_pb2.RolloutRate,
                        base_per_minute=uint,
                        increment_factor=st.floats(),
                        increase_every=uint,
                        # Out-of-range numbers too: proto3 enums are open.
                        increase_on=st.integers(0, 5),
                        maximum_per_minute=uint,
                    ),
                ),
                abort_criteria=st.lists(
                    st.builds(
                        campaign_pb2.AbortCriterion,
                        failure=st.integers(0, 5),
                        threshold_pct=st.floats(),
                        min_executed=uint,
                    ),
                    max_size=12,
                ),
            ),
        ),
        *[
            st.builds(
                lambda r, m=m: (getattr(c, m), r),
                st.builds(campaign_pb2.CampaignRequest, campaign_id=text, reason=text),
            )
            for m in (
                "StartCampaign",
                "PauseCampaign",
                "ResumeCampaign",
                "AbortCampaign",
                "GetCampaign",
            )
        ],
        st.builds(
            lambda r: (c.ListActions, r),
            st.builds(
                campaign_pb2.ListActionsRequest,
                campaign_id=text,
                states=st.lists(states, max_size=3),
                page_size=uint,
                page_token=text,
            ),
        ),
    )


# The wire layer is the same over every store: SQLite is enough here.
@pytest.mark.parametrize("backend_db", [None], ids=["sqlite"])
def test_random_requests_get_fitting_answers(client):
    seen = set()

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        method, request = data.draw(requests(client))
        try:
            method(request, timeout=TIMEOUT)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        seen.add(code)
        assert code in REFUSALS, (request, code)

    check()
    assert grpc.StatusCode.INVALID_ARGUMENT in seen
    # The server still serves.
    client.register("WHLDMV00000000001")
    assert client.check_in("WHLDMV00000000001").next_checkin_s > 0
