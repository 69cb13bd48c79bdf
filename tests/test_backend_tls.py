"""The backend over mutual TLS: who may call what, and who cannot connect at all."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import grpc
import pytest
from backend_helpers import TIMEOUT, Client, code_of
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers import make_image

from backend_stub.api import campaign_pb2, common_pb2, device_pb2, update_pb2
from backend_stub.errors import BackendError, ConfigError, PkiError
from backend_stub.pki import Pki, init_pki
from backend_stub.server import BackendConfig, serve
from ota_formats.release import verify_manifest

VIN_A = "WHLDMV00000000001"
VIN_B = "WHLDMV00000000002"
VIN_NEW = "WHLDMV00000000003"
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return init_pki(tmp_path / "pki", [VIN_A, VIN_B])


@pytest.fixture
def tls_backend(tmp_path: Path, pki: Pki):
    """The backend with TLS from ``pki`` on 127.0.0.1 (SQLite in tmp_path)."""
    running = serve(
        BackendConfig(
            data_dir=tmp_path / "backend",
            listen="127.0.0.1:0",
            tls_dir=pki.directory,
            tick_interval_s=0.05,
        )
    )
    yield running
    running.stop(0)


@pytest.fixture
def connect(tls_backend):
    """Make a Client over a TLS channel with the given credentials (closed at the end)."""
    channels: list[grpc.Channel] = []

    def make(credentials: grpc.ChannelCredentials) -> Client:
        channel = grpc.secure_channel(f"127.0.0.1:{tls_backend.port}", credentials)
        channels.append(channel)
        return Client(channel)

    yield make
    for channel in channels:
        channel.close()


@pytest.fixture
def operator(connect, pki: Pki) -> Client:
    return connect(pki.channel_credentials("operator"))


@pytest.fixture
def car_a(connect, pki: Pki) -> Client:
    return connect(pki.channel_credentials(VIN_A))


@pytest.fixture
def car_b(connect, pki: Pki) -> Client:
    return connect(pki.channel_credentials(VIN_B))


@pytest.fixture
def images(demo):
    return {ecu.name: make_image(ecu, "2.0.0", 2, size=20_000) for ecu in demo.ecus}


@pytest.fixture
def release(operator: Client, images):
    shas = [(name, operator.upload(data).sha256) for name, data in images.items()]
    return operator.release(shas)


@pytest.fixture
def campaign(operator: Client, car_a: Client, car_b: Client, release):
    """A running campaign of ``release`` targeting vehicles A and B (both registered)."""
    assert car_a.register(VIN_A).vin == VIN_A
    assert car_b.register(VIN_B).vin == VIN_B
    created = operator.campaign_create(release.release_id)
    assert created.target_count == 2
    return operator.campaign.StartCampaign(
        campaign_pb2.CampaignRequest(campaign_id=created.campaign_id), timeout=TIMEOUT
    )


@pytest.fixture
def notice_a(car_a: Client, campaign):
    """Vehicle A's deployment notice (A has checked in once)."""
    (notice,) = car_a.check_in(VIN_A).deployments
    assert notice.campaign_id == campaign.campaign_id
    assert notice.state == common_pb2.ACTION_STATE_NOTIFIED
    return notice


# ------------------------------------------------------------------ helpers
def get_vehicle(client: Client, vin: str):
    return client.device.GetVehicle(device_pb2.GetVehicleRequest(vin=vin), timeout=TIMEOUT)


def get_deployment(client: Client, deployment_id: str, vin: str = ""):
    request = update_pb2.GetDeploymentRequest(vin=vin, deployment_id=deployment_id)
    return client.update.GetDeployment(request, timeout=TIMEOUT)


def campaign_op(client: Client, verb: str, campaign_id: str):
    request = campaign_pb2.CampaignRequest(campaign_id=campaign_id, reason="r")
    return getattr(client.campaign, verb)(request, timeout=TIMEOUT)


def action_states(operator: Client, campaign_id: str) -> dict[str, int]:
    actions = operator.campaign.ListActions(
        campaign_pb2.ListActionsRequest(campaign_id=campaign_id), timeout=TIMEOUT
    ).actions
    return {a.vin: a.state for a in actions}


def downloaded(client: Client, sha256: str, vin: str = "") -> bytes:
    return b"".join(c.data for c in client.download(sha256, vin_=vin, chunk_size=4096))


def issue_client_cert(
    pki: Pki, subject: list[tuple[x509.ObjectIdentifier, str]]
) -> grpc.ChannelCredentials:
    """Client credentials with a clientAuth certificate signed by ``pki``'s CA."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca_path.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key_path.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(oid, value) for oid, value in subject]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca_path.read_bytes(),
        private_key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        certificate_chain=cert.public_bytes(serialization.Encoding.PEM),
    )


def subject(ou: str | None, cn: str) -> list[tuple[x509.ObjectIdentifier, str]]:
    attributes = [(NameOID.ORGANIZATION_NAME, "hil-ota-harness")]
    if ou is not None:
        attributes.append((NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attributes.append((NameOID.COMMON_NAME, cn))
    return attributes


# ------------------------------------------------------------------ 1. happy path
def test_happy_path_under_tls(tls_backend, operator, car_a, car_b, images, release, campaign):
    assert campaign.state == common_pb2.CAMPAIGN_STATE_RUNNING
    assert campaign.release_id == release.release_id
    listed = operator.device.ListVehicles(device_pb2.ListVehiclesRequest(), timeout=TIMEOUT)
    assert [v.vin for v in listed.vehicles] == [VIN_A, VIN_B]

    (notice,) = car_a.check_in(VIN_A).deployments
    assert notice.release_id == release.release_id
    assert notice.state == common_pb2.ACTION_STATE_NOTIFIED
    dep = notice.deployment_id
    for vin in (VIN_A, ""):
        deployment = get_deployment(car_a, dep, vin)
        assert (deployment.vin, deployment.deployment_id) == (VIN_A, dep)
        assert deployment.release.release_id == release.release_id
        manifest = verify_manifest(
            deployment.release.metadata,
            deployment.release.signature,
            [tls_backend.release_public_key],
        )
        assert manifest.release_id == release.release_id

    ecm = next(i for i in release.images if i.ecu == "ecm")
    data = downloaded(car_a, ecm.sha256)
    assert data == images["ecm"]
    assert hashlib.sha256(data).hexdigest() == ecm.sha256
    assert downloaded(car_a, ecm.sha256, VIN_A) == images["ecm"]
    # The operator may fetch any artifact.
    assert downloaded(operator, ecm.sha256) == images["ecm"]

    assert car_a.report(VIN_A, dep, "DOWNLOADING", progress_pct=50).state == (
        common_pb2.ACTION_STATE_DOWNLOADING
    )
    done = car_a.report("", dep, "SUCCEEDED")
    assert done.state == common_pb2.ACTION_STATE_SUCCEEDED and not done.duplicate
    assert action_states(operator, campaign.campaign_id) == {
        VIN_A: common_pb2.ACTION_STATE_SUCCEEDED,
        VIN_B: common_pb2.ACTION_STATE_PENDING,
    }
    # Finished: no longer in progress, so no more downloads for A.
    assert code_of(lambda: car_a.download(ecm.sha256)) == DENIED


# ------------------------------------------------------------------ 2. operator-only RPCs
def test_operator_rpcs_are_refused_for_vehicles(operator, car_a, car_b, images, release, demo):
    car_a.register(VIN_A)
    car_b.register(VIN_B)
    draft = operator.campaign_create(release.release_id)
    cid = draft.campaign_id
    shas = [(i.ecu, i.sha256) for i in release.images]
    extra = make_image(demo.ecu("ecm"), "3.0.0", 3, size=20_000)
    extra_sha = hashlib.sha256(extra).hexdigest()
    for car in (car_a, car_b):
        calls = {
            "UploadArtifact": lambda car=car: car.upload(extra),
            "GetArtifact": lambda car=car: car.update.GetArtifact(
                update_pb2.GetArtifactRequest(sha256=shas[0][1]), timeout=TIMEOUT
            ),
            "ListArtifacts": lambda car=car: car.update.ListArtifacts(
                update_pb2.ListArtifactsRequest(), timeout=TIMEOUT
            ),
            "CreateRelease": lambda car=car: car.release(shas, version="9.9.9"),
            "GetRelease": lambda car=car: car.update.GetRelease(
                update_pb2.GetReleaseRequest(release_id=release.release_id), timeout=TIMEOUT
            ),
            "ListReleases": lambda car=car: car.update.ListReleases(
                update_pb2.ListReleasesRequest(), timeout=TIMEOUT
            ),
            "ListVehicles": lambda car=car: car.device.ListVehicles(
                device_pb2.ListVehiclesRequest(), timeout=TIMEOUT
            ),
            "CreateCampaign": lambda car=car: car.campaign_create(release.release_id, name="x"),
            "StartCampaign": lambda car=car: campaign_op(car, "StartCampaign", cid),
            "PauseCampaign": lambda car=car: campaign_op(car, "PauseCampaign", cid),
            "ResumeCampaign": lambda car=car: campaign_op(car, "ResumeCampaign", cid),
            "AbortCampaign": lambda car=car: campaign_op(car, "AbortCampaign", cid),
            "GetCampaign": lambda car=car: campaign_op(car, "GetCampaign", cid),
            "ListCampaigns": lambda car=car: car.campaign.ListCampaigns(
                campaign_pb2.ListCampaignsRequest(), timeout=TIMEOUT
            ),
            "ListActions": lambda car=car: car.campaign.ListActions(
                campaign_pb2.ListActionsRequest(campaign_id=cid), timeout=TIMEOUT
            ),
            "WatchCampaign": lambda car=car: car.campaign.WatchCampaign(
                campaign_pb2.WatchCampaignRequest(campaign_id=cid), timeout=TIMEOUT
            ),
        }
        codes = {name: code_of(call) for name, call in calls.items()}
        assert codes == dict.fromkeys(calls, DENIED)
    # Nothing the vehicles asked for happened.
    artifacts = operator.update.ListArtifacts(update_pb2.ListArtifactsRequest(), timeout=TIMEOUT)
    assert extra_sha not in {a.sha256 for a in artifacts.artifacts}
    assert len(artifacts.artifacts) == len(images)
    releases = operator.update.ListReleases(update_pb2.ListReleasesRequest(), timeout=TIMEOUT)
    assert [r.release_id for r in releases.releases] == [release.release_id]
    campaigns = operator.campaign.ListCampaigns(
        campaign_pb2.ListCampaignsRequest(), timeout=TIMEOUT
    )
    assert [c.campaign_id for c in campaigns.campaigns] == [cid]
    assert campaign_op(operator, "GetCampaign", cid).state == common_pb2.CAMPAIGN_STATE_DRAFT


# ------------------------------------------------------------------ 3. vehicle-only RPCs
def test_vehicle_rpcs_are_refused_for_the_operator(operator, notice_a, campaign):
    dep = notice_a.deployment_id
    calls = {
        "RegisterVehicle": lambda: operator.register(VIN_NEW),
        "RegisterVehicle(A)": lambda: operator.register(VIN_A, model="hijacked"),
        "CheckIn": lambda: operator.check_in(VIN_A),
        "CheckIn(empty)": lambda: operator.check_in(""),
        "ReportTelemetry": lambda: operator.device.ReportTelemetry(
            device_pb2.ReportTelemetryRequest(vin=VIN_A, values={"x": 1.0}), timeout=TIMEOUT
        ),
        "ReportDeployment": lambda: operator.report(VIN_A, dep, "DOWNLOADING"),
        "GetDeployment": lambda: get_deployment(operator, dep, VIN_A),
    }
    codes = {name: code_of(call) for name, call in calls.items()}
    assert codes == dict.fromkeys(calls, DENIED)
    # None of it took effect.
    assert code_of(lambda: get_vehicle(operator, VIN_NEW)) == grpc.StatusCode.NOT_FOUND
    a = get_vehicle(operator, VIN_A)
    assert (a.model, a.checkins, dict(a.telemetry)) == ("demo", 1, {})
    assert action_states(operator, campaign.campaign_id)[VIN_A] == (
        common_pb2.ACTION_STATE_NOTIFIED
    )


# ------------------------------------------------------------------ 4. acting for another vehicle
def test_a_vehicle_cannot_act_for_another(operator, car_a, car_b, notice_a, release, campaign):
    dep = notice_a.deployment_id
    sha = release.images[0].sha256
    calls = {
        "RegisterVehicle": lambda: car_b.register(VIN_A, model="hijacked"),
        "CheckIn": lambda: car_b.check_in(VIN_A),
        "ReportTelemetry": lambda: car_b.device.ReportTelemetry(
            device_pb2.ReportTelemetryRequest(vin=VIN_A, values={"x": 1.0}), timeout=TIMEOUT
        ),
        "GetDeployment(empty)": lambda: get_deployment(car_b, dep),
        "GetDeployment(own)": lambda: get_deployment(car_b, dep, VIN_B),
        "GetDeployment(A)": lambda: get_deployment(car_b, dep, VIN_A),
        "ReportDeployment(empty)": lambda: car_b.report("", dep, "DOWNLOADING"),
        "ReportDeployment(own)": lambda: car_b.report(VIN_B, dep, "FAILED"),
        "ReportDeployment(A)": lambda: car_b.report(VIN_A, dep, "SUCCEEDED"),
        "GetVehicle(A)": lambda: get_vehicle(car_b, VIN_A),
        # B's own action is still pending (not notified): nothing is in progress for it.
        "Download(empty)": lambda: car_b.download(sha),
        "Download(own)": lambda: car_b.download(sha, vin_=VIN_B),
        "Download(A)": lambda: car_b.download(sha, vin_=VIN_A),
    }
    codes = {name: code_of(call) for name, call in calls.items()}
    assert codes == dict.fromkeys(calls, DENIED)

    # None of it touched A.
    a = get_vehicle(operator, VIN_A)
    assert (a.model, a.checkins, dict(a.telemetry)) == ("demo", 1, {})
    assert action_states(operator, campaign.campaign_id) == {
        VIN_A: common_pb2.ACTION_STATE_NOTIFIED,
        VIN_B: common_pb2.ACTION_STATE_PENDING,
    }

    # GetVehicle: a vehicle reads itself (named or not); the operator reads both.
    assert get_vehicle(car_b, VIN_B).vin == VIN_B
    assert get_vehicle(car_b, "").vin == VIN_B
    assert get_vehicle(car_a, VIN_A).vin == VIN_A
    assert [get_vehicle(operator, v).vin for v in (VIN_A, VIN_B)] == [VIN_A, VIN_B]

    # An empty vin means "myself".
    reply = car_a.check_in("")
    assert [n.deployment_id for n in reply.deployments] == [dep]
    assert get_vehicle(operator, VIN_A).checkins == 2
    assert get_vehicle(operator, VIN_B).checkins == 0
    car_a.device.ReportTelemetry(
        device_pb2.ReportTelemetryRequest(values={"battery_v": 12.5}), timeout=TIMEOUT
    )
    assert dict(get_vehicle(operator, VIN_A).telemetry) == {"battery_v": 12.5}
    assert get_deployment(car_a, dep).vin == VIN_A
    # A report refused to B did not use up its report_id: A's report with it is applied.
    assert code_of(lambda: car_b.report("", dep, "DOWNLOADING", report_id="r-1")) == DENIED
    applied = car_a.report("", dep, "DOWNLOADING", report_id="r-1")
    assert applied.state == common_pb2.ACTION_STATE_DOWNLOADING and not applied.duplicate


# ------------------------------------------------------------------ 5. refused at the TLS layer
def test_connections_without_a_valid_client_certificate_are_refused(
    tls_backend, connect, pki: Pki, tmp_path: Path
):
    ca = pki.ca_path.read_bytes()
    other = init_pki(tmp_path / "other", [VIN_A])
    clients = {
        "no certificate": connect(grpc.ssl_channel_credentials(root_certificates=ca)),
        "other CA's vehicle": connect(
            grpc.ssl_channel_credentials(
                root_certificates=ca,
                private_key=other.vehicle_key_path(VIN_A).read_bytes(),
                certificate_chain=other.vehicle_cert_path(VIN_A).read_bytes(),
            )
        ),
        "other CA's operator": connect(
            grpc.ssl_channel_credentials(
                root_certificates=ca,
                private_key=other.operator_key_path.read_bytes(),
                certificate_chain=other.operator_cert_path.read_bytes(),
            )
        ),
        # The client itself refuses a server of a CA it does not trust.
        "trusts another CA": connect(other.channel_credentials(VIN_A)),
    }
    plain = grpc.insecure_channel(f"127.0.0.1:{tls_backend.port}")
    try:
        clients["plaintext"] = Client(plain)
        codes = {
            name: code_of(lambda client=client: client.check_in(VIN_A))
            for name, client in clients.items()
        }
        assert codes == dict.fromkeys(clients, UNAVAILABLE)
        list_codes = {
            name: code_of(
                lambda client=client: client.device.ListVehicles(
                    device_pb2.ListVehiclesRequest(), timeout=TIMEOUT
                )
            )
            for name, client in clients.items()
        }
        assert list_codes == dict.fromkeys(clients, UNAVAILABLE)
    finally:
        plain.close()
    # The server still serves the right clients afterwards.
    good = connect(pki.channel_credentials("operator"))
    assert (
        list(good.device.ListVehicles(device_pb2.ListVehiclesRequest(), timeout=TIMEOUT).vehicles)
        == []
    )


# ------------------------------------------------------------------ 6. unknown role
@pytest.mark.parametrize(
    ("ou", "cn"),
    [
        ("intruder", "mallory"),  # unknown role
        (None, "mallory"),  # no role at all
        ("vehicle", "NOT-A-VIN"),  # a vehicle certificate without a valid VIN
    ],
    ids=["unknown-role", "no-role", "vehicle-without-vin"],
)
def test_a_certificate_of_the_ca_without_a_known_role_is_unauthenticated(
    connect, pki: Pki, operator, car_a, release, ou, cn
):
    car_a.register(VIN_A)
    intruder = connect(issue_client_cert(pki, subject(ou, cn)))
    sha = release.images[0].sha256
    calls = {
        "ListVehicles": lambda: intruder.device.ListVehicles(
            device_pb2.ListVehiclesRequest(), timeout=TIMEOUT
        ),
        "UploadArtifact": lambda: intruder.upload(b"x" * 100),
        "CheckIn": lambda: intruder.check_in(VIN_A),
        "CheckIn(empty)": lambda: intruder.check_in(""),
        "RegisterVehicle": lambda: intruder.register(VIN_NEW),
        "GetVehicle": lambda: get_vehicle(intruder, VIN_A),
        "Download": lambda: intruder.download(sha),
        "ListCampaigns": lambda: intruder.campaign.ListCampaigns(
            campaign_pb2.ListCampaignsRequest(), timeout=TIMEOUT
        ),
    }
    codes = {name: code_of(call) for name, call in calls.items()}
    assert codes == dict.fromkeys(calls, UNAUTHENTICATED)
    assert get_vehicle(operator, VIN_A).checkins == 0
    assert code_of(lambda: get_vehicle(operator, VIN_NEW)) == grpc.StatusCode.NOT_FOUND


def test_a_backend_role_client_certificate_may_call_nothing(connect, pki: Pki, car_a, release):
    # "backend" is a known role (the server's own), but neither operator nor vehicle.
    car_a.register(VIN_A)
    peer = connect(issue_client_cert(pki, subject("backend", "another-backend")))
    calls = {
        "ListVehicles": lambda: peer.device.ListVehicles(
            device_pb2.ListVehiclesRequest(), timeout=TIMEOUT
        ),
        "CheckIn": lambda: peer.check_in(VIN_A),
        "GetVehicle": lambda: get_vehicle(peer, VIN_A),
        "Download": lambda: peer.download(release.images[0].sha256),
    }
    codes = {name: code_of(call) for name, call in calls.items()}
    assert codes == dict.fromkeys(calls, DENIED)


# ------------------------------------------------------------------ 7. server configuration
def test_insecure_listens_on_loopback_only(tmp_path: Path):
    for listen in ("0.0.0.0:0", "[::]:0", "192.0.2.1:0"):
        with pytest.raises(ConfigError, match="loopback"):
            serve(BackendConfig(data_dir=tmp_path / "data", listen=listen, insecure=True))
    assert not (tmp_path / "data").exists()


def test_neither_tls_nor_insecure_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="--tls-dir"):
        serve(BackendConfig(data_dir=tmp_path / "data", listen="127.0.0.1:0"))


def test_insecure_and_tls_together_are_refused(tmp_path: Path, pki: Pki):
    with pytest.raises(ConfigError, match="exclude"):
        serve(
            BackendConfig(
                data_dir=tmp_path / "data",
                listen="127.0.0.1:0",
                tls_dir=pki.directory,
                insecure=True,
            )
        )


def test_tls_dir_without_a_pki_names_the_missing_file(tmp_path: Path, pki: Pki):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PkiError, match=r"ca\.pem") as info:
        serve(BackendConfig(data_dir=tmp_path / "data", listen="127.0.0.1:0", tls_dir=empty))
    assert isinstance(info.value, BackendError)
    # A PKI without the server's key is refused the same way, naming that file.
    pki.server_key_path.unlink()
    with pytest.raises(PkiError, match=r"server\.key"):
        serve(
            BackendConfig(data_dir=tmp_path / "data", listen="127.0.0.1:0", tls_dir=pki.directory)
        )
