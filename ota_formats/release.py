"""The signed release manifest: what the backend promises and the gateway checks.

A release groups one signed image per ECU. The backend serialises the release
as canonical JSON (UTF-8, keys sorted, no insignificant whitespace) and signs
those exact bytes with its Ed25519 release key. The gateway verifies the
signature over the bytes it received, and only then reads them: it never
re-serialises before verifying, so the encoder's details cannot break trust.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ota_formats.errors import ReleaseFormatError, SignatureError
from ota_formats.signing import key_id

MANIFEST_FORMAT = "hil-release/1"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def is_sha256_hex(text: str) -> bool:
    """Whether ``text`` is a SHA-256 digest written as 64 lowercase hex digits."""
    return bool(_SHA256.match(text))


@dataclass(frozen=True)
class ReleaseImageEntry:
    """One image of a release, in flashing order."""

    ecu: str
    sha256: str
    size_bytes: int
    hardware_id: str
    compatible_hardware_ids: tuple[str, ...]
    version: str
    anti_rollback: int

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object of this entry."""
        return {
            "ecu": self.ecu,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "hardware_id": self.hardware_id,
            "compatible_hardware_ids": list(self.compatible_hardware_ids),
            "version": self.version,
            "anti_rollback": self.anti_rollback,
        }


@dataclass(frozen=True)
class ReleaseManifest:
    """A release as signed by the backend."""

    release_id: str
    name: str
    version: str
    created_at_s: int
    images: tuple[ReleaseImageEntry, ...]

    def encode(self) -> bytes:
        """Return the canonical bytes that the signature covers."""
        document = {
            "format": MANIFEST_FORMAT,
            "release_id": self.release_id,
            "name": self.name,
            "version": self.version,
            "created_at_s": self.created_at_s,
            "images": [image.to_json() for image in self.images],
        }
        return json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()

    def image_for(self, ecu: str) -> ReleaseImageEntry:
        """Return the entry for ECU ``ecu``; ``KeyError`` if the release has none."""
        for image in self.images:
            if image.ecu == ecu:
                return image
        raise KeyError(ecu)


def sign_manifest(manifest: ReleaseManifest, private_key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """Return ``(metadata, signature)`` for ``manifest``."""
    metadata = manifest.encode()
    return metadata, private_key.sign(metadata)


def decode_manifest(metadata: bytes) -> ReleaseManifest:
    """Parse manifest bytes without verifying them (use :func:`verify_manifest` for trust)."""
    try:
        document = json.loads(metadata.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReleaseFormatError(f"release metadata is not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        raise ReleaseFormatError(f"release metadata is not in the {MANIFEST_FORMAT} format")
    try:
        images = tuple(_entry(raw) for raw in document["images"])
        manifest = ReleaseManifest(
            release_id=_text(document["release_id"]),
            name=_text(document["name"]),
            version=_text(document["version"]),
            created_at_s=_count(document["created_at_s"]),
            images=images,
        )
    except (KeyError, TypeError) as exc:
        raise ReleaseFormatError(f"release metadata lacks or mistypes a field: {exc}") from exc
    if not images:
        raise ReleaseFormatError("release metadata names no image")
    if len({image.ecu for image in images}) != len(images):
        raise ReleaseFormatError("release metadata names an ECU twice")
    return manifest


def verify_manifest(
    metadata: bytes, signature: bytes, trust_anchors: Iterable[Ed25519PublicKey]
) -> ReleaseManifest:
    """Check ``signature`` over ``metadata`` with one of ``trust_anchors``, then parse it.

    Raises :class:`SignatureError` if no trusted key verifies it and
    :class:`ReleaseFormatError` if the signed bytes are not a manifest.
    """
    anchors = list(trust_anchors)
    if not anchors:
        raise SignatureError("no release key is trusted")
    for anchor in anchors:
        try:
            anchor.verify(signature, metadata)
        except InvalidSignature:
            continue
        return decode_manifest(metadata)
    ids = ", ".join(key_id(k).hex() for k in anchors)
    raise SignatureError(f"release signature does not verify with the trusted key(s) {ids}")


def _entry(raw: Mapping[str, Any]) -> ReleaseImageEntry:
    sha = _text(raw["sha256"])
    if not is_sha256_hex(sha):
        raise ReleaseFormatError(f"image sha256 {sha!r} is not 64 lowercase hex digits")
    compatible = raw["compatible_hardware_ids"]
    if not isinstance(compatible, list):
        raise TypeError("compatible_hardware_ids")
    return ReleaseImageEntry(
        ecu=_text(raw["ecu"]),
        sha256=sha,
        size_bytes=_count(raw["size_bytes"]),
        hardware_id=_text(raw["hardware_id"]),
        compatible_hardware_ids=tuple(_text(item) for item in compatible),
        version=_text(raw["version"]),
        anti_rollback=_count(raw["anti_rollback"]),
    )


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"{value!r} is not a non-negative integer")
    return value
