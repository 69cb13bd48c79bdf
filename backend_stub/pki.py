"""A development PKI for the bundled OTA backend: a CA, TLS certificates and the release key.

``init_pki`` writes one directory::

    ca.pem, ca.key                     development CA (ECDSA P-256)
    server.pem, server.key             the backend (serverAuth; localhost, 127.0.0.1, ::1)
    operator.pem, operator.key         an operator client (clientAuth, OU=operator)
    vehicles/<VIN>.pem, <VIN>.key      one client per vehicle (clientAuth, OU=vehicle)
    release_signing_key.pem            Ed25519 key the backend signs release metadata with
    release_signing_pub.pem            its public half

The backend requires a client certificate from this CA on every connection and
takes the caller's role and name from it (:func:`identity_from_pem`). Private
keys are stored unencrypted: this is for development and test benches, where
the directory itself is the secret.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from backend_stub.errors import PkiError
from ota_formats.vehicle import is_valid_vin

ROLE_VEHICLE = "vehicle"
ROLE_OPERATOR = "operator"
ROLE_BACKEND = "backend"
ROLES = (ROLE_VEHICLE, ROLE_OPERATOR, ROLE_BACKEND)

DEFAULT_VALID_DAYS = 825
MAX_VALID_DAYS = 36500
CA_COMMON_NAME = "HIL OTA development CA"
ORGANIZATION = "hil-ota-harness"
SERVER_COMMON_NAME = "hil-backend"
DEFAULT_OPERATOR_NAME = "operator"

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"
OPERATOR_CERT_FILE = "operator.pem"
OPERATOR_KEY_FILE = "operator.key"
VEHICLES_DIR = "vehicles"
RELEASE_KEY_FILE = "release_signing_key.pem"
RELEASE_PUBLIC_KEY_FILE = "release_signing_pub.pem"

# Clients and servers whose clocks run a little behind must still accept a fresh certificate.
_CLOCK_SKEW = datetime.timedelta(minutes=5)
_DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
_KEY_MODE = 0o600
_CERT_MODE = 0o644


@dataclass(frozen=True)
class Identity:
    """Who is at the other end of a mutually authenticated connection."""

    role: str
    """``"vehicle"``, ``"operator"`` or ``"backend"``."""
    name: str
    """The VIN for a vehicle, the certificate's common name otherwise."""


@dataclass(frozen=True)
class Pki:
    """A PKI directory made by :func:`init_pki`; use :func:`load_pki` to open one."""

    directory: Path

    @property
    def ca_path(self) -> Path:
        """The CA certificate (the trust anchor of servers and clients)."""
        return self.directory / CA_CERT_FILE

    @property
    def ca_key_path(self) -> Path:
        """The CA's private key (needed only to issue certificates)."""
        return self.directory / CA_KEY_FILE

    @property
    def server_cert_path(self) -> Path:
        """The backend's certificate."""
        return self.directory / SERVER_CERT_FILE

    @property
    def server_key_path(self) -> Path:
        """The backend's private key."""
        return self.directory / SERVER_KEY_FILE

    @property
    def operator_cert_path(self) -> Path:
        """The operator client's certificate."""
        return self.directory / OPERATOR_CERT_FILE

    @property
    def operator_key_path(self) -> Path:
        """The operator client's private key."""
        return self.directory / OPERATOR_KEY_FILE

    @property
    def release_key_path(self) -> Path:
        """The Ed25519 private key that signs release metadata (PKCS#8 PEM)."""
        return self.directory / RELEASE_KEY_FILE

    @property
    def release_public_key_path(self) -> Path:
        """The public half of the release signing key (SubjectPublicKeyInfo PEM)."""
        return self.directory / RELEASE_PUBLIC_KEY_FILE

    @property
    def vehicles_directory(self) -> Path:
        """The directory of the vehicles' certificates and keys."""
        return self.directory / VEHICLES_DIR

    def vehicle_cert_path(self, vin: str) -> Path:
        """Return the path of vehicle ``vin``'s certificate (whether it exists or not)."""
        return self.vehicles_directory / f"{check_vin(vin)}.pem"

    def vehicle_key_path(self, vin: str) -> Path:
        """Return the path of vehicle ``vin``'s private key (whether it exists or not)."""
        return self.vehicles_directory / f"{check_vin(vin)}.key"

    def vins(self) -> list[str]:
        """Return the VINs that have a certificate here, sorted."""
        if not self.vehicles_directory.is_dir():
            return []
        return sorted(
            path.stem for path in self.vehicles_directory.glob("*.pem") if is_valid_vin(path.stem)
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """TLS credentials for the backend: its certificate, and client certificates required."""
        return grpc.ssl_server_credentials(
            [(_read(self.server_key_path, "server key"), _read(self.server_cert_path, "server"))],
            root_certificates=_read(self.ca_path, "CA certificate"),
            require_client_auth=True,
        )

    def channel_credentials(self, who: str) -> grpc.ChannelCredentials:
        """TLS credentials of a client: ``"operator"`` or a vehicle's VIN."""
        if who == ROLE_OPERATOR:
            cert_path, key_path = self.operator_cert_path, self.operator_key_path
        else:
            cert_path, key_path = self.vehicle_cert_path(who), self.vehicle_key_path(who)
            if not cert_path.exists():
                raise PkiError(
                    f"{self.directory}: no certificate for vehicle {who}; "
                    f"add one with 'hil pki vehicle {self.directory} {who}'"
                )
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_path, "CA certificate"),
            private_key=_read(key_path, "private key"),
            certificate_chain=_read(cert_path, "certificate"),
        )

    def add_vehicle(
        self, vin: str, *, valid_days: int = DEFAULT_VALID_DAYS, force: bool = False
    ) -> Path:
        """Issue a certificate for vehicle ``vin`` signed by this CA; return its path.

        Refuses to replace an existing certificate unless ``force`` is true.
        """
        vin = check_vin(vin)
        _check_valid_days(valid_days)
        cert_path = self.vehicle_cert_path(vin)
        if cert_path.exists() and not force:
            raise PkiError(f"{cert_path} exists already; use --force to replace it")
        ca_cert, ca_key = self._load_ca()
        not_before, not_after = _validity(valid_days)
        # Past the CA's own end the certificate could not be verified anyway; say so in it.
        not_after = min(not_after, ca_cert.not_valid_after_utc)
        if not_after <= not_before:
            raise PkiError(
                f"{self.ca_path} has expired; make a new PKI with "
                f"'hil pki init --force {self.directory}'"
            )
        key, cert = _issue(
            ca_cert,
            ca_key,
            _vehicle_subject(vin),
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            (not_before, not_after),
        )
        try:
            self.vehicles_directory.mkdir(exist_ok=True)
        except OSError as exc:
            raise PkiError(f"cannot create {self.vehicles_directory}: {exc.strerror}") from exc
        # The key goes first: a certificate without its key would look usable to vins().
        _write_atomic(self.vehicle_key_path(vin), _private_pem(key), _KEY_MODE)
        _write_atomic(cert_path, _cert_pem(cert), _CERT_MODE)
        return cert_path

    def _load_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if not self.ca_key_path.exists():
            raise PkiError(
                f"{self.directory}: no {CA_KEY_FILE}; the CA's private key is needed "
                "to issue certificates"
            )
        ca_cert = _load_cert(_read(self.ca_path, "CA certificate"), self.ca_path)
        try:
            ca_key = serialization.load_pem_private_key(
                _read(self.ca_key_path, "CA key"), password=None
            )
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise PkiError(f"{self.ca_key_path}: not an unencrypted PEM private key") from exc
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or (
            ca_key.public_key() != ca_cert.public_key()
        ):
            raise PkiError(f"{self.ca_key_path} is not the key of {self.ca_path}")
        return ca_cert, ca_key


def check_vin(vin: str) -> str:
    """Return ``vin`` if it is a valid VIN (17 of 0-9 and A-Z without I, O, Q); else PkiError."""
    if not is_valid_vin(vin):
        raise PkiError(f"invalid VIN {vin!r}: 17 characters from 0-9 and A-Z without I, O and Q")
    return vin


def init_pki(
    directory: str | Path,
    vins: Sequence[str] = (),
    *,
    server_names: Sequence[str] = (),
    operator_name: str = DEFAULT_OPERATOR_NAME,
    valid_days: int = DEFAULT_VALID_DAYS,
    force: bool = False,
) -> Pki:
    """Create a development PKI in ``directory`` (made if missing) and return it.

    ``server_names`` are extra names of the backend besides localhost, 127.0.0.1
    and ::1; IP addresses become IP subject alternative names, the rest DNS ones.
    An existing PKI is refused unless ``force`` is true; replacing it also removes
    the vehicle certificates of the old CA that ``vins`` does not name again.
    """
    pki = Pki(Path(directory))
    # Everything is checked before anything is written, so a bad argument leaves no half PKI.
    vins = list(dict.fromkeys(check_vin(vin) for vin in vins))
    alt_names = _alt_names([*_DEFAULT_SERVER_NAMES, *server_names])
    if not operator_name.strip():
        raise PkiError("the operator name must not be empty")
    _check_valid_days(valid_days)
    if pki.directory.exists() and not pki.directory.is_dir():
        raise PkiError(f"{pki.directory} exists and is not a directory")
    if pki.ca_path.exists() and not force:
        raise PkiError(
            f"{pki.directory} already holds a PKI ({CA_CERT_FILE}); use --force to replace it"
        )

    validity = _validity(valid_days)
    ca_key, ca_cert = _make_ca(validity)
    server_key, server_cert = _issue(
        ca_cert,
        ca_key,
        _subject(SERVER_COMMON_NAME, ROLE_BACKEND),
        [ExtendedKeyUsageOID.SERVER_AUTH],
        validity,
        alt_names,
    )
    operator_key, operator_cert = _issue(
        ca_cert,
        ca_key,
        _subject(operator_name, ROLE_OPERATOR),
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        validity,
    )
    vehicles = [
        (
            vin,
            *_issue(
                ca_cert, ca_key, _vehicle_subject(vin), [ExtendedKeyUsageOID.CLIENT_AUTH], validity
            ),
        )
        for vin in vins
    ]
    release_key = Ed25519PrivateKey.generate()

    try:
        pki.vehicles_directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PkiError(f"cannot create {pki.vehicles_directory}: {exc.strerror}") from exc
    # Certificates of a replaced CA would fail every handshake; leaving them would only mislead.
    for stale in pki.vins():
        if stale not in vins:
            for path in (pki.vehicle_cert_path(stale), pki.vehicle_key_path(stale)):
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    raise PkiError(f"cannot remove {path}: {exc.strerror}") from exc
    for vin, key, cert in vehicles:
        _write_atomic(pki.vehicle_key_path(vin), _private_pem(key), _KEY_MODE)
        _write_atomic(pki.vehicle_cert_path(vin), _cert_pem(cert), _CERT_MODE)
    _write_atomic(pki.server_key_path, _private_pem(server_key), _KEY_MODE)
    _write_atomic(pki.server_cert_path, _cert_pem(server_cert), _CERT_MODE)
    _write_atomic(pki.operator_key_path, _private_pem(operator_key), _KEY_MODE)
    _write_atomic(pki.operator_cert_path, _cert_pem(operator_cert), _CERT_MODE)
    _write_atomic(pki.release_key_path, _private_pem(release_key), _KEY_MODE)
    _write_atomic(
        pki.release_public_key_path,
        release_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        _CERT_MODE,
    )
    _write_atomic(pki.ca_key_path, _private_pem(ca_key), _KEY_MODE)
    # ca.pem marks a complete PKI (init refuses to overwrite it), so it is written last.
    _write_atomic(pki.ca_path, _cert_pem(ca_cert), _CERT_MODE)
    return pki


def load_pki(directory: str | Path) -> Pki:
    """Open the PKI in ``directory``, checking that it has a CA and the server's files."""
    pki = Pki(Path(directory))
    if not pki.directory.is_dir():
        raise PkiError(
            f"{pki.directory}: no such directory; create it with 'hil pki init {pki.directory}'"
        )
    for path in (pki.ca_path, pki.server_cert_path, pki.server_key_path):
        if not path.is_file():
            raise PkiError(
                f"{pki.directory}: no {path.name}; create it with 'hil pki init {pki.directory}'"
            )
    return pki


def identity_from_pem(cert_pem: bytes) -> Identity:
    """Return the role and name a certificate (PEM) of this PKI stands for.

    The role comes from the subject's organizational unit, the name from its
    common name. This does not check who signed the certificate: call it on a
    peer certificate the TLS handshake has already verified against the CA.
    """
    cert = _load_cert(cert_pem, "peer certificate")
    role = _single_attribute(cert, NameOID.ORGANIZATIONAL_UNIT_NAME, "organizational unit (OU)")
    name = _single_attribute(cert, NameOID.COMMON_NAME, "common name (CN)")
    if role not in ROLES:
        raise PkiError(f"certificate of {name!r} has the unknown role (OU) {role!r}")
    if role == ROLE_VEHICLE:
        check_vin(name)
        serial = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
        if any(attribute.value != name for attribute in serial):
            raise PkiError(f"vehicle certificate of {name}: serialNumber differs from the CN")
    return Identity(role=role, name=name)


def _single_attribute(cert: x509.Certificate, oid: x509.ObjectIdentifier, what: str) -> str:
    attributes = cert.subject.get_attributes_for_oid(oid)
    if len(attributes) != 1:
        count = "no" if not attributes else "more than one"
        raise PkiError(f"certificate {cert.subject.rfc4514_string()!r} has {count} {what}")
    value = attributes[0].value
    if not isinstance(value, str) or not value:
        raise PkiError(f"certificate {cert.subject.rfc4514_string()!r} has an empty {what}")
    return value


def _load_cert(data: bytes, source: object) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PkiError(f"{source}: not a PEM certificate") from exc


def _check_valid_days(valid_days: int) -> None:
    if not 1 <= valid_days <= MAX_VALID_DAYS:
        raise PkiError(f"validity must be 1 to {MAX_VALID_DAYS} days, got {valid_days}")


def _validity(valid_days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - _CLOCK_SKEW, now + datetime.timedelta(days=valid_days)


def _alt_names(names: Sequence[str]) -> list[x509.GeneralName]:
    alt_names: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        # A DNS name in a certificate is ASCII (IDNA A-labels), without spaces or slashes.
        if not name or not name.isascii() or any(c.isspace() or c in "/:@" for c in name):
            raise PkiError(f"invalid server name {name!r}: give a DNS name or an IP address")
        alt_names.append(x509.DNSName(name))
    return alt_names


def _subject(common_name: str, role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _vehicle_subject(vin: str) -> x509.Name:
    return x509.Name(
        [
            *_subject(vin, ROLE_VEHICLE),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, vin),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _make_ca(
    validity: tuple[datetime.datetime, datetime.datetime],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        # path_length=0: this CA signs end-entity certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    usages: list[x509.ObjectIdentifier],
    validity: tuple[datetime.datetime, datetime.datetime],
    alt_names: Sequence[x509.GeneralName] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, atomically, readable by its owner only."""
    _write_atomic(path, _private_pem(key), 0o600)


def _private_pem(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read {what} {path}: {exc.strerror}") from exc


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the new one, never a part."""
    try:
        # mkstemp creates the file 0o600, so a key is never readable by others, not even briefly.
        fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise PkiError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fchmod(file.fileno(), mode)
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise PkiError(f"cannot write {path}: {exc.strerror}") from exc


__all__ = [
    "ROLE_BACKEND",
    "ROLE_OPERATOR",
    "ROLE_VEHICLE",
    "Identity",
    "Pki",
    "PkiError",
    "check_vin",
    "identity_from_pem",
    "init_pki",
    "load_pki",
]
