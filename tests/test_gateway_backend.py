"""The gateway's backend client against the real backend: verification, resume, backoff."""

from __future__ import annotations

import threading

import grpc
import pytest
from backend_helpers import Client
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import make_image

from backend_stub.api import campaign_pb2
from backend_stub.server import BackendConfig, serve
from backend_stub.service import OtaBackend
from gateway.backend import BackendClient, Backoff, EcuInventory
from gateway.errors import BackendRefused, BackendUnavailable, ReleaseRejected

VIN = "WHLDMV00000000001"


class Restartable:
    """The backend on a fixed loopback port that a test may stop and start again."""

    def __init__(self, data_dir) -> None:
        self.data_dir = data_dir
        self.port = 0
        self.running = None
        self.start()

    def start(self) -> None:
        self.running = serve(
            BackendConfig(data_dir=self.data_dir, listen=f"127.0.0.1:{self.port}", insecure=True)
        )
        self.port = self.running.port

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop(0)
            self.running = None


@pytest.fixture
def server(tmp_path):
    backend = Restartable(tmp_path / "backend")
    yield backend
    backend.stop()


@pytest.fixture
def operator(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield Client(channel)
    channel.close()


@pytest.fixture
def channel(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield channel
    channel.close()


def inventory(demo):
    return [
        EcuInventory(name=e.name, hardware_id=e.hardware_id, software_version="1.0.0")
        for e in demo.ecus
    ]


def deploy(operator, demo, size=40_000):
    images = {e.name: make_image(e, "2.0.0", 2, size=size) for e in demo.ecus}
    shas = [(name, operator.upload(data).sha256) for name, data in images.items()]
    release = operator.release(shas)
    created = operator.campaign_create(release.release_id)
    operator.campaign.StartCampaign(campaign_pb2.CampaignRequest(campaign_id=created.campaign_id))
    return images


def client_for(server, channel, **kw):
    return BackendClient(
        channel,
        VIN,
        release_keys=[server.running.release_public_key],
        backoff=Backoff(initial_s=0.01, max_s=0.2, give_up_after_s=20),
        **kw,
    )


def test_check_in_verify_download_report(server, operator, channel, demo, tmp_path):
    client = client_for(server, channel)
    client.register(inventory(demo), model="demo")
    assert client.check_in() == ([], 30)
    images = deploy(operator, demo)
    (notice,), _ = client.check_in(state="idle", inventory=inventory(demo))
    assert notice.state == "notified"
    deployment = client.deployment(notice.deployment_id)
    assert [i.ecu for i in deployment.manifest.images] == ["ecm", "bms", "bcm"]
    for entry in deployment.manifest.images:
        path = client.download(entry, tmp_path / "dl", chunk_size=4096)
        assert path.read_bytes() == images[entry.ecu]
    assert client.report(notice.deployment_id, "downloading", report_id="r1") == (
        "downloading",
        False,
    )
    assert client.report(notice.deployment_id, "downloading", report_id="r1") == (
        "downloading",
        True,
    )
    state, _ = client.report(notice.deployment_id, "succeeded")
    assert state == "succeeded"


def test_untrusted_release_key_is_refused(server, operator, channel, demo):
    client = BackendClient(channel, VIN, release_keys=[Ed25519PrivateKey.generate().public_key()])
    client.register(inventory(demo))
    deploy(operator, demo)
    (notice,), _ = client.check_in()
    with pytest.raises(ReleaseRejected, match="does not verify"):
        client.deployment(notice.deployment_id)


def test_tampered_artifact_is_refused_and_dropped(server, operator, channel, demo, tmp_path):
    client = client_for(server, channel)
    client.register(inventory(demo))
    deploy(operator, demo)
    (notice,), _ = client.check_in()
    entry = client.deployment(notice.deployment_id).manifest.images[0]
    stored = server.running.backend.artifacts.path(entry.sha256)
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF  # storage corrupted or swapped behind the backend's back
    stored.write_bytes(bytes(data))
    with pytest.raises(ReleaseRejected, match="SHA-256"):
        client.download(entry, tmp_path / "dl")
    assert list((tmp_path / "dl").iterdir()) == []


def test_download_resumes_across_a_backend_restart(
    server, operator, channel, demo, tmp_path, monkeypatch
):
    client = client_for(server, channel)
    client.register(inventory(demo))
    images = deploy(operator, demo, size=300_000)
    (notice,), _ = client.check_in()
    entry = client.deployment(notice.deployment_id).manifest.images[0]
    seen: list[int] = []
    restarted = threading.Event()
    # The first stream holds at 120 kB until the link has dropped: otherwise a
    # busy machine may have streamed the whole image into the client's buffers
    # before the stop, and there would be nothing left to resume.
    dropped = threading.Event()
    chunks = OtaBackend._chunks

    def held(self, sha256, offset, size, total):
        for item in chunks(self, sha256, offset, size, total):
            if offset == 0 and item[0] >= 120_000:
                dropped.wait(10)
                return
            yield item

    monkeypatch.setattr(OtaBackend, "_chunks", held)

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done >= 100_000 and not restarted.is_set():
            restarted.set()
            server.stop()  # the link drops mid-transfer
            dropped.set()
            threading.Timer(0.3, server.start).start()

    path = client.download(entry, tmp_path / "dl", chunk_size=8192, progress=progress)
    assert path.read_bytes() == images["ecm"]
    assert restarted.is_set() and client.retries >= 1
    # It continued from where it stopped rather than starting over.
    assert seen == sorted(seen) and seen[-1] == entry.size_bytes
    assert not (tmp_path / "dl" / f"{entry.sha256}.part").exists()


def test_check_in_waits_out_a_backend_restart(server, channel, demo):
    client = client_for(server, channel)
    client.register(inventory(demo))
    server.stop()
    restart = threading.Timer(0.5, server.start)
    restart.start()
    # The call waits for the channel to come back (and retries if it fails meanwhile).
    assert client.check_in() == ([], 30)
    restart.join()
    vehicle = server.running.backend.get_vehicle(VIN)
    assert vehicle.checkins == 1


def test_refusals_are_not_retried_and_unreachable_gives_up(server, channel, demo):
    client = client_for(server, channel)
    with pytest.raises(BackendRefused) as refused:
        client.check_in()  # not registered
    assert refused.value.code == "NOT_FOUND" and client.retries == 0
    dead = grpc.insecure_channel("127.0.0.1:1")
    try:
        hopeless = BackendClient(
            dead,
            VIN,
            release_keys=[],
            backoff=Backoff(initial_s=0.01, max_s=0.05, give_up_after_s=0.3),
            call_timeout_s=0.2,
        )
        with pytest.raises(BackendUnavailable, match="unreachable"):
            hopeless.check_in()
        assert hopeless.retries >= 1
    finally:
        dead.close()
