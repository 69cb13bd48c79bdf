"""Fault injection for one simulated ECU, scriptable from Python and from the command line.

Every fault is armed on an ECU's :class:`FaultInjector` and consumed by the UDS
server as the ECU meets the situation it targets::

    ecu.faults.force_nrc(0x36, 0x72, count=1)   # next TransferData fails
    ecu.faults.slow_erase(8.0)                  # erase takes 8 s, 0x78 flood
    ecu.faults.fail_boot()                      # next new image never boots
    ecu.faults.power_cut_at(65536)              # power lost at that byte

On the command line the same faults read ``ECU:KIND[=ARGS]`` (see
:func:`parse_fault`), e.g. ``--fault bms:fail-boot`` or
``--fault ecm:nrc=0x36,0x72,1``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ecu_sim.errors import FaultSpecError


@dataclass
class _Counted:
    remaining: int | None
    """``None``: unlimited."""

    def take(self) -> bool:
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


@dataclass
class _ServiceFault(_Counted):
    service: int | None
    value: float = 0.0
    nrc: int = 0


@dataclass(frozen=True)
class PowerCut:
    """Power is lost when a transfer reaches ``offset`` bytes; back after ``restore_after_s``."""

    offset: int
    restore_after_s: float | None


@dataclass(frozen=True)
class SlowErase:
    """Erase takes ``duration_s``; the ECU sends NRC 0x78 every ``pending_interval_s``."""

    duration_s: float
    pending_interval_s: float


class FaultInjector:
    """The armed faults of one ECU. Thread-safe: tests arm faults while the ECU runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        """Disarm every fault."""
        with self._lock:
            self._drops: list[_ServiceFault] = []
            self._delays: list[_ServiceFault] = []
            self._nrcs: list[_ServiceFault] = []
            self._slow_erase: tuple[SlowErase, _Counted] | None = None
            self._corrupt: dict[int, _Counted] = {}
            self._boot: _Counted | None = None
            self._power_cut: PowerCut | None = None

    # -- arming -----------------------------------------------------------------

    def drop_responses(self, count: int | None = None, *, service: int | None = None) -> None:
        """Swallow the next ``count`` responses (all if ``None``), optionally of one service."""
        with self._lock:
            self._drops.append(_ServiceFault(_check_count(count), _check_sid(service)))

    def delay_responses(
        self, delay_s: float, count: int | None = None, *, service: int | None = None
    ) -> None:
        """Hold back the next ``count`` responses by ``delay_s`` seconds."""
        if delay_s < 0:
            raise FaultSpecError("a delay cannot be negative")
        with self._lock:
            self._delays.append(
                _ServiceFault(_check_count(count), _check_sid(service), value=delay_s)
            )

    def force_nrc(self, service: int, nrc: int, count: int | None = None) -> None:
        """Answer the next ``count`` requests of ``service`` with negative response ``nrc``."""
        if not 0x10 <= nrc <= 0xFF or nrc == 0x78:
            raise FaultSpecError(f"NRC 0x{nrc:02X} cannot be forced (0x10-0xFF, not 0x78)")
        with self._lock:
            self._nrcs.append(_ServiceFault(_check_count(count), _check_sid(service), nrc=nrc))

    def slow_erase(
        self, duration_s: float, pending_interval_s: float = 0.01, count: int | None = 1
    ) -> None:
        """Make the next ``count`` erases last ``duration_s``, flooding NRC 0x78."""
        if duration_s < 0 or pending_interval_s <= 0:
            raise FaultSpecError("slow erase needs a duration >= 0 and an interval > 0")
        with self._lock:
            self._slow_erase = (SlowErase(duration_s, pending_interval_s), _Counted(count))

    def corrupt_block(self, block: int = 1, count: int | None = 1) -> None:
        """Flip a bit in the ``block``-th TransferData block of the next downloads."""
        if block < 1:
            raise FaultSpecError("blocks are counted from 1")
        with self._lock:
            self._corrupt[block] = _Counted(_check_count(count))

    def fail_boot(self, times: int | None = None) -> None:
        """Make the next new image fail its boot ``times`` times (every time if ``None``)."""
        with self._lock:
            self._boot = _Counted(_check_count(times))

    def power_cut_at(self, offset: int, restore_after_s: float | None = None) -> None:
        """Cut the power when the next transfer reaches ``offset`` bytes."""
        if offset < 0:
            raise FaultSpecError("offset cannot be negative")
        if restore_after_s is not None and restore_after_s < 0:
            raise FaultSpecError("restore delay cannot be negative")
        with self._lock:
            self._power_cut = PowerCut(offset, restore_after_s)

    # -- consumption (by the UDS server) ---------------------------------------------

    def take_nrc(self, sid: int) -> int | None:
        """Return a forced NRC for this request, if one is armed."""
        with self._lock:
            for fault in self._nrcs:
                if fault.service in (None, sid) and fault.take():
                    return fault.nrc
        return None

    def take_drop(self, sid: int) -> bool:
        """Return whether this response is to be swallowed."""
        with self._lock:
            return any(f.service in (None, sid) and f.take() for f in self._drops)

    def take_delay(self, sid: int) -> float:
        """Return how long to hold this response back."""
        with self._lock:
            for fault in self._delays:
                if fault.service in (None, sid) and fault.take():
                    return fault.value
        return 0.0

    def take_slow_erase(self) -> SlowErase | None:
        """Return the slow-erase behaviour for this erase, if armed."""
        with self._lock:
            if self._slow_erase and self._slow_erase[1].take():
                return self._slow_erase[0]
        return None

    def take_corruption(self, block_index: int) -> bool:
        """Return whether the ``block_index``-th block (from 1) of this download is corrupted."""
        with self._lock:
            counted = self._corrupt.get(block_index)
            return bool(counted and counted.take())

    def take_boot_failure(self) -> bool:
        """Return whether this boot attempt of a new image fails."""
        with self._lock:
            return bool(self._boot and self._boot.take())

    def boot_concluded(self) -> None:
        """Disarm the boot fault: the new image was committed or reverted."""
        with self._lock:
            self._boot = None

    def take_power_cut(self, start: int, end: int) -> PowerCut | None:
        """Return the power cut falling in bytes ``[start, end)`` of a transfer, if any."""
        with self._lock:
            cut = self._power_cut
            if cut is not None and start <= cut.offset < end:
                self._power_cut = None
                return cut
        return None


def _check_count(count: int | None) -> int | None:
    if count is not None and count < 0:
        raise FaultSpecError("a count cannot be negative")
    return count


def _check_sid(service: int | None) -> int | None:
    if service is not None and not 0 <= service <= 0xFF:
        raise FaultSpecError(f"service id {service} is not a byte")
    return service


# -- command-line form ---------------------------------------------------------------

FAULT_KINDS = {
    "drop": "drop[=COUNT]: swallow the next COUNT responses (all if omitted)",
    "delay": "delay=MS[,COUNT]: hold back responses by MS milliseconds",
    "nrc": "nrc=SID,NRC[,COUNT]: answer service SID with negative response NRC",
    "slow-erase": "slow-erase=SECONDS[,INTERVAL_MS]: erase takes SECONDS, NRC 0x78 flood",
    "corrupt-block": "corrupt-block=N: corrupt the N-th TransferData block of the next download",
    "fail-boot": "fail-boot[=TIMES]: the next new image fails to boot (TIMES times)",
    "power-cut-at": "power-cut-at=OFFSET[,RESTORE_S]: lose power at byte OFFSET of a transfer",
}


@dataclass(frozen=True)
class FaultSpec:
    """A parsed ``ECU:KIND[=ARGS]`` fault for one ECU."""

    ecu: str
    kind: str
    apply: Callable[[FaultInjector], None]
    text: str


def _int(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError as exc:
        raise FaultSpecError(f"{what} {text!r} is not an integer") from exc


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise FaultSpecError(f"{what} {text!r} is not a number") from exc


def parse_fault(text: str) -> FaultSpec:
    """Parse ``ECU:KIND[=ARGS]``; raises :class:`FaultSpecError` with the reason."""
    ecu, sep, rest = text.partition(":")
    if not sep or not ecu or not rest:
        raise FaultSpecError(f"fault {text!r} must look like ECU:KIND[=ARGS]")
    kind, _, arg_text = rest.partition("=")
    args = [a.strip() for a in arg_text.split(",")] if arg_text else []
    apply: Callable[[FaultInjector], None]
    if kind not in FAULT_KINDS:
        raise FaultSpecError(f"unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")

    def need(low: int, high: int) -> None:
        if not low <= len(args) <= high:
            raise FaultSpecError(f"fault {text!r}: {FAULT_KINDS[kind]}")

    if kind == "drop":
        need(0, 1)
        count = _int(args[0], "count") if args else None
        apply = lambda f: f.drop_responses(count)  # noqa: E731
    elif kind == "delay":
        need(1, 2)
        delay_s = _float(args[0], "delay") / 1000
        count = _int(args[1], "count") if len(args) > 1 else None
        apply = lambda f: f.delay_responses(delay_s, count)  # noqa: E731
    elif kind == "nrc":
        need(2, 3)
        sid, nrc = _int(args[0], "service"), _int(args[1], "NRC")
        count = _int(args[2], "count") if len(args) > 2 else None
        apply = lambda f: f.force_nrc(sid, nrc, count)  # noqa: E731
    elif kind == "slow-erase":
        need(1, 2)
        duration = _float(args[0], "duration")
        interval = _float(args[1], "interval") / 1000 if len(args) > 1 else 0.01
        apply = lambda f: f.slow_erase(duration, interval, None)  # noqa: E731
    elif kind == "corrupt-block":
        need(1, 1)
        block = _int(args[0], "block")
        apply = lambda f: f.corrupt_block(block)  # noqa: E731
    elif kind == "fail-boot":
        need(0, 1)
        times = _int(args[0], "times") if args else None
        apply = lambda f: f.fail_boot(times)  # noqa: E731
    else:
        need(1, 2)
        offset = _int(args[0], "offset")
        restore = _float(args[1], "restore delay") if len(args) > 1 else None
        apply = lambda f: f.power_cut_at(offset, restore)  # noqa: E731
    # Validate the arguments now rather than when the ECU starts.
    apply(FaultInjector())
    return FaultSpec(ecu=ecu, kind=kind, apply=apply, text=text)
