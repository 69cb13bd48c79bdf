"""The development PKI: files and certificates, peer identities, and mutual TLS over real gRPC."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from backend_stub.errors import BackendError, PkiError
from backend_stub.pki import (
    ROLE_BACKEND,
    ROLE_OPERATOR,
    ROLE_VEHICLE,
    Identity,
    Pki,
    identity_from_pem,
    init_pki,
    load_pki,
)
from ecu_sim import demo_vehicle
from hil.cli import main
from ota_formats.signing import dev_public_key, key_id, load_private_key, load_public_key

VIN_A = "1HGCM82633A004352"
VIN_B = "WVWZZZ1JZXW000001"
VIN_NEW = "5YJ3E1EA7KF317000"
RPC_TIMEOUT_S = 5


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A PKI with two vehicles and two extra server names."""
    return init_pki(
        tmp_path / "pki",
        [VIN_A, VIN_B],
        server_names=["backend.test", "10.1.2.3"],
        operator_name="alice",
    )


@pytest.fixture
def other_pki(tmp_path: Path) -> Pki:
    """A second, unrelated PKI (same names, different keys)."""
    return init_pki(tmp_path / "other", [VIN_A])


@pytest.fixture
def port(pki: Pki) -> Iterator[int]:
    """A gRPC health service on 127.0.0.1 that requires a client certificate of ``pki``."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    bound = server.add_secure_port("127.0.0.1:0", pki.server_credentials())
    assert bound != 0
    server.start()
    try:
        yield bound
    finally:
        server.stop(grace=None).wait(RPC_TIMEOUT_S)


def health_check(
    port: int, credentials: grpc.ChannelCredentials, server_name: str | None = None
) -> int:
    """Call Health/Check once; return the serving status or raise grpc.RpcError."""
    options = [] if server_name is None else [("grpc.ssl_target_name_override", server_name)]
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S)
        return response.status


def refused(
    port: int, credentials: grpc.ChannelCredentials, server_name: str | None = None
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        health_check(port, credentials, server_name)
    return info.value


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def self_signed(*attributes: tuple[x509.ObjectIdentifier, str]) -> bytes:
    """A throwaway self-signed certificate (PEM) with the given subject."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


# Files and certificates


def test_init_writes_the_layout_with_private_keys_readable_by_the_owner_only(pki: Pki):
    names = {
        path.relative_to(pki.directory).as_posix()
        for path in pki.directory.rglob("*")
        if path.is_file()
    }
    assert names == {
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "operator.pem",
        "operator.key",
        f"vehicles/{VIN_A}.pem",
        f"vehicles/{VIN_A}.key",
        f"vehicles/{VIN_B}.pem",
        f"vehicles/{VIN_B}.key",
        "release_signing_key.pem",
        "release_signing_pub.pem",
    }
    for name in names:
        if name.endswith(".key") or name == "release_signing_key.pem":
            mode = stat.S_IMODE((pki.directory / name).stat().st_mode)
            assert mode == 0o600, f"{name}: {oct(mode)}"
    assert pki.vins() == sorted([VIN_A, VIN_B])


def test_every_certificate_is_issued_by_the_ca_with_its_own_p256_key(pki: Pki):
    ca = cert(pki.ca_path)
    ca.verify_directly_issued_by(ca)
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "HIL OTA development CA"
    )
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "hil-ota-harness"
    )
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    pairs = [
        (pki.server_cert_path, pki.server_key_path),
        (pki.operator_cert_path, pki.operator_key_path),
        *((pki.vehicle_cert_path(vin), pki.vehicle_key_path(vin)) for vin in (VIN_A, VIN_B)),
    ]
    for cert_path, key_path in pairs:
        leaf = cert(cert_path)
        leaf.verify_directly_issued_by(ca)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.curve.name == "secp256r1"
        assert key.public_key() == leaf.public_key(), cert_path


def test_certificates_of_another_ca_do_not_verify(pki: Pki, other_pki: Pki):
    # Both CAs have the same name: only the signature tells them apart.
    with pytest.raises(InvalidSignature):
        cert(other_pki.vehicle_cert_path(VIN_A)).verify_directly_issued_by(cert(pki.ca_path))


def test_server_certificate_names_and_usage(pki: Pki):
    server = cert(pki.server_cert_path)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "backend.test"}
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.1.2.3"),
    }
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_client_certificates_are_for_client_auth_and_name_who_they_are(pki: Pki):
    for path in (pki.operator_cert_path, pki.vehicle_cert_path(VIN_A)):
        usage = cert(path).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH], path
    vehicle = cert(pki.vehicle_cert_path(VIN_A)).subject
    assert vehicle.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == VIN_A
    assert vehicle.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "vehicle"


def test_validity_starts_slightly_in_the_past_and_lasts_the_days_asked(tmp_path: Path):
    pki = init_pki(tmp_path / "pki", [VIN_A], valid_days=10)
    now = datetime.datetime.now(datetime.UTC)
    for path in (pki.ca_path, pki.server_cert_path, pki.vehicle_cert_path(VIN_A)):
        certificate = cert(path)
        assert now - datetime.timedelta(minutes=6) < certificate.not_valid_before_utc
        assert certificate.not_valid_before_utc < now - datetime.timedelta(minutes=4)
        expected_end = now + datetime.timedelta(days=10)
        assert abs(certificate.not_valid_after_utc - expected_end) < datetime.timedelta(minutes=1)


def test_release_signing_key_loads_with_ota_formats_and_signs(pki: Pki):
    private = load_private_key(pki.release_key_path)
    public = load_public_key(pki.release_public_key_path)
    signature = private.sign(b"release metadata")
    public.verify(signature, b"release metadata")
    with pytest.raises(InvalidSignature):
        public.verify(signature, b"tampered metadata")
    assert key_id(public) != key_id(dev_public_key())


# Creating, loading, adding


def test_init_refuses_an_existing_pki_unless_forced(pki: Pki):
    old_ca = pki.ca_path.read_bytes()
    with pytest.raises(PkiError, match=r"already holds a PKI \(ca\.pem\); use --force"):
        init_pki(pki.directory, [VIN_A])
    assert pki.ca_path.read_bytes() == old_ca

    replaced = init_pki(pki.directory, [VIN_A], force=True)
    assert replaced.ca_path.read_bytes() != old_ca
    cert(replaced.vehicle_cert_path(VIN_A)).verify_directly_issued_by(cert(replaced.ca_path))
    # VIN_B's certificate belonged to the old CA and would fail every handshake.
    assert replaced.vins() == [VIN_A]
    assert not list(pki.directory.rglob("*.tmp"))


@pytest.mark.parametrize(
    "vin", ["1HGCM82633A00435", "1HGCM82633A0043521", "1HGCM82633A00435O", "1hgcm82633a004352"]
)
def test_invalid_vin_is_rejected_before_anything_is_written(tmp_path: Path, vin: str):
    with pytest.raises(PkiError, match=vin):
        init_pki(tmp_path / "pki", [VIN_A, vin])
    assert not (tmp_path / "pki" / "ca.pem").exists()


def test_pki_errors_are_backend_errors():
    assert issubclass(PkiError, BackendError)


def test_load_pki_explains_what_is_missing(tmp_path: Path, pki: Pki):
    assert load_pki(pki.directory) == pki
    with pytest.raises(PkiError, match="no such directory; create it with 'hil pki init"):
        load_pki(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PkiError, match=r"no ca\.pem; create it with 'hil pki init"):
        load_pki(tmp_path / "empty")
    pki.server_key_path.unlink()
    with pytest.raises(PkiError, match=r"no server\.key"):
        load_pki(pki.directory)


def test_add_vehicle_issues_a_certificate_from_the_existing_ca(pki: Pki):
    path = load_pki(pki.directory).add_vehicle(VIN_NEW, valid_days=30)
    assert path == pki.vehicle_cert_path(VIN_NEW)
    cert(path).verify_directly_issued_by(cert(pki.ca_path))
    assert stat.S_IMODE(pki.vehicle_key_path(VIN_NEW).stat().st_mode) == 0o600
    assert identity_from_pem(path.read_bytes()) == Identity(ROLE_VEHICLE, VIN_NEW)
    assert pki.vins() == sorted([VIN_A, VIN_B, VIN_NEW])

    with pytest.raises(PkiError, match="exists already"):
        pki.add_vehicle(VIN_NEW)
    old = path.read_bytes()
    pki.add_vehicle(VIN_NEW, force=True)
    assert path.read_bytes() != old
    with pytest.raises(PkiError, match="invalid VIN"):
        pki.add_vehicle("NOT-A-VIN")


def test_add_vehicle_needs_the_ca_key(pki: Pki):
    pki.ca_key_path.unlink()
    with pytest.raises(PkiError, match=r"no ca\.key"):
        pki.add_vehicle(VIN_NEW)
    assert not pki.vehicle_cert_path(VIN_NEW).exists()


def test_channel_credentials_for_an_unknown_vehicle(pki: Pki):
    with pytest.raises(PkiError, match=f"no certificate for vehicle {VIN_NEW}"):
        pki.channel_credentials(VIN_NEW)
    with pytest.raises(PkiError, match="invalid VIN"):
        pki.channel_credentials("nobody")


# Identities


def test_identity_of_each_certificate(pki: Pki):
    assert identity_from_pem(pki.vehicle_cert_path(VIN_B).read_bytes()) == Identity(
        ROLE_VEHICLE, VIN_B
    )
    assert identity_from_pem(pki.operator_cert_path.read_bytes()) == Identity(
        ROLE_OPERATOR, "alice"
    )
    assert identity_from_pem(pki.server_cert_path.read_bytes()) == Identity(
        ROLE_BACKEND, "hil-backend"
    )


@pytest.mark.parametrize(
    ("pem", "text"),
    [
        (b"not a certificate", "not a PEM certificate"),
        (self_signed((NameOID.COMMON_NAME, "mallory")), "no organizational unit"),
        (
            self_signed((NameOID.ORGANIZATIONAL_UNIT_NAME, "admin"), (NameOID.COMMON_NAME, "x")),
            "unknown role",
        ),
        (self_signed((NameOID.ORGANIZATIONAL_UNIT_NAME, "operator")), "no common name"),
        (
            self_signed(
                (NameOID.ORGANIZATIONAL_UNIT_NAME, "vehicle"), (NameOID.COMMON_NAME, "car-1")
            ),
            "invalid VIN",
        ),
        (
            self_signed(
                (NameOID.ORGANIZATIONAL_UNIT_NAME, "vehicle"),
                (NameOID.ORGANIZATIONAL_UNIT_NAME, "operator"),
                (NameOID.COMMON_NAME, VIN_A),
            ),
            "more than one organizational unit",
        ),
    ],
)
def test_identity_of_foreign_or_malformed_certificates_is_refused(pem: bytes, text: str):
    with pytest.raises(PkiError, match=text):
        identity_from_pem(pem)


def test_identity_of_the_ca_is_refused(pki: Pki):
    with pytest.raises(PkiError, match="no organizational unit"):
        identity_from_pem(pki.ca_path.read_bytes())


# Mutual TLS over gRPC


@pytest.mark.parametrize("who", ["operator", VIN_A, VIN_B])
def test_clients_of_the_pki_reach_the_server(pki: Pki, port: int, who: str):
    assert health_check(port, pki.channel_credentials(who)) == (
        health_pb2.HealthCheckResponse.SERVING
    )


def test_an_added_vehicle_reaches_the_server(pki: Pki, port: int):
    pki.add_vehicle(VIN_NEW)
    status = health_check(port, pki.channel_credentials(VIN_NEW))
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_a_client_certificate_of_another_ca_is_refused(pki: Pki, other_pki: Pki, port: int):
    # The client trusts the right CA, so only its own certificate can fail the handshake.
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_path.read_bytes(),
        private_key=other_pki.vehicle_key_path(VIN_A).read_bytes(),
        certificate_chain=other_pki.vehicle_cert_path(VIN_A).read_bytes(),
    )
    assert refused(port, credentials).code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_without_a_certificate_is_refused(pki: Pki, port: int):
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca_path.read_bytes())
    assert refused(port, credentials).code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_trusts_another_ca_refuses_the_server(other_pki: Pki, port: int):
    assert refused(port, other_pki.channel_credentials(VIN_A)).code() == (
        grpc.StatusCode.UNAVAILABLE
    )


def test_the_client_checks_the_server_name(pki: Pki, port: int):
    credentials = pki.channel_credentials("operator")
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health_check(port, credentials, server_name="backend.test") == serving
    assert refused(port, credentials, server_name="elsewhere.test").code() == (
        grpc.StatusCode.UNAVAILABLE
    )


# The hil pki command


def one_line_error(err: str, text: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert text in lines[0], lines[0]


def test_cli_init_defaults_to_the_demo_vehicle_and_refuses_to_overwrite(tmp_path: Path, capsys):
    directory = tmp_path / "pki"
    demo_vin = demo_vehicle().vin
    assert main(["pki", "init", str(directory)]) == 0
    out = capsys.readouterr().out
    assert demo_vin in out
    assert "server.pem" in out
    assert (directory / "vehicles" / f"{demo_vin}.pem").is_file()
    assert load_pki(directory).vins() == [demo_vin]

    ca = (directory / "ca.pem").read_bytes()
    assert main(["pki", "init", str(directory)]) == 2
    one_line_error(capsys.readouterr().err, "already holds a PKI (ca.pem); use --force")
    assert (directory / "ca.pem").read_bytes() == ca

    assert main(["pki", "init", str(directory), "--force", "--vin", VIN_A, "--vin", VIN_B]) == 0
    assert (directory / "ca.pem").read_bytes() != ca
    assert load_pki(directory).vins() == sorted([VIN_A, VIN_B])


def test_cli_init_options(tmp_path: Path):
    directory = tmp_path / "pki"
    code = main(
        [
            "pki",
            "init",
            str(directory),
            "--vin",
            VIN_A,
            "--server-name",
            "ota.lab",
            "--server-name",
            "192.0.2.7",
            "--operator",
            "bench-7",
            "--days",
            "3",
        ]
    )
    assert code == 0
    pki = load_pki(directory)
    assert identity_from_pem(pki.operator_cert_path.read_bytes()) == Identity(
        ROLE_OPERATOR, "bench-7"
    )
    names = cert(pki.server_cert_path).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "ota.lab" in names.value.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("192.0.2.7") in names.value.get_values_for_type(x509.IPAddress)
    lifetime = cert(pki.ca_path).not_valid_after_utc - cert(pki.ca_path).not_valid_before_utc
    assert lifetime < datetime.timedelta(days=3, minutes=6)


def test_cli_vehicle_adds_a_certificate(pki: Pki, capsys):
    assert main(["pki", "vehicle", str(pki.directory), VIN_NEW]) == 0
    assert VIN_NEW in capsys.readouterr().out
    cert(pki.vehicle_cert_path(VIN_NEW)).verify_directly_issued_by(cert(pki.ca_path))

    assert main(["pki", "vehicle", str(pki.directory), VIN_NEW]) == 2
    one_line_error(capsys.readouterr().err, "exists already")


@pytest.mark.parametrize(
    "args",
    [
        ["pki", "init", "{dir}", "--vin", "1HGCM82633A00435O"],
        ["pki", "vehicle", "{dir}", "1HGCM82633A00435O"],
    ],
)
def test_cli_bad_vin(pki: Pki, tmp_path: Path, capsys, args: list[str]):
    directory = tmp_path / "fresh" if args[1] == "init" else pki.directory
    code = main([arg.format(dir=directory) for arg in args])
    assert code == 2
    one_line_error(capsys.readouterr().err, "invalid VIN '1HGCM82633A00435O'")


def test_cli_vehicle_without_a_pki(tmp_path: Path, capsys):
    assert main(["pki", "vehicle", str(tmp_path / "none"), VIN_A]) == 2
    one_line_error(capsys.readouterr().err, "create it with 'hil pki init")
