"""The bootloader of a simulated ECU: two application banks, trial boot and revert.

Pure logic over an :class:`~ecu_sim.nvm.Nvm`: no threads, no clock. The UDS
server calls it for erase, download, the check routines and resets; the
record it keeps in NVM is consistent after every single write, so a power
cut at any moment leaves an ECU that boots a valid image.

The rules:

* download only ever writes the inactive bank; the active bank is never touched;
* 0x0202 compares the CRC-32 of what the bank holds with the tester's;
* 0xFF01 checks the signed header (trust anchor, hardware id, anti-rollback
  counter) and, if it is accepted, records the bank as valid and pending;
* the next boot tries the pending bank; each attempt is counted in NVM before
  it starts; ``max_boot_attempts`` failures in a row reject the new image,
  store a DTC and boot the previous bank again;
* an image that passed its trial boot runs *unconfirmed*: the stored
  anti-rollback counter rises only when the tester confirms it (0xFF02), so
  until then the previous image may be activated again (0xFF03) -- the
  "confirm" of MCUboot, the "mark successful" of Android A/B updates;
* every boot checks the SHA-256 of the bank it starts, and never starts an
  image whose anti-rollback counter is below the stored one.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ecu_sim.errors import NvmError
from ecu_sim.faults import FaultInjector, PowerCut
from ecu_sim.nvm import BankRecord, BankWriter, Nvm, NvmRecord
from ota_formats import ImageFormatError, ImageIntegrityError, SignatureError, parse_image
from ota_formats.uds import (
    APP_ADDRESS,
    DTC_BOOT_REVERTED,
    DTC_IMAGE_INVALID,
    DTC_STATUS_RECORDED,
    NO_BANK,
    ActivatePreviousStatus,
    BootResult,
    BootStatus,
    CheckMemoryStatus,
    ConfirmStatus,
    DependencyStatus,
)
from ota_formats.vehicle import EcuSpec


class SequenceError(Exception):
    """The operation needs an earlier step that has not happened (maps to NRC 0x24)."""


class OutOfRange(Exception):
    """An address or size is outside the application area (maps to NRC 0x31)."""


class WrongBlockCounter(Exception):
    """A TransferData block counter is neither the expected nor the repeated one (0x73)."""


class NotAccepted(Exception):
    """The download cannot start in the present state (maps to NRC 0x70)."""


class ConditionsNotCorrect(Exception):
    """The operation is not possible in the present state (maps to NRC 0x22)."""


@dataclass(frozen=True)
class BootReport:
    """What one boot did."""

    attempts: int
    """Boot attempts made (each costs the ECU's boot time), at least 1."""
    result: BootResult
    app_valid: bool


@dataclass
class _Download:
    bank: int
    size: int
    writer: BankWriter
    received: int = 0
    expected_counter: int = 1
    last_counter: int | None = None
    blocks: int = 0


def factory_payload(spec: EcuSpec) -> bytes:
    """Return the deterministic factory application of an ECU."""
    seed = hashlib.sha256(f"{spec.name}/{spec.software_version}".encode()).digest()
    count = -(-spec.factory_image_bytes // len(seed))
    return (seed * count)[: spec.factory_image_bytes]


class Bootloader:
    """Bank management, download and boot logic of one ECU."""

    def __init__(
        self,
        spec: EcuSpec,
        nvm: Nvm,
        trust_anchors: Sequence[Ed25519PublicKey],
        faults: FaultInjector,
    ) -> None:
        self.spec = spec
        self.nvm = nvm
        self.trust_anchors = list(trust_anchors)
        self.faults = faults
        loaded = nvm.load()
        self.record: NvmRecord = loaded if loaded is not None else self._factory_reset()
        self._erased: tuple[int, int] | None = None
        self._download: _Download | None = None
        self._transferred: tuple[int, int] | None = None
        # The bank's bytes as the memory check read them, when it passed: 0xFF01 verifies those.
        self._checked: bytes | None = None

    # -- state --------------------------------------------------------------------

    def _factory_reset(self) -> NvmRecord:
        payload = factory_payload(self.spec)
        self.nvm.write_bank(0, payload)
        self.nvm.erase_bank(1)
        record = NvmRecord(
            banks=[
                BankRecord(
                    state="valid",
                    version=self.spec.software_version,
                    hardware_id=self.spec.hardware_id,
                    anti_rollback_counter=self.spec.anti_rollback_counter,
                    size_bytes=len(payload),
                    sha256=hashlib.sha256(payload).hexdigest(),
                ),
                BankRecord(),
            ],
            active_bank=0,
            anti_rollback_counter=self.spec.anti_rollback_counter,
            dtcs={d.code: d.status for d in self.spec.dtcs if d.status},
        )
        self.nvm.save(record)
        return record

    def save(self) -> None:
        """Persist the record (atomic); if that fails, memory goes back to what NVM holds."""
        try:
            self.nvm.save(self.record)
        except NvmError:
            stored = self.nvm.load()
            if stored is not None:
                self.record = stored
            raise

    @property
    def active_version(self) -> str:
        """Version of the running application, ``""`` when none is valid."""
        bank = self.record.active_bank
        if bank is None or self.record.banks[bank].state != "valid":
            return ""
        return self.record.banks[bank].version

    @property
    def inactive_bank(self) -> int:
        """The bank a download writes."""
        return 0 if self.record.active_bank in (None, 1) else 1

    def boot_status(self) -> BootStatus:
        """Return the boot status record (DID 0xF1A0)."""
        rec = self.record
        return BootStatus(
            active_bank=NO_BANK if rec.active_bank is None else rec.active_bank,
            pending_bank=NO_BANK if rec.pending_bank is None else rec.pending_bank,
            boot_attempts=min(rec.boot_attempts, 0xFF),
            anti_rollback_counter=rec.anti_rollback_counter,
            last_boot_result=rec.last_boot_result,
        )

    def record_dtc(self, code: int, status: int = DTC_STATUS_RECORDED) -> None:
        """Store a DTC with its status bits and persist it."""
        self._mark_dtc(code, status)
        self.save()

    def _mark_dtc(self, code: int, status: int = DTC_STATUS_RECORDED) -> None:
        self.record.dtcs[code] = self.record.dtcs.get(code, 0) | status

    # -- boot -----------------------------------------------------------------------

    def _intact(self, bank: int) -> bool:
        info = self.record.banks[bank]
        return info.state == "valid" and self.nvm.bank_digest(bank, info.size_bytes) == info.sha256

    def boot(self) -> BootReport:
        """Run the boot sequence after a reset or power-up and persist its outcome."""
        self.abort_programming()
        rec = self.record
        rec.boot_count += 1
        # A new operation cycle: the "this operation cycle" status bit starts clear.
        rec.dtcs = {code: status & ~0x02 for code, status in rec.dtcs.items()}
        attempts = 0
        result = BootResult.OK
        verified: int | None = None
        if rec.pending_bank is not None:
            bank = rec.pending_bank
            if not self._intact(bank):
                rec.banks[bank] = BankRecord()
                rec.pending_bank = None
                rec.boot_attempts = 0
            elif rec.banks[bank].anti_rollback_counter < rec.anti_rollback_counter:
                # 0xFF01 and 0xFF03 check this and a confirm waits for the trial boot, so
                # only a record from elsewhere gets here: it must not open a downgrade.
                rec.pending_bank = None
                rec.boot_attempts = 0
            else:
                while True:
                    rec.boot_attempts += 1
                    attempts += 1
                    # Counted before the attempt, so a power cut during it still counts.
                    self.save()
                    if not self.faults.take_boot_failure():
                        rec.active_bank = verified = bank
                        rec.pending_bank = None
                        rec.boot_attempts = 0
                        # Runs on trial: the counter rises at the tester's confirm (0xFF02),
                        # so the previous bank can still be activated again until then.
                        rec.confirmed = False
                        self.faults.boot_concluded()
                        break
                    if rec.boot_attempts >= self.spec.timing.max_boot_attempts:
                        rec.banks[bank].state = "rejected"
                        rec.pending_bank = None
                        rec.boot_attempts = 0
                        self._mark_dtc(DTC_BOOT_REVERTED)
                        result = BootResult.REVERTED
                        self.faults.boot_concluded()
                        break
        # The bank just committed was hashed a moment ago; only another one needs it now.
        app_valid = rec.active_bank is not None and (
            rec.active_bank == verified or self._intact(rec.active_bank)
        )
        if not app_valid:
            if rec.active_bank is not None:
                rec.banks[rec.active_bank].state = "invalid"
            # The fallback obeys anti-rollback too: a corrupt bank must not open a downgrade.
            other = [
                b
                for b in (0, 1)
                if b != rec.active_bank
                and self._intact(b)
                and rec.banks[b].anti_rollback_counter >= rec.anti_rollback_counter
            ]
            if other:
                rec.active_bank = other[0]
                # A bank that starts in place of another is new to this role: confirm it anew.
                rec.confirmed = False
                app_valid = True
                result = BootResult.ACTIVE_INVALID
                self._mark_dtc(DTC_IMAGE_INVALID)
            else:
                result = BootResult.NO_VALID_IMAGE
        rec.last_boot_result = result
        self.save()
        return BootReport(attempts=max(attempts, 1), result=result, app_valid=app_valid)

    # -- programming ------------------------------------------------------------------

    def abort_programming(self) -> None:
        """Forget any erase or download in progress (volatile state only)."""
        if self._download is not None:
            self._download.writer.close()
        self._download = None
        self._erased = None
        self._transferred = None
        self._checked = None

    def _check_range(self, address: int, size: int) -> None:
        if address != APP_ADDRESS:
            raise OutOfRange(f"address 0x{address:08X} is not the application area")
        if not 0 < size <= self.spec.bank_size_bytes:
            raise OutOfRange(f"size {size} outside 1..{self.spec.bank_size_bytes}")

    def erase(self, address: int, size: int) -> None:
        """Erase the inactive bank (record first, then the file)."""
        self._check_range(address, size)
        self.abort_programming()
        bank = self.inactive_bank
        rec = self.record
        if rec.pending_bank == bank:
            rec.pending_bank = None
            rec.boot_attempts = 0
        rec.banks[bank] = BankRecord()
        self.save()
        self.nvm.erase_bank(bank)
        self._erased = (bank, size)

    @property
    def downloading(self) -> bool:
        """Whether a RequestDownload is active."""
        return self._download is not None

    def request_download(self, address: int, size: int) -> None:
        """Start a download into the erased bank."""
        self._check_range(address, size)
        if self._erased is None or self._erased[1] < size:
            raise NotAccepted("the application area is not erased for this size")
        bank = self._erased[0]
        self._transferred = None
        self._checked = None
        self._download = _Download(bank=bank, size=size, writer=self.nvm.open_bank(bank))

    def check_block(self, counter: int, size: int) -> bool:
        """Validate a TransferData block before it is written; ``True`` if it is a repeat.

        Raises :class:`SequenceError` (no download), :class:`WrongBlockCounter`
        or :class:`OutOfRange` (beyond the requested size).
        """
        dl = self._download
        if dl is None:
            raise SequenceError("no download is active")
        if dl.last_counter is not None and counter == dl.last_counter:
            # The tester missed our reply and sent the block again: it is already written.
            return True
        if dl.received == dl.size:
            raise SequenceError("every requested byte has been transferred")
        if counter != dl.expected_counter:
            raise WrongBlockCounter(
                f"block counter 0x{counter:02X}, expected 0x{dl.expected_counter:02X}"
            )
        if dl.received + size > dl.size:
            raise OutOfRange("block goes beyond the requested size")
        return False

    def transfer(self, counter: int, data: bytes) -> PowerCut | None:
        """Write one TransferData block; returns a power cut if one strikes inside it."""
        if self.check_block(counter, len(data)):
            return None
        dl = self._download
        assert dl is not None
        dl.blocks += 1
        if self.faults.take_corruption(dl.blocks):
            data = bytes([data[0] ^ 0x01]) + data[1:]
        cut = self.faults.take_power_cut(dl.received, dl.received + len(data))
        if cut is not None:
            dl.writer.write_at(dl.received, data[: cut.offset - dl.received])
            return cut
        dl.writer.write_at(dl.received, data)
        dl.received += len(data)
        dl.last_counter = counter
        dl.expected_counter = (counter + 1) & 0xFF
        return None

    def transfer_exit(self) -> None:
        """End the download; the bytes are synced to the bank."""
        dl = self._download
        if dl is None:
            raise SequenceError("no download is active")
        if dl.received != dl.size:
            raise SequenceError(f"{dl.received} of {dl.size} bytes transferred")
        dl.writer.sync()
        dl.writer.close()
        self._download = None
        self._erased = None
        self._transferred = (dl.bank, dl.size)

    def check_memory(self, expected_crc: int) -> CheckMemoryStatus:
        """Compare the CRC-32 of the downloaded bank bytes with ``expected_crc``."""
        if self._transferred is None:
            raise SequenceError("nothing has been downloaded")
        bank, size = self._transferred
        data = self.nvm.read_bank(bank, size)
        correct = zlib.crc32(data) & 0xFFFFFFFF == expected_crc
        self._checked = data if correct else None
        return CheckMemoryStatus.CORRECT if correct else CheckMemoryStatus.INCORRECT

    def check_dependencies(self) -> DependencyStatus:
        """Verify the downloaded image; if accepted, record it as valid and pending."""
        if self._transferred is None or self._checked is None:
            raise SequenceError("the memory check has not passed")
        bank, size = self._transferred
        data = self._checked
        try:
            image = parse_image(data)
            image.check_integrity()
        except (ImageFormatError, ImageIntegrityError):
            return DependencyStatus.IMAGE_INVALID
        try:
            image.check_signature(self.trust_anchors)
        except SignatureError:
            return DependencyStatus.SIGNATURE_INVALID
        if image.header.hardware_id != self.spec.hardware_id:
            return DependencyStatus.HARDWARE_MISMATCH
        if image.header.anti_rollback_counter < self.record.anti_rollback_counter:
            return DependencyStatus.ROLLBACK_REFUSED
        self.record.banks[bank] = BankRecord(
            state="valid",
            version=image.header.version,
            hardware_id=image.header.hardware_id,
            anti_rollback_counter=image.header.anti_rollback_counter,
            size_bytes=size,
            sha256=hashlib.sha256(data).hexdigest(),
        )
        self.record.pending_bank = bank
        self.record.boot_attempts = 0
        self.save()
        self._transferred = None
        self._checked = None
        return DependencyStatus.ACCEPTED

    # -- confirm and bank switch --------------------------------------------------------

    def confirm_image(self) -> ConfirmStatus:
        """Confirm the active image: the stored anti-rollback counter rises to its counter.

        Idempotent. Raises :class:`ConditionsNotCorrect` while an image awaits its
        trial boot: a confirm then could raise the counter above the pending image's.
        """
        rec = self.record
        if rec.pending_bank is not None:
            raise ConditionsNotCorrect("an image awaits its trial boot; reset first")
        bank = rec.active_bank
        if bank is None or rec.banks[bank].state != "valid":
            return ConfirmStatus.NO_VALID_IMAGE
        counter = max(rec.anti_rollback_counter, rec.banks[bank].anti_rollback_counter)
        if rec.confirmed and rec.anti_rollback_counter == counter:
            return ConfirmStatus.CONFIRMED
        # Both in one record write: a power cut leaves both changed or neither.
        rec.anti_rollback_counter = counter
        rec.confirmed = True
        self.save()
        return ConfirmStatus.CONFIRMED

    def activate_previous(self) -> ActivatePreviousStatus:
        """Make the inactive bank's image pending, so that the next reset trial-boots it.

        The active bank is left as it is: if the previous image fails its trial boot,
        the usual revert boots the active bank again. Repeating the request is harmless.
        """
        rec = self.record
        bank = self.inactive_bank
        info = rec.banks[bank]
        # Hashed now, not only at boot, so that the tester learns of a corrupt bank here
        # rather than from a reset that quietly starts the same image again.
        if not self._intact(bank):
            return ActivatePreviousStatus.NO_VALID_IMAGE
        if info.anti_rollback_counter < rec.anti_rollback_counter:
            return ActivatePreviousStatus.ROLLBACK_REFUSED
        if rec.pending_bank != bank:
            rec.pending_bank = bank
            rec.boot_attempts = 0
            self.save()
        return ActivatePreviousStatus.PENDING
