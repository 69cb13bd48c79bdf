"""The signed software image: what ``hil image build`` writes and a tester downloads.

Layout (all integers big-endian; see ``docs/image-format.md``)::

    offset size field
         0    4 magic "HSWI"
         4    1 format version (1)
         5    1 reserved, 0
         6    2 header size including the signature (152)
         8   16 hardware id, ASCII, NUL-padded
        24   16 software version, ASCII, NUL-padded
        40    4 anti-rollback counter
        44    4 payload length in bytes
        48   32 SHA-256 of the payload
        80    8 signing key id (SHA-256 of the raw public key, first 8 bytes)
        88   64 Ed25519 signature over bytes 0..87
       152    n payload

The file is exactly the byte sequence downloaded to the ECU, so an ECU can
verify it with nothing but its trust anchors.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ota_formats.errors import ImageFormatError, ImageIntegrityError, SignatureError
from ota_formats.signing import key_id

MAGIC = b"HSWI"
FORMAT_VERSION = 1
FIELD_SIZE = 16
SIGNED_SIZE = 88
SIGNATURE_SIZE = 64
HEADER_SIZE = SIGNED_SIZE + SIGNATURE_SIZE
MAX_PAYLOAD_SIZE = 0xFFFFFFFF

_SIGNED = struct.Struct(">4sBBH16s16sII32s8s")
assert _SIGNED.size == SIGNED_SIZE


def _field(text: str, what: str) -> bytes:
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError as exc:
        raise ImageFormatError(f"{what} {text!r} must be ASCII") from exc
    if not raw or len(raw) > FIELD_SIZE or b"\x00" in raw:
        raise ImageFormatError(f"{what} {text!r} must be 1 to {FIELD_SIZE} printable characters")
    return raw


def _unfield(raw: bytes, what: str) -> str:
    text = raw.rstrip(b"\x00")
    if not text or b"\x00" in text:
        raise ImageFormatError(f"{what} field is empty or not NUL-padded")
    try:
        return text.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ImageFormatError(f"{what} field is not ASCII") from exc


@dataclass(frozen=True)
class ImageHeader:
    """The signed header of an image."""

    hardware_id: str
    version: str
    anti_rollback_counter: int
    payload_length: int
    payload_sha256: bytes
    key_id: bytes
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        """Return the 88 bytes the signature covers."""
        if not 0 <= self.anti_rollback_counter <= 0xFFFFFFFF:
            raise ImageFormatError("anti-rollback counter must fit in 32 bits")
        if not 0 <= self.payload_length <= MAX_PAYLOAD_SIZE:
            raise ImageFormatError("payload length must fit in 32 bits")
        if len(self.payload_sha256) != 32 or len(self.key_id) != 8:
            raise ImageFormatError("SHA-256 must have 32 bytes and the key id 8")
        return _SIGNED.pack(
            MAGIC,
            FORMAT_VERSION,
            0,
            HEADER_SIZE,
            _field(self.hardware_id, "hardware id"),
            _field(self.version, "version"),
            self.anti_rollback_counter,
            self.payload_length,
            self.payload_sha256,
            self.key_id,
        )

    def to_bytes(self) -> bytes:
        """Return the full 152-byte header, signature included."""
        if len(self.signature) != SIGNATURE_SIZE:
            raise ImageFormatError("the header is not signed")
        return self.signed_bytes() + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageHeader:
        """Parse the first :data:`HEADER_SIZE` bytes of an image."""
        if len(data) < HEADER_SIZE:
            raise ImageFormatError(
                f"image is {len(data)} bytes, shorter than its {HEADER_SIZE}-byte header"
            )
        magic, fmt, reserved, size, hw, ver, counter, length, digest, kid = _SIGNED.unpack_from(
            data
        )
        if magic != MAGIC:
            raise ImageFormatError(f"bad magic {magic!r}, expected {MAGIC!r}: not a signed image")
        if fmt != FORMAT_VERSION:
            raise ImageFormatError(f"image format version {fmt} is not supported")
        if reserved != 0:
            # The signature is checked over the re-encoded header, which has 0 here.
            raise ImageFormatError(f"reserved byte is 0x{reserved:02X}, must be 0")
        if size != HEADER_SIZE:
            raise ImageFormatError(f"header size {size} does not match format 1 ({HEADER_SIZE})")
        return cls(
            hardware_id=_unfield(hw, "hardware id"),
            version=_unfield(ver, "version"),
            anti_rollback_counter=counter,
            payload_length=length,
            payload_sha256=digest,
            key_id=kid,
            signature=bytes(data[SIGNED_SIZE:HEADER_SIZE]),
        )


@dataclass(frozen=True)
class SignedImage:
    """A parsed image: header and payload."""

    header: ImageHeader
    payload: bytes

    def to_bytes(self) -> bytes:
        """Return the image as it is stored and downloaded."""
        return self.header.to_bytes() + self.payload

    def check_integrity(self) -> None:
        """Raise :class:`ImageIntegrityError` if the payload does not match its header."""
        if len(self.payload) != self.header.payload_length:
            raise ImageIntegrityError(
                f"payload is {len(self.payload)} bytes, header says {self.header.payload_length}"
            )
        if hashlib.sha256(self.payload).digest() != self.header.payload_sha256:
            raise ImageIntegrityError("payload SHA-256 does not match the header")

    def check_signature(self, trust_anchors: Iterable[Ed25519PublicKey]) -> Ed25519PublicKey:
        """Verify the header signature; return the trusted key that verified it."""
        anchors = [k for k in trust_anchors if key_id(k) == self.header.key_id]
        if not anchors:
            raise SignatureError(
                f"image is signed with key id {self.header.key_id.hex()}, which is not trusted"
            )
        signed = self.header.signed_bytes()
        for anchor in anchors:
            try:
                anchor.verify(self.header.signature, signed)
            except InvalidSignature:
                continue
            return anchor
        raise SignatureError("header signature does not verify")


def build_image(
    payload: bytes,
    *,
    hardware_id: str,
    version: str,
    anti_rollback_counter: int,
    private_key: Ed25519PrivateKey,
) -> bytes:
    """Sign ``payload`` and return the image bytes (header, signature, payload)."""
    header = ImageHeader(
        hardware_id=hardware_id,
        version=version,
        anti_rollback_counter=anti_rollback_counter,
        payload_length=len(payload),
        payload_sha256=hashlib.sha256(payload).digest(),
        key_id=key_id(private_key.public_key()),
    )
    signature = private_key.sign(header.signed_bytes())
    return SignedImage(
        ImageHeader(**{**header.__dict__, "signature": signature}), bytes(payload)
    ).to_bytes()


def parse_image(data: bytes) -> SignedImage:
    """Split image bytes into header and payload; check only the format, not the contents."""
    header = ImageHeader.from_bytes(data)
    return SignedImage(header, bytes(data[HEADER_SIZE:]))


def verify_image(data: bytes, trust_anchors: Iterable[Ed25519PublicKey]) -> SignedImage:
    """Parse ``data`` and check payload integrity and signature.

    Raises :class:`ImageFormatError`, :class:`ImageIntegrityError` or
    :class:`SignatureError`. Hardware and anti-rollback checks depend on the
    target and are the caller's.
    """
    image = parse_image(data)
    image.check_integrity()
    image.check_signature(trust_anchors)
    return image
