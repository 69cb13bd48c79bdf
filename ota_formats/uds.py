"""UDS identifiers, record layouts and the seed/key algorithm of the simulated vehicle.

These are the parts of the diagnostic contract that a tester and an ECU must
agree on byte for byte. ``docs/uds-contract.md`` describes them for people.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

APP_ADDRESS = 0x00010000
"""Logical address of the application area; the ECU maps it onto its inactive bank."""

ADDRESS_AND_LENGTH_FORMAT = 0x44
"""addressAndLengthFormatIdentifier: 4-byte address, 4-byte size."""

DATA_FORMAT_PLAIN = 0x00
"""dataFormatIdentifier: neither compressed nor encrypted."""

SEED_SIZE = 4
KEY_SIZE = 4


class Session(IntEnum):
    """Diagnostic sessions (DiagnosticSessionControl sub-functions)."""

    DEFAULT = 0x01
    PROGRAMMING = 0x02
    EXTENDED = 0x03


class SecurityLevel(IntEnum):
    """SecurityAccess requestSeed sub-functions; sendKey is the value plus one."""

    EXTENDED = 0x01
    PROGRAMMING = 0x11


class Did(IntEnum):
    """Data identifiers served by every simulated ECU."""

    ACTIVE_SESSION = 0xF186
    PART_NUMBER = 0xF187
    APP_SOFTWARE_VERSION = 0xF189
    SERIAL_NUMBER = 0xF18C
    VIN = 0xF190
    HARDWARE_ID = 0xF191
    TESTER_SERIAL = 0xF198
    PROGRAMMING_DATE = 0xF199
    BOOT_STATUS = 0xF1A0


DID_SIZES: dict[int, int] = {
    Did.ACTIVE_SESSION: 1,
    Did.PART_NUMBER: 16,
    Did.APP_SOFTWARE_VERSION: 16,
    Did.SERIAL_NUMBER: 16,
    Did.VIN: 17,
    Did.HARDWARE_ID: 16,
    Did.TESTER_SERIAL: 10,
    Did.PROGRAMMING_DATE: 3,
    Did.BOOT_STATUS: 8,
}
"""Fixed record size of each DID in bytes. ASCII records are right-padded with spaces."""


class Routine(IntEnum):
    """Routine identifiers (RoutineControl)."""

    CHECK_MEMORY = 0x0202
    CHECK_PRECONDITIONS = 0x0203
    ERASE_MEMORY = 0xFF00
    CHECK_DEPENDENCIES = 0xFF01
    CONFIRM_IMAGE = 0xFF02
    """Raise the stored anti-rollback counter to the active image's and mark it confirmed."""
    ACTIVATE_PREVIOUS = 0xFF03
    """Make the image of the inactive bank pending: the next reset trial-boots it."""


class CheckMemoryStatus(IntEnum):
    """Routine status record of 0x0202."""

    CORRECT = 0x00
    INCORRECT = 0x01


class DependencyStatus(IntEnum):
    """Routine status record of 0xFF01 (check programming dependencies)."""

    ACCEPTED = 0x00
    SIGNATURE_INVALID = 0x01
    HARDWARE_MISMATCH = 0x02
    ROLLBACK_REFUSED = 0x03
    IMAGE_INVALID = 0x04


class ConfirmStatus(IntEnum):
    """Routine status record of 0xFF02 (confirm image)."""

    CONFIRMED = 0x00
    """The active image is confirmed (also when it already was)."""
    NO_VALID_IMAGE = 0x01
    """No valid application is active: there is nothing to confirm."""


class ActivatePreviousStatus(IntEnum):
    """Routine status record of 0xFF03 (activate previous image)."""

    PENDING = 0x00
    """The inactive bank's image is pending: the next reset trial-boots it."""
    NO_VALID_IMAGE = 0x01
    """The inactive bank holds no valid image."""
    ROLLBACK_REFUSED = 0x02
    """The inactive bank's anti-rollback counter is below the stored counter."""


class PreconditionFlags(IntFlag):
    """Routine status record of 0x0203: 0 when all preconditions hold, else the failing ones."""

    NONE = 0x00
    VEHICLE_MOVING = 0x01
    IGNITION_NOT_ON = 0x02
    VOLTAGE_LOW = 0x04
    ENGINE_RUNNING = 0x08


class BootResult(IntEnum):
    """Outcome of the last boot, reported in the boot status DID."""

    OK = 0x00
    REVERTED = 0x01
    """The pending image failed to boot too many times; the previous bank runs again."""
    ACTIVE_INVALID = 0x02
    """The active bank failed its integrity check; the other valid bank was booted."""
    NO_VALID_IMAGE = 0x03
    """No bank holds a valid application; the ECU stays in its bootloader."""


NO_BANK = 0xFF


@dataclass(frozen=True)
class BootStatus:
    """The boot status record (DID 0xF1A0), 8 bytes.

    byte 0: active bank (0 = A, 1 = B, 0xFF = none)
    byte 1: pending bank awaiting its trial boot (0xFF = none)
    byte 2: boot attempts of the pending image so far
    bytes 3-6: anti-rollback counter, unsigned 32-bit big-endian
    byte 7: result of the last boot (:class:`BootResult`)
    """

    active_bank: int
    pending_bank: int
    boot_attempts: int
    anti_rollback_counter: int
    last_boot_result: int

    _STRUCT = struct.Struct(">BBBIB")

    def pack(self) -> bytes:
        """Encode the record."""
        return self._STRUCT.pack(
            self.active_bank,
            self.pending_bank,
            self.boot_attempts,
            self.anti_rollback_counter,
            self.last_boot_result,
        )

    @classmethod
    def unpack(cls, data: bytes) -> BootStatus:
        """Decode the record; raises ``ValueError`` on a wrong size."""
        if len(data) != cls._STRUCT.size:
            raise ValueError(f"boot status record has {cls._STRUCT.size} bytes, got {len(data)}")
        return cls(*cls._STRUCT.unpack(data))


def security_key(secret: bytes, seed: bytes) -> bytes:
    """Compute the SecurityAccess key: first 4 bytes of HMAC-SHA256(secret, seed)."""
    return hmac.new(secret, seed, hashlib.sha256).digest()[:KEY_SIZE]


def pad_ascii(text: str, size: int) -> bytes:
    """Encode ``text`` as a fixed-size ASCII record, right-padded with spaces."""
    raw = text.encode("ascii")[:size]
    return raw + b" " * (size - len(raw))


def unpad_ascii(raw: bytes) -> str:
    """Decode a space- or NUL-padded ASCII record."""
    return raw.decode("ascii", errors="replace").rstrip(" \x00")


def bank_name(index: int) -> str:
    """Return the letter of a bank index as used in logs and reports."""
    return {0: "A", 1: "B"}.get(index, "-")


DTC_STATUS_AVAILABILITY_MASK = 0x2F
"""Status bits the simulated ECUs maintain: testFailed, testFailedThisOperationCycle,
pendingDTC, confirmedDTC, testFailedSinceLastClear."""

DTC_STATUS_RECORDED = 0x2F
"""Status of a DTC when its fault is detected."""

DTC_FORMAT_ISO14229_1 = 0x01
"""DTCFormatIdentifier of the 0x19 0x01 reply."""

DTC_BOOT_REVERTED = 0xF00096
"""U3000-96: a new image failed its trial boot; the previous image runs again."""

DTC_IMAGE_INVALID = 0xF00046
"""U3000-46: the active image failed its integrity check at boot."""


def dtc_text(code: int) -> str:
    """Write a 3-byte DTC the SAE J2012 way, e.g. 0xF00096 -> ``U3000-96``."""
    letter = "PCBU"[(code >> 22) & 0x03]
    return f"{letter}{(code >> 20) & 0x03}{(code >> 8) & 0xFFF:03X}-{code & 0xFF:02X}"
