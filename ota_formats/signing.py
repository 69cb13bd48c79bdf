"""Ed25519 keys for image signing, including the bundled development key.

The development key pair in ``ota_formats/keys`` is public knowledge: it exists
so that the demo, the tests and a first bench session work out of the box. A
vehicle that trusts it will accept images anyone can sign. Never put it in a
production trust store; make your own with ``hil pki`` or your HSM.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ota_formats.errors import KeyFileError

KEY_ID_SIZE = 8
_DEV_PRIVATE = "dev_signing_key.pem"
_DEV_PUBLIC = "dev_signing_key.pub.pem"


def key_id(public_key: Ed25519PublicKey) -> bytes:
    """Return the 8-byte identifier of a public key: SHA-256 of its raw bytes, truncated."""
    return hashlib.sha256(public_key_bytes(public_key)).digest()[:KEY_ID_SIZE]


def public_key_bytes(public_key: Ed25519PublicKey) -> bytes:
    """Return the 32 raw bytes of an Ed25519 public key."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_from_hex(text: str) -> Ed25519PublicKey:
    """Parse a raw Ed25519 public key written as 64 hex digits."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise KeyFileError(f"public key {text!r} is not hexadecimal") from exc
    if len(raw) != 32:
        raise KeyFileError(f"an Ed25519 public key has 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read an unencrypted PEM (PKCS#8) Ed25519 private key."""
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: the key is not an Ed25519 key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key (SubjectPublicKeyInfo)."""
    data = _read(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: the key is not an Ed25519 key")
    return key


def dev_private_key() -> Ed25519PrivateKey:
    """Return the bundled development signing key (public knowledge, never for production)."""
    data = resources.files("ota_formats").joinpath("keys", _DEV_PRIVATE).read_bytes()
    key = serialization.load_pem_private_key(data, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def dev_public_key() -> Ed25519PublicKey:
    """Return the public half of the bundled development signing key."""
    data = resources.files("ota_formats").joinpath("keys", _DEV_PUBLIC).read_bytes()
    key = serialization.load_pem_public_key(data)
    assert isinstance(key, Ed25519PublicKey)
    return key


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
