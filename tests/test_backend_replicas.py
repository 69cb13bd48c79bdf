"""Two backend servers sharing one PostgreSQL database and data directory, as replicas do."""

from __future__ import annotations

import threading

import grpc
import pytest
from backend_helpers import Client, demo_ecus
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import make_image

from backend_stub.api import campaign_pb2, common_pb2
from backend_stub.server import BackendConfig, serve

FLEET = 24


def vin_of(index: int) -> str:
    return f"WHLREP{index:011d}"


@pytest.fixture
def replicas(tmp_path, pg_url):
    # Replicas of one deployment share the database, the artifact files and the release key.
    key = tmp_path / "release.pem"
    key.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    servers = [
        serve(
            BackendConfig(
                data_dir=tmp_path / "shared",
                listen="127.0.0.1:0",
                db_url=pg_url,
                insecure=True,
                release_key=key,
            )
        )
        for _ in range(2)
    ]
    channels = [grpc.insecure_channel(f"127.0.0.1:{s.port}") for s in servers]
    yield [Client(c) for c in channels]
    for channel in channels:
        channel.close()
    for server in servers:
        server.stop(0)


def test_replicas_share_every_state(replicas, demo):
    a, b = replicas
    artifact = a.upload(make_image(demo.ecu("ecm"), "2.0.0", 2))
    release = b.release([("ecm", artifact.sha256)])  # the artifact uploaded through A
    for index in range(FLEET):
        (a if index % 2 else b).register(vin_of(index), ecus=demo_ecus())
    created = a.campaign_create(
        release.release_id, waves=[campaign_pb2.WaveSpec(count=4)], success_threshold_pct=100
    )
    b.campaign.StartCampaign(campaign_pb2.CampaignRequest(campaign_id=created.campaign_id))
    errors: list[BaseException] = []

    def vehicle(index: int) -> None:
        try:
            mine = (a, b)[index % 2]
            other = (b, a)[index % 2]
            while True:
                reply = mine.check_in(vin_of(index))
                if reply.deployments:
                    break
                threading.Event().wait(0.02)
            dep = reply.deployments[0].deployment_id
            # Progress through one replica, the outcome through the other.
            chunks = list(other.download(artifact.sha256, vin_=vin_of(index)))
            assert sum(len(c.data) for c in chunks) == artifact.size_bytes
            mine.report(vin_of(index), dep, "DOWNLOADING")
            other.report(vin_of(index), dep, "INSTALLING")
            mine.report(vin_of(index), dep, "SUCCEEDED", report_id=f"done-{index}")
            assert other.report(
                vin_of(index), dep, "SUCCEEDED", report_id=f"done-{index}"
            ).duplicate
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=vehicle, args=(i,)) for i in range(FLEET)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[0]
    for client in (a, b):
        status = client.campaign.GetCampaign(
            campaign_pb2.CampaignRequest(campaign_id=created.campaign_id), timeout=10
        )
        assert status.state == common_pb2.CAMPAIGN_STATE_COMPLETED
        assert [(c.state, c.count) for c in status.counts] == [
            (common_pb2.ACTION_STATE_SUCCEEDED, FLEET)
        ]
    events = list(
        b.campaign.WatchCampaign(
            campaign_pb2.WatchCampaignRequest(campaign_id=created.campaign_id), timeout=10
        )
    )
    waves = [e for e in events if e.kind == "wave_started"]
    assert len(waves) == 2  # each wave started exactly once, whichever replica decided
    succeeded = [e for e in events if e.action_state == common_pb2.ACTION_STATE_SUCCEEDED]
    assert len(succeeded) == FLEET
