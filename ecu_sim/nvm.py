"""Non-volatile memory of one simulated ECU, safe against a power cut at any moment.

An ECU's NVM is a directory with three files:

``nvm.json``
    Bank records, boot state, anti-rollback counter and whether the active
    image is confirmed, DTCs, security lockout
    and written DIDs. Replaced atomically (temporary file, fsync, rename,
    fsync of the directory), so a crash leaves the old or the new record,
    never a torn one.
``bank_a.bin``, ``bank_b.bin``
    The two application banks. Only the inactive bank is ever written, and a
    bank is recorded as valid (with the SHA-256 of its bytes) only after its
    file has been synced; a crash mid-download leaves a bank that the record
    calls erased, which the bootloader never starts.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ecu_sim.errors import NvmError

FORMAT = 1
RECORD = "nvm.json"
BANK_FILES = ("bank_a.bin", "bank_b.bin")


@dataclass
class BankRecord:
    """What the NVM knows about one application bank."""

    state: str = "erased"
    """``erased`` (no valid content), ``valid``, ``rejected`` (failed its trial boot) or
    ``invalid`` (failed its integrity check at boot)."""
    version: str = ""
    hardware_id: str = ""
    anti_rollback_counter: int = 0
    size_bytes: int = 0
    sha256: str = ""
    """SHA-256 of the bank's bytes, checked before every boot."""


@dataclass
class NvmRecord:
    """The persistent state of an ECU."""

    banks: list[BankRecord] = field(default_factory=lambda: [BankRecord(), BankRecord()])
    active_bank: int | None = None
    pending_bank: int | None = None
    boot_attempts: int = 0
    anti_rollback_counter: int = 0
    """The lowest anti-rollback counter the bootloader accepts; raised only by a confirm."""
    confirmed: bool = True
    """Whether the active image has been confirmed (routine 0xFF02) since it became active.
    Records written before this field existed raised the counter at boot: missing means
    confirmed."""
    last_boot_result: int = 0
    boot_count: int = 0
    dtcs: dict[int, int] = field(default_factory=dict)
    failed_key_attempts: int = 0
    security_lockout: bool = False
    dids: dict[int, str] = field(default_factory=dict)
    """Written DIDs, values as hex strings."""

    def to_json(self) -> str:
        """Serialise for storage."""
        data = asdict(self)
        data["format"] = FORMAT
        data["dtcs"] = {f"{k:06X}": v for k, v in self.dtcs.items()}
        data["dids"] = {f"{k:04X}": v for k, v in self.dids.items()}
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NvmRecord:
        """Parse a stored record; raises ``ValueError`` if it is not one."""
        data: dict[str, Any] = json.loads(text)
        if data.pop("format", None) != FORMAT:
            raise ValueError("unknown NVM format")
        banks = [BankRecord(**b) for b in data.pop("banks")]
        if len(banks) != 2:
            raise ValueError("an NVM record has two banks")
        dtcs = {int(k, 16): int(v) for k, v in data.pop("dtcs").items()}
        dids = {int(k, 16): str(v) for k, v in data.pop("dids").items()}
        return cls(banks=banks, dtcs=dtcs, dids=dids, **data)


class Nvm:
    """File-backed NVM of one ECU in ``directory`` (created if missing)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NvmError(f"cannot create NVM directory {self.directory}: {exc}") from exc
        for leftover in self.directory.glob(f"{RECORD}.tmp*"):
            # A crash between writing and renaming leaves this behind; the old record stands.
            leftover.unlink(missing_ok=True)

    # -- the record -----------------------------------------------------------

    def load(self) -> NvmRecord | None:
        """Return the stored record, or ``None`` for a blank NVM."""
        path = self.directory / RECORD
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise NvmError(f"cannot read {path}: {exc}") from exc
        try:
            return NvmRecord.from_json(text)
        except (ValueError, TypeError, KeyError) as exc:
            raise NvmError(f"{path} is not a valid NVM record: {exc}") from exc

    def save(self, record: NvmRecord) -> None:
        """Replace the stored record atomically and durably."""
        path = self.directory / RECORD
        tmp = path.with_name(f"{RECORD}.tmp{os.getpid()}")
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(record.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            self._sync_directory()
        except OSError as exc:
            raise NvmError(f"cannot write {path}: {exc}") from exc

    # -- the banks --------------------------------------------------------------

    def bank_path(self, bank: int) -> Path:
        """Return the file of bank 0 (A) or 1 (B)."""
        return self.directory / BANK_FILES[bank]

    def erase_bank(self, bank: int) -> None:
        """Empty a bank's file."""
        try:
            with open(self.bank_path(bank), "wb") as handle:
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise NvmError(f"cannot erase bank {bank}: {exc}") from exc

    def open_bank(self, bank: int) -> BankWriter:
        """Open an (erased) bank for sequential writing."""
        try:
            return BankWriter(open(self.bank_path(bank), "r+b"))
        except FileNotFoundError:
            try:
                return BankWriter(open(self.bank_path(bank), "w+b"))
            except OSError as exc:
                raise NvmError(f"cannot open bank {bank}: {exc}") from exc
        except OSError as exc:
            raise NvmError(f"cannot open bank {bank}: {exc}") from exc

    def read_bank(self, bank: int, size: int | None = None) -> bytes:
        """Return the bytes of a bank (the first ``size`` bytes if given)."""
        try:
            with open(self.bank_path(bank), "rb") as handle:
                return handle.read() if size is None else handle.read(size)
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise NvmError(f"cannot read bank {bank}: {exc}") from exc

    def bank_digest(self, bank: int, size: int) -> str:
        """Return the SHA-256 (hex) of the first ``size`` bytes of a bank."""
        data = self.read_bank(bank, size)
        if len(data) != size:
            return ""
        return hashlib.sha256(data).hexdigest()

    def write_bank(self, bank: int, data: bytes) -> None:
        """Write a whole bank and sync it (used for the factory image)."""
        try:
            with open(self.bank_path(bank), "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise NvmError(f"cannot write bank {bank}: {exc}") from exc

    def _sync_directory(self) -> None:
        if os.name != "posix":
            return
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class BankWriter:
    """Sequential writer into a bank file; :meth:`sync` makes the bytes durable."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def write_at(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``."""
        try:
            self._handle.seek(offset)
            self._handle.write(data)
        except OSError as exc:
            raise NvmError(f"bank write failed: {exc}") from exc

    def sync(self) -> None:
        """Flush and fsync the bank file."""
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            raise NvmError(f"bank sync failed: {exc}") from exc

    def close(self) -> None:
        """Close the file (without syncing)."""
        try:
            self._handle.close()
        except OSError:
            pass
