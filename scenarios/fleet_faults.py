"""The fault library in a modeled fleet: the same fault models, applied to vehicles in virtual time.

:class:`FleetFaults` takes the models of :mod:`scenarios.faults` (a scenario
file's ``[[params.faults]]`` tables) and gives each a meaning for a fleet of
:class:`~scenarios.fleet.FleetWorld`. It replaces the world's vehicle process
by one that can be interrupted and refused, and behaves as the real gateway
does then (:mod:`gateway.backend`, :mod:`gateway.orchestrator`):

- **backend-restart** (``at_s`` and ``down_s``, or ``vin`` and
  ``during_flash_of``), **network-partition** (``duration_s``; ``vin``, or the
  whole fleet: a cellular outage). Every call of a vehicle that cannot reach
  the backend is refused (UNAVAILABLE) and counted. The vehicle backs off as
  :class:`gateway.backend.Backoff` does: full jitter, up to 30 s, and after
  300 s it gives up the call and starts over, as :meth:`gateway.tcu.Gateway.run`
  does. A download stops and resumes where it was. A progress report
  (downloading, installing) waits in the background while the flash goes on,
  and is dropped when the outcome is known or the backoff gives up. The final
  report is sent again under the same report id until it is delivered, so no
  outcome is lost. The backend keeps its state (it restarts over its store);
  its timer skips its ticks while it is down, and the operator's calls wait
  for it (:meth:`scenarios.fleet.FleetWorld.backend_answers`).
- **gateway-restart** (``down_s``; ``vin``, or every vehicle working on an
  update at that moment). The vehicle's process is interrupted; the gateway
  comes back after ``down_s``, registers again (retrying while the backend is
  out of reach), and resumes as the orchestrator does: a download is offered
  again at the next check-in and continues from the bytes it had; a
  vehicle waiting to be parked checks in again and waits on; mid-flash, ECUs
  already flashed stay flashed, and the ECU being flashed is flashed again from
  the start once it has left its programming session (S3, 5 s), unless it had
  already reset into its new image, which is kept if it boots; a rollback
  carries on; the final report is sent again.
- **power-cut** (``ecu``; ``at_s`` or ``during_flash_of``: ``vin``, or every
  vehicle flashing that ECU at that moment; ``offset``: that byte of the ECU's
  next transfer, ``vin`` or every vehicle, at the time the bus model gives for
  it). That flash fails where it stands, and the vehicle takes its usual
  failure path: the ECUs already flashed are rolled back (``rolled_back``),
  or nothing is (``failed``). The cut ECU's active bank was never touched, so
  it runs its previous image once its power is back, which the model takes to
  be when the gateway next reads it: ``restore_after_s`` is not modeled (its
  events say so when it is given), and without it the power still comes
  back, where in a wire scenario it stays off.
- **boot-failure** (``ecu``, ``times``): the next ``times`` trial boots of that
  ECU's new image fail (every one, if not given), on ``vin`` or every vehicle.
- **nrc** (``ecu``, ``service``, ``code``, ``count``): if the flash sequence
  of :class:`gateway.flasher.Flasher` uses the service, the next ``count``
  flashes of that ECU fail at the step that sends it first, with the
  flasher's reason (``negative response 0x22 (ConditionsNotCorrect)``);
  otherwise the fault has no effect and says so.
- **slow-erase** (``ecu``, ``duration_s``): the next erase of that ECU takes
  ``duration_s`` instead of the bus model's erase time (as the simulated ECU's
  slow erase does).
- **frame-loss** (``probability``, ``count``, ``duration_s``, ``direction``,
  ``can_ids``; ``vin`` or every vehicle): a flash that overlaps the window
  fails if a frame it cannot do without is lost: a request or response of a
  diagnostic step, or a flow control frame of the transfer (a lost
  consecutive frame or TransferData response is repeated by the flasher).
  The frames come from the bus model; a flash fails with probability
  ``1 - (1 - probability) ** n`` for the ``n`` such frames in the overlap.
- **tampered-artifact** (``ecu``): the stored image in the backend's artifact
  store really has a byte flipped; its SHA-256 is then computed from the
  stored bytes (once per tampering, not per vehicle), and every download of
  that image fails its verification at the step ``download`` with the
  gateway's reason, once the vehicle has downloaded the images up to it.

Faults fire at ``at_s`` (seconds after :meth:`FleetFaults.start`), or when
the vehicle ``vin`` reaches the programming session of ``during_flash_of``
(with ``during_transfer``: its transfer), or at once. Each logs ``fault``
events (source ``fault``, kind = the fault's kind); one whose moment never
comes, or that never takes effect, says so (``not triggered``) when the run
ends (:meth:`FleetFaults.finish`).

Without faults none of this runs: the world keeps its own vehicle process.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import Counter
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import simpy

from backend_stub.engine import Offer
from backend_stub.model import ActionState, EcuInfo
from ecu_sim import demo_vehicle
from ecu_sim.uds.server import FUNCTIONALLY_SUPPRESSED
from gateway.backend import Backoff
from gateway.diag import nrc_name
from gateway.flasher import FlashStep
from scenarios.busmodel import BusModel
from scenarios.core import ProcessGenerator, ScenarioError
from scenarios.faults import (
    NO_EFFECT,
    BackendRestart,
    BootFailure,
    Fault,
    ForcedNrc,
    FrameLoss,
    GatewayRestart,
    NetworkPartition,
    PowerCut,
    SlowErase,
    TamperedArtifact,
)
from scenarios.fleet import Car, FleetWorld, fleet_vin

S3_S = 5.0
"""An ECU left in its programming session falls back after S3 (the wire contract's 5 s)."""
RETRY_AFTER_GIVE_UP_S = 5.0
"""After its backoff gives up, the gateway polls again after this long (no check-in interval)."""

UPDATE_PHASES = frozenset({"download", "wait", "install", "rollback", "report"})
"""Phases in which a vehicle works on an update (a gateway restart then interrupts it)."""

# The flash sequence of gateway.flasher.Flasher (with confirm=False, as the
# orchestrator flashes): fixed steps share the bus model's fixed time.
_BEFORE_ERASE = (
    FlashStep.IDENTIFY,
    FlashStep.EXTENDED_SESSION,
    FlashStep.PRECONDITIONS,
    FlashStep.DISABLE_DTC_SETTING,
    FlashStep.DISABLE_COMMUNICATION,
    FlashStep.PROGRAMMING_SESSION,
    FlashStep.SECURITY_ACCESS,
    FlashStep.FINGERPRINT,
)
_AFTER_TRANSFER = (
    FlashStep.TRANSFER_EXIT,
    FlashStep.CHECK_MEMORY,
    FlashStep.CHECK_DEPENDENCIES,
    FlashStep.RESET,
)
_FIXED_STEPS = len(_BEFORE_ERASE) + 1 + len(_AFTER_TRANSFER)

NRC_STEPS: dict[int, tuple[FlashStep, ...]] = {
    0x22: (FlashStep.IDENTIFY, FlashStep.VERIFY),
    0x10: (FlashStep.EXTENDED_SESSION, FlashStep.PROGRAMMING_SESSION),
    0x31: (
        FlashStep.PRECONDITIONS,
        FlashStep.ERASE,
        FlashStep.CHECK_MEMORY,
        FlashStep.CHECK_DEPENDENCIES,
    ),
    0x85: (FlashStep.DISABLE_DTC_SETTING,),
    0x28: (FlashStep.DISABLE_COMMUNICATION,),
    0x27: (FlashStep.SECURITY_ACCESS,),
    0x2E: (FlashStep.FINGERPRINT,),
    0x34: (FlashStep.REQUEST_DOWNLOAD,),
    0x36: (FlashStep.TRANSFER,),
    0x37: (FlashStep.TRANSFER_EXIT,),
    0x11: (FlashStep.RESET,),
}
"""Each service a flash sends and fails on when refused, with the steps that send it, in order."""
_FUNCTIONAL_SERVICES = frozenset({0x85, 0x28})
"""Sent functionally (a refusal is listened for, but some NRCs are never sent to those)."""

# Frames per step: (tester's that the flash cannot do without, tester's others,
# ECU's it cannot do without, ECU's others, functional). The transfer's come from the bus model.
_STEP_FRAMES: dict[FlashStep, tuple[int, int, int, int, int]] = {
    FlashStep.IDENTIFY: (1, 0, 1, 0, 0),
    FlashStep.EXTENDED_SESSION: (1, 0, 1, 0, 1),
    FlashStep.PRECONDITIONS: (1, 0, 1, 0, 0),
    FlashStep.DISABLE_DTC_SETTING: (0, 0, 0, 0, 1),
    FlashStep.DISABLE_COMMUNICATION: (0, 0, 0, 0, 1),
    FlashStep.PROGRAMMING_SESSION: (1, 0, 1, 0, 0),
    FlashStep.SECURITY_ACCESS: (2, 0, 2, 0, 0),
    FlashStep.FINGERPRINT: (2, 0, 2, 0, 0),
    FlashStep.ERASE: (1, 0, 1, 0, 0),
    FlashStep.REQUEST_DOWNLOAD: (1, 0, 1, 0, 0),
    FlashStep.TRANSFER_EXIT: (1, 0, 1, 0, 0),
    FlashStep.CHECK_MEMORY: (1, 0, 1, 0, 0),
    FlashStep.CHECK_DEPENDENCIES: (1, 0, 1, 0, 0),
    # The reset's reply may be lost (the flasher then lets the verification tell).
    FlashStep.RESET: (1, 0, 0, 1, 0),
    # Boot probes are repeated; the version read after them is not.
    FlashStep.VERIFY: (1, 1, 1, 1, 0),
}

_VIN = re.compile(r"SMFLEET(\d{10})")


# ------------------------------------------------------------------ validation
def fault_target_errors(
    faults: Sequence[Fault], vehicles: int, ecus: Sequence[str]
) -> list[tuple[tuple[int | str, ...], str]]:
    """Return ``(location, message)`` for each fault naming what the fleet does not have.

    ``vehicles`` is the fleet's size (VINs are :func:`~scenarios.fleet.fleet_vin`
    of 0 .. vehicles - 1) and ``ecus`` the release's ECUs. A location reads as
    pydantic's do: ``("faults", 0, "power-cut", "vin")``.
    """
    errors: list[tuple[tuple[int | str, ...], str]] = []
    known = ", ".join(ecus)
    last = fleet_vin(vehicles - 1)
    for index, fault in enumerate(faults):
        where: tuple[int | str, ...] = ("faults", index, fault.kind)
        vin = getattr(fault, "vin", None)
        if vin is not None:
            match = _VIN.fullmatch(vin)
            if match is None or int(match.group(1)) >= vehicles:
                errors.append(
                    (
                        (*where, "vin"),
                        f"no vehicle {vin!r} in this fleet of {vehicles} "
                        f"({fleet_vin(0)} .. {last})",
                    )
                )
        for key in ("ecu", "during_flash_of"):
            ecu = getattr(fault, key, None)
            if ecu is not None and ecu not in ecus:
                errors.append(((*where, key), f"no ECU {ecu!r} in the release (known: {known})"))
        if getattr(fault, "during_flash_of", None) is not None and vin is None:
            errors.append(
                (
                    (*where, "during_flash_of"),
                    "in a fleet, name the vehicle (vin) whose flash is the moment",
                )
            )
    return errors


def check_fleet_targets(faults: Sequence[Fault], vehicles: int, ecus: Sequence[str]) -> None:
    """Raise :class:`ScenarioError` for the first fault naming what the fleet does not have."""
    errors = fault_target_errors(faults, vehicles, ecus)
    if errors:
        location, message = errors[0]
        raise ScenarioError(".".join(str(part) for part in location) + ": " + message)


# ---------------------------------------------------------------- interrupts
@dataclass(frozen=True, slots=True)
class _Restart:
    """The gateway dies now and comes back after ``down_s``."""

    down_s: float


@dataclass(frozen=True, slots=True)
class _LinkDown:
    """The vehicle's link to the backend went down (a download stalls)."""


@dataclass(frozen=True, slots=True)
class _Replan:
    """A fault now concerns the flash in progress: plan the rest of it again."""


@dataclass(frozen=True, slots=True)
class _PowerLost:
    """The ECU being flashed loses its power now."""


# --------------------------------------------------------------- fault state
@dataclass
class _LinkWindow:
    """A time the backend (``backend``), or the link of ``vin`` (or of every vehicle), is out."""

    fault: Fault
    vin: str | None
    backend: bool
    refused: int = 0

    def covers(self, vin: str) -> bool:
        return self.vin is None or self.vin == vin


@dataclass
class _Armed:
    """An ECU fault armed on one vehicle (``vin``) or on every vehicle, with its budget each."""

    index: int
    fault: PowerCut | BootFailure | ForcedNrc | SlowErase
    vin: str | None
    budget: int | None
    """Times it takes effect on each vehicle (``None``: every time)."""
    used: Counter[str] = field(default_factory=Counter)
    hits: int = 0

    def left(self, vin: str) -> bool:
        return (self.vin is None or self.vin == vin) and (
            self.budget is None or self.used[vin] < self.budget
        )

    def take(self, vin: str) -> None:
        self.used[vin] += 1
        self.hits += 1


@dataclass
class _LossWindow:
    """Frames lost on the diagnostic bus of ``vin`` (or every vehicle's), ``start`` to ``end``."""

    index: int
    fault: FrameLoss
    vin: str | None
    start: float
    end: float
    left: dict[str, float] = field(default_factory=dict)
    """Per vehicle, frames still to lose before ``count`` is reached (expected value)."""
    overlapped: int = 0
    failed: int = 0
    open: bool = True


@dataclass
class _Watch:
    """A fault waiting for ``vin`` to reach the programming session (or transfer) of ``ecu``."""

    vin: str
    ecu: str
    transfer: bool
    event: simpy.Event


@dataclass
class _Stop:
    """Where a planned stretch of a flash ends."""

    at: float
    kind: str
    """``end``, ``fail`` or ``milestone``."""
    step: str = ""
    reason: str = ""
    armed: _Armed | None = None
    transfer: bool = False


@dataclass
class _Flash:
    """One flash of one ECU of a vehicle, on the bus model's timeline."""

    index: int
    ecu: str
    base_s: float
    """The bus model's flash time of the image."""
    fate_at: float | None
    """Where the world's draws fail this flash (as the plain model does)."""
    image_bytes: int
    erase_s: float
    steps: tuple[tuple[str, float], ...] = ()
    end: float = 0.0
    slowed: bool = False
    loss: dict[int, float | None] = field(default_factory=dict)
    """Per frame-loss window, where it fails this flash (decided once)."""

    def step_at(self, offset: float) -> str:
        """Return the step running ``offset`` seconds into the flash."""
        current = self.steps[0][0]
        for name, start in self.steps:
            if start > offset:
                break
            current = name
        return current

    def start_of(self, step: str) -> float:
        """Return when ``step`` starts."""
        for name, start in self.steps:
            if name == step:
                return start
        raise KeyError(step)

    def bounds(self) -> list[tuple[str, float, float]]:
        """Return each step with its start and end."""
        out = []
        for number, (name, start) in enumerate(self.steps):
            stop = self.steps[number + 1][1] if number + 1 < len(self.steps) else self.end
            out.append((name, start, max(start, stop)))
        return out


# ----------------------------------------------------------------- the faults
class FleetFaults:
    """Faults applied to a :class:`~scenarios.fleet.FleetWorld`: moments, effects, log.

    Make it after :meth:`FleetWorld.build` and before the campaign starts (it
    puts its own vehicle process into the world), and call :meth:`start` as the
    campaign starts and :meth:`finish` when the run ends. ``rng`` draws the
    faults' own chances (backoff jitter, frame loss); by default one seeded
    from the run's seed, so the world's draws are left as they are.
    """

    def __init__(
        self, world: FleetWorld, faults: Sequence[Fault], *, rng: random.Random | None = None
    ) -> None:
        release_ecus = list(world.options.release.image_kib)
        check_fleet_targets(faults, world.options.vehicles, release_ecus)
        self.world = world
        self.run = world.run
        self.env = world.env
        self.faults = list(faults)
        self.rng = rng if rng is not None else random.Random(f"fleet-faults/{world.run.seed}")
        self.backoff = Backoff(rng=self.rng)
        self.bus: BusModel = world.bus
        self.image_bytes = {ecu: kib * 1024 for ecu, kib in world.options.release.image_kib.items()}
        self.applied: list[Fault] = []
        """Faults whose moment came (whether or not they then took effect)."""
        self.refused: Counter[str] = Counter()
        """Vehicle calls refused because the backend was unreachable, per VIN."""
        self.lives: dict[str, _Life] = {}
        self._backend_down = 0
        self._fleet_cut = 0
        self._cut: Counter[str] = Counter()
        self._windows: list[_LinkWindow] = []
        self._armed: dict[str, list[_Armed]] = {}
        self._loss: list[_LossWindow] = []
        self._watch: dict[tuple[str, str], list[_Watch]] = {}
        self._waiting: dict[int, str] = {}
        self._bad: dict[str, str] = {}
        self._ids: dict[str, tuple[int, int]] | None = None
        self._functional_id = 0x7DF
        world.life = self._life

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start every fault's process: ``at_s`` counts from now."""
        for index, fault in enumerate(self.faults):
            if isinstance(fault, TamperedArtifact):
                self._tamper(fault)
                self.applied.append(fault)
            else:
                self.env.process(self._apply(index, fault))

    def finish(self) -> None:
        """Log what never happened: moments that never came, armed faults that never bit."""
        for index, moment in sorted(self._waiting.items()):
            self._event(self.faults[index], f"{NO_EFFECT}: {moment} never came")
        self._waiting.clear()
        for armed_list in self._armed.values():
            for armed in armed_list:
                target = armed.vin or "any vehicle"
                if armed.hits == 0:
                    self._event(
                        armed.fault,
                        f"{NO_EFFECT}: no {self._effect(armed.fault)} on {target} after it "
                        "was armed",
                    )
                else:
                    self._event(armed.fault, f"took effect {armed.hits} time(s)")
        for window in self._loss:
            if window.open:
                self._close_loss(window)
        for link in self._windows:
            what = "the backend" if link.backend else f"the link of {link.vin or 'every vehicle'}"
            self._event(
                link.fault,
                f"{what} still out when the run ended; {link.refused} call(s) refused meanwhile",
            )

    @property
    def refused_total(self) -> int:
        """Every vehicle call refused so far."""
        return sum(self.refused.values())

    def figures(self) -> dict[str, Any]:
        """Return the faults' figures for a run's report."""
        return {
            "faults applied": [f.kind for f in self.applied],
            "refused calls": self.refused_total,
            "vehicles refused": len(self.refused),
        }

    # ------------------------------------------------------------------ link
    def link_up(self, vin: str) -> bool:
        """Whether ``vin`` reaches the backend now."""
        return not (self._backend_down or self._fleet_cut or self._cut[vin])

    def refuse(self, vin: str) -> None:
        """Count a call of ``vin`` that could not reach the backend."""
        self.refused[vin] += 1
        for window in self._windows:
            if window.covers(vin):
                window.refused += 1

    def _link_window(
        self, fault: Fault, vin: str | None, backend: bool, duration_s: float
    ) -> ProcessGenerator:
        window = _LinkWindow(fault, vin, backend)
        self._windows.append(window)
        if backend:
            self._backend_down += 1
            self.world.backend_up = False
        elif vin is None:
            self._fleet_cut += 1
        else:
            self._cut[vin] += 1
        who = "backend stopped" if backend else f"{vin or 'every vehicle'}: link to the backend cut"
        stalled = [
            life
            for life in self.lives.values()
            if life.transferring and (backend or window.covers(life.vin))
        ]
        stall = f"; {len(stalled)} download(s) in progress stall" if stalled else ""
        self._event(fault, f"{who} for {duration_s:g} s{stall}")
        for life in stalled:
            life.interrupt(_LinkDown())
        yield self.env.timeout(duration_s)
        if backend:
            self._backend_down -= 1
            self.world.backend_up = self._backend_down == 0
        elif vin is None:
            self._fleet_cut -= 1
        else:
            self._cut[vin] -= 1
        self._windows.remove(window)
        what = "backend started again" if backend else f"{vin or 'every vehicle'}: link restored"
        self._event(fault, f"{what}; {window.refused} call(s) refused meanwhile")

    # -------------------------------------------------------------- moments
    def _apply(self, index: int, fault: Fault) -> ProcessGenerator:
        """Wait for the fault's moment, apply it, and undo it when its time is up."""
        assert not isinstance(fault, TamperedArtifact)
        if fault.at_s is not None:
            self._waiting[index] = f"at_s={fault.at_s:g}"
            yield self.env.timeout(fault.at_s)
        elif fault.during_flash_of is not None:
            vin = getattr(fault, "vin", None)
            assert vin is not None  # checked with the targets
            what = "the transfer" if fault.during_transfer else "the programming session"
            self._waiting[index] = f"{vin} reaching {what} of {fault.during_flash_of}"
            event = self.env.event()
            watch = _Watch(vin, fault.during_flash_of, fault.during_transfer, event)
            self._watch.setdefault((vin, fault.during_flash_of), []).append(watch)
            yield event
        self._waiting.pop(index, None)
        self.applied.append(fault)
        if isinstance(fault, BackendRestart):
            yield from self._link_window(fault, None, True, fault.down_s)
        elif isinstance(fault, NetworkPartition):
            yield from self._link_window(fault, fault.vin, False, fault.duration_s)
        elif isinstance(fault, GatewayRestart):
            yield from self._restart(fault)
        elif isinstance(fault, FrameLoss):
            yield from self._frame_loss(index, fault)
        elif isinstance(fault, PowerCut) and fault.offset is None:
            self._cut_power(fault)
        else:
            self._arm(index, fault)

    def reached(self, vin: str, ecu: str, transfer: bool) -> None:
        """Fire the faults waiting for ``vin`` to reach the programming session (or transfer)."""
        watches = self._watch.get((vin, ecu))
        if not watches:
            return
        for watch in [w for w in watches if w.transfer == transfer]:
            watches.remove(watch)
            watch.event.succeed()
        if not watches:
            del self._watch[(vin, ecu)]

    def watched(self, vin: str, ecu: str) -> tuple[bool, ...]:
        """Return the moments (transfer or not) faults wait for in ``vin``'s flash of ``ecu``."""
        watches = self._watch.get((vin, ecu))
        return tuple(sorted({w.transfer for w in watches})) if watches else ()

    # ------------------------------------------------------------ the kinds
    def _restart(self, fault: GatewayRestart) -> ProcessGenerator:
        if fault.vin is not None:
            life = self.lives.get(fault.vin)
            if life is None:
                self._event(
                    fault, f"{fault.vin}: asleep, nothing to interrupt (no effect on an update)"
                )
                return
            targets = [life]
            self._event(fault, f"{fault.vin}: gateway killed ({life.phase})")
        else:
            targets = [life for life in self.lives.values() if life.phase in UPDATE_PHASES]
            if not targets:
                self._event(fault, f"{NO_EFFECT}: no vehicle was working on an update")
                return
            phases = Counter(life.phase for life in targets)
            self._event(
                fault,
                f"{len(targets)} gateway(s) working on an update killed ("
                + ", ".join(f"{n} {phase}" for phase, n in sorted(phases.items()))
                + ")",
            )
        for life in targets:
            life.interrupt(_Restart(fault.down_s))
        yield self.env.timeout(fault.down_s)
        who = fault.vin or f"{len(targets)} vehicle(s)"
        self._event(fault, f"{who}: gateway started again")

    def _cut_power(self, fault: PowerCut) -> None:
        flashing = [
            life
            for life in self.lives.values()
            if life.flash is not None
            and life.flash.ecu == fault.ecu
            and (fault.vin is None or fault.vin == life.vin)
        ]
        if not flashing:
            who = f"{fault.vin} was not" if fault.vin else "no vehicle was"
            self._event(fault, f"{NO_EFFECT}: {who} flashing {fault.ecu} at that moment")
            return
        for life in flashing:
            life.interrupt(_PowerLost())
        who = fault.vin or f"{len(flashing)} vehicle(s)"
        self._event(fault, f"{who} {fault.ecu}: power off while flashing{_unmodeled(fault)}")

    def _arm(self, index: int, fault: Fault) -> None:
        assert isinstance(fault, PowerCut | BootFailure | ForcedNrc | SlowErase)
        who = f"{fault.vin} {fault.ecu}" if fault.vin else f"{fault.ecu} of every vehicle"
        if isinstance(fault, ForcedNrc):
            steps = NRC_STEPS.get(fault.service)
            if steps is None:
                self._event(
                    fault,
                    f"{who}: no effect, a flash does not use service 0x{fault.service:02X}",
                )
                return
            if fault.service in _FUNCTIONAL_SERVICES and fault.code in FUNCTIONALLY_SUPPRESSED:
                self._event(
                    fault,
                    f"{who}: no effect, service 0x{fault.service:02X} is sent functionally "
                    f"and an ECU does not send NRC 0x{fault.code:02X} to those",
                )
                return
            budget = fault.count
            text = (
                f"service 0x{fault.service:02X} answered with NRC 0x{fault.code:02X} "
                f"({nrc_name(fault.code)}): the next "
                + (f"{budget} flash(es)" if budget else "flashes")
                + f" fail at {steps[0]}"
            )
        elif isinstance(fault, BootFailure):
            budget = fault.times
            text = "the next new image fails to boot, " + (
                "every time" if budget is None else f"{budget} time(s)"
            )
        elif isinstance(fault, SlowErase):
            budget = 1
            text = f"the next erase takes {fault.duration_s:g} s"
        else:
            budget = 1
            text = f"power cut armed at byte {fault.offset} of the next transfer"
            text += _unmodeled(fault)
        armed = _Armed(index, fault, fault.vin, budget)
        self._armed.setdefault(fault.ecu, []).append(armed)
        self._event(fault, f"{who}: {text}")
        if not isinstance(fault, BootFailure):
            self._replan(fault.vin, fault.ecu)

    def _replan(self, vin: str | None, ecu: str | None) -> None:
        """Have the flashes a new fault concerns plan their rest again."""
        for life in self.lives.values():
            flash = life.flash
            if (
                flash is not None
                and (ecu is None or flash.ecu == ecu)
                and (vin is None or life.vin == vin)
            ):
                life.interrupt(_Replan())

    def _frame_loss(self, index: int, fault: FrameLoss) -> ProcessGenerator:
        now = self.env.now
        end = now + fault.duration_s if fault.duration_s is not None else math.inf
        window = _LossWindow(index, fault, fault.vin, now, end)
        self._loss.append(window)
        who = fault.vin or "every vehicle"
        self._event(fault, f"{who}: losing frames ({fault.describe()})")
        self._replan(fault.vin, None)
        if fault.duration_s is None:
            return  # until its count is spent on each bus; summed up when the run ends
        yield self.env.timeout(fault.duration_s)
        self._close_loss(window)

    def _close_loss(self, window: _LossWindow) -> None:
        window.open = False
        who = window.vin or "every vehicle"
        self._event(
            window.fault,
            f"{who}: frame loss over; {window.overlapped} flash(es) overlapped it, "
            f"{window.failed} failed",
        )

    def _tamper(self, fault: TamperedArtifact) -> None:
        """Flip one byte of the stored image, then judge every image by its stored bytes."""
        backend = self.world.backend
        release = backend.get_release(self.world.release_id)
        image = next(i for i in release.images if i.ecu == fault.ecu)
        path = backend.artifacts.path(image.sha256)
        data = bytearray(path.read_bytes())
        where = len(data) // 2 if fault.offset is None else fault.offset
        if where >= len(data):
            raise ScenarioError(
                f"tampered-artifact fault: offset {where} is beyond the {fault.ecu} image "
                f"({len(data)} bytes)"
            )
        data[where] ^= 0xFF
        path.write_bytes(bytes(data))
        for entry in release.images:
            digest = hashlib.sha256()
            for _offset, chunk, _total in backend.download(
                entry.sha256, offset=0, chunk_size=0, vin=None
            ):
                digest.update(chunk)
            stored = digest.hexdigest()
            if stored != entry.sha256:
                self._bad[entry.ecu] = (
                    f"artifact for {entry.ecu} has SHA-256 {stored}, the signed release names "
                    f"{entry.sha256}: refused"
                )
        self._event(
            fault,
            f"{fault.ecu} image {image.sha256[:12]}: byte {where} flipped; its stored bytes "
            "no longer match the signed release",
        )

    # ------------------------------------------------- what a vehicle meets
    def download_goal(self, order: Sequence[str], total_bytes: int) -> tuple[int, str]:
        """Return the bytes a download gets through before it fails, and why (``""``: never).

        The images come in release ``order``; each is checked once it is complete.
        """
        if not self._bad:
            return total_bytes, ""
        done = 0
        for ecu in order:
            done += self.image_bytes[ecu]
            if ecu in self._bad:
                return done, self._bad[ecu]
        return total_bytes, ""

    def take_boot_failure(self, vin: str, ecu: str) -> bool:
        """Whether a boot-failure fault fails this trial boot (and count it)."""
        for armed in self._armed.get(ecu, ()):
            if isinstance(armed.fault, BootFailure) and armed.left(vin):
                armed.take(vin)
                return True
        return False

    def plan(self, life: _Life, flash: _Flash, pos: float) -> _Stop:
        """Return where a flash ``pos`` seconds in stops next: its end, a failure or a moment."""
        vin = life.vin
        ecu = flash.ecu
        armed_list = self._armed.get(ecu, ())
        if not flash.slowed:
            # A slow erase armed before this flash's erase makes it this one's.
            for armed in armed_list:
                if (
                    isinstance(armed.fault, SlowErase)
                    and armed.left(vin)
                    and (not flash.steps or pos <= flash.start_of(FlashStep.ERASE))
                ):
                    armed.take(vin)
                    flash.slowed = True
                    flash.erase_s = armed.fault.duration_s
                    flash.steps = ()
                    break
        if not flash.steps:
            flash.steps, flash.end = self._timeline(flash)
        best = _Stop(flash.end, "end")
        if flash.fate_at is not None and pos <= flash.fate_at < best.at:
            best = _Stop(
                flash.fate_at, "fail", "flash", "the transfer failed and the retries ran out"
            )
        for transfer in self.watched(vin, ecu):
            at = flash.start_of(FlashStep.TRANSFER if transfer else FlashStep.PROGRAMMING_SESSION)
            if pos <= at < best.at or (at == best.at and best.kind == "end"):
                best = _Stop(at, "milestone", transfer=transfer)
        for armed in armed_list:
            if not armed.left(vin):
                continue
            fault = armed.fault
            if isinstance(fault, ForcedNrc):
                for step in NRC_STEPS[fault.service]:
                    at = flash.start_of(step)
                    if at >= pos:
                        if at < best.at:
                            best = _Stop(at, "fail", str(step), _nrc_reason(step, fault), armed)
                        break
            elif (
                isinstance(fault, PowerCut)
                and fault.offset is not None
                and fault.offset < flash.image_bytes
            ):
                at = flash.start_of(FlashStep.TRANSFER) + self.bus.transfer_s(fault.offset)
                if pos <= at < best.at:
                    best = _Stop(
                        at,
                        "fail",
                        str(FlashStep.TRANSFER),
                        f"power lost at byte {fault.offset} of the transfer: the ECU "
                        "stopped answering (power-cut fault)",
                        armed,
                    )
        t0 = self.env.now - pos
        for window in self._loss:
            if window.vin is not None and window.vin != vin:
                continue
            if window.index not in flash.loss:
                if not window.open or window.start > self.env.now:
                    continue
                flash.loss[window.index] = self._decide_loss(window, vin, flash, pos, t0)
            at_loss = flash.loss[window.index]
            if at_loss is not None and pos <= at_loss < best.at:
                lost_in = flash.step_at(at_loss)
                reason = (
                    "a flow control frame was lost: the block was not sent (frame-loss fault)"
                    if lost_in == FlashStep.TRANSFER
                    else "no response: a CAN frame was lost (frame-loss fault)"
                )
                best = _Stop(at_loss, "fail", lost_in, reason)
        return best

    def _timeline(self, flash: _Flash) -> tuple[tuple[tuple[str, float], ...], float]:
        bus = self.bus
        share = bus.fixed_s / _FIXED_STEPS
        steps: list[tuple[str, float]] = []
        at = 0.0
        for step in _BEFORE_ERASE:
            steps.append((str(step), at))
            at += share
        steps.append((str(FlashStep.ERASE), at))
        at += flash.erase_s
        steps.append((str(FlashStep.REQUEST_DOWNLOAD), at))
        at += share
        steps.append((str(FlashStep.TRANSFER), at))
        at += bus.transfer_s(flash.image_bytes)
        for step in _AFTER_TRANSFER:
            steps.append((str(step), at))
            at += share
        steps.append((str(FlashStep.VERIFY), at))
        # The end is the plain model's flash time exactly, plus what a slow erase adds.
        end = flash.base_s + (flash.erase_s - bus.erase_s) if flash.slowed else flash.base_s
        return tuple(steps), end

    # ------------------------------------------------------------ frame loss
    def _frames(
        self, window: _LossWindow, flash: _Flash
    ) -> list[tuple[float, float, float, float]]:
        """Return per step (start, end, frames that matter, all frames) the window loses from."""
        fault = window.fault
        ids = self._ecu_ids().get(flash.ecu)
        wanted = set(fault.can_ids)

        def matches(direction: str, can_id: int | None) -> bool:
            if fault.direction not in ("both", direction):
                return False
            return not wanted or (can_id is not None and can_id in wanted)

        request = matches("to_ecus", ids[0] if ids else None)
        response = matches("to_gateway", ids[1] if ids else None)
        functional = matches("to_ecus", self._functional_id)
        out = []
        for name, start, stop in flash.bounds():
            if name == FlashStep.TRANSFER:
                tester, flow_controls, replies = _transfer_frames(self.bus, flash.image_bytes)
                counts = (0, tester, flow_controls, replies, 0)
            else:
                counts = _STEP_FRAMES[FlashStep(name)]
            tester_fatal, tester_other, ecu_fatal, ecu_other, func = counts
            fatal = tester_fatal * request + ecu_fatal * response
            every = fatal + tester_other * request + ecu_other * response + func * functional
            out.append((start, stop, float(fatal), float(every)))
        return out

    def _decide_loss(
        self, window: _LossWindow, vin: str, flash: _Flash, pos: float, t0: float
    ) -> float | None:
        """Decide whether (and where) ``window`` fails ``flash`` from ``pos`` on; count it."""
        fault = window.fault
        first = max(pos, window.start - t0)
        last = min(flash.end, window.end - t0)
        if last <= first:
            return None
        spans = self._frames(window, flash)
        p = fault.probability
        if fault.count is not None:
            # The loss ends once ``count`` frames were lost: cut the span there.
            left = window.left.get(vin, float(fault.count))
            cut = _when(spans, first, left / p, every=True)
            last = min(last, cut)
            window.left[vin] = max(0.0, left - p * _count(spans, first, last, every=True))
            if last <= first:
                return None
        fatal = _count(spans, first, last, every=False)
        window.overlapped += 1
        chance = 1.0 - (1.0 - p) ** fatal if p < 1.0 else (1.0 if fatal > 0 else 0.0)
        if chance <= 0.0 or self.rng.random() >= chance:
            return None
        # The first frame lost that matters: a geometric draw, cut at the frames there are.
        if p >= 1.0:
            nth = 1.0
        else:
            nth = math.ceil(math.log(1.0 - self.rng.random() * chance) / math.log(1.0 - p))
        window.failed += 1
        return min(last, _when(spans, first, max(0.0, min(nth, fatal) - 0.5), every=False))

    def _ecu_ids(self) -> dict[str, tuple[int, int]]:
        """Return the ECUs' request and response ids (the demo vehicle's wire contract)."""
        if self._ids is None:
            spec = demo_vehicle()
            self._functional_id = spec.functional_request_id
            self._ids = {e.name: (e.request_id, e.response_id) for e in spec.ecus}
        return self._ids

    # --------------------------------------------------------------- helpers
    def _life(self, car: Car) -> ProcessGenerator:
        return _Life(self, car).run()

    def _event(self, fault: Fault, detail: str) -> None:
        self.run.event("fault", fault.kind, detail)

    @staticmethod
    def _effect(fault: Fault) -> str:
        if isinstance(fault, BootFailure):
            return f"trial boot of {fault.ecu}'s new image"
        if isinstance(fault, PowerCut):
            return f"transfer of {fault.ecu} reaching byte {fault.offset}"
        if isinstance(fault, SlowErase):
            return f"erase of {fault.ecu}"
        assert isinstance(fault, ForcedNrc)
        return f"flash of {fault.ecu} sending service 0x{fault.service:02X}"


def _unmodeled(fault: PowerCut) -> str:
    """Say, in a power cut's event, that a fleet does not model its ``restore_after_s``."""
    if fault.restore_after_s is None:
        return ""
    return (
        f" (restore_after_s={fault.restore_after_s:g} is not modeled: the ECU runs its "
        "previous image when the gateway next reads it)"
    )


def _nrc_reason(step: FlashStep, fault: ForcedNrc) -> str:
    """Return the flasher's reason for a refused request of ``step``."""
    text = f"negative response 0x{fault.code:02X} ({nrc_name(fault.code)})"
    if step == FlashStep.TRANSFER:
        return f"block 0x01: {text}"
    if step == FlashStep.VERIFY:
        return f"reading the version after reset: {text}"
    return text


def _transfer_frames(bus: BusModel, image_bytes: int) -> tuple[int, int, int]:
    """Return the transfer's frames: (tester's first and consecutive, flow controls, replies)."""
    tester = flow_controls = replies = 0
    blocks, last = divmod(image_bytes, bus.transfer_block_bytes)
    per_frame = bus.frame_bytes - 1
    for payload, times in ((bus.transfer_block_bytes + 2, blocks), (last + 2, 1 if last else 0)):
        if not times:
            continue
        replies += times
        if payload <= per_frame:
            tester += times
            continue
        consecutive = math.ceil((payload - (bus.frame_bytes - 2)) / per_frame)
        controls = 1 + (consecutive - 1) // bus.block_size if bus.block_size else 1
        tester += times * (1 + consecutive)
        flow_controls += times * controls
    return tester, flow_controls, replies


def _count(
    spans: list[tuple[float, float, float, float]], first: float, last: float, *, every: bool
) -> float:
    """Frames (that matter, or ``every`` frame) sent between ``first`` and ``last``."""
    total = 0.0
    for start, stop, fatal, all_frames in spans:
        frames = all_frames if every else fatal
        if stop <= start:
            if first <= start < last:
                total += frames
            continue
        overlap = min(stop, last) - max(start, first)
        if overlap > 0:
            total += frames * overlap / (stop - start)
    return total


def _when(
    spans: list[tuple[float, float, float, float]], first: float, frames: float, *, every: bool
) -> float:
    """When, from ``first`` on, ``frames`` frames (that matter, or every one) have been sent."""
    left = frames
    for start, stop, fatal, all_frames in spans:
        count = all_frames if every else fatal
        if stop <= first or count <= 0:
            continue
        begin = max(start, first)
        if stop <= start:
            if left <= count:
                return begin
            left -= count
            continue
        here = count * (stop - begin) / (stop - start)
        if left <= here:
            return begin + (stop - start) * left / count
        left -= here
    return math.inf


# ------------------------------------------------------------------- vehicle
class _Life:
    """One vehicle's process in a world with faults: the gateway as it reacts to them.

    It follows :meth:`FleetWorld._vehicle` draw for draw and timeout for
    timeout while no fault touches it, so a fault without effect leaves the
    run as it was; every wait can be interrupted by a fault.
    """

    def __init__(self, faults: FleetFaults, car: Car) -> None:
        self.f = faults
        self.world = faults.world
        self.env = faults.env
        self.car = car
        self.vin = car.vin
        self.group = self.world.groups[car.group]
        self.process: simpy.Process | None = None
        self.phase = "idle"
        self.transferring = False
        self.flash: _Flash | None = None
        self.restarts = 0
        self.down_until = 0.0
        self.killed_at = 0.0
        self.stopped_at = 0.0
        self.reporter = 0
        """The reporter's generation: a restart or the outcome ends a queued progress report."""
        self.window_end = 0.0
        self.deployment = ""
        self.tag = ""
        self.number = 0

    def interrupt(self, cause: object) -> None:
        """Interrupt the process with ``cause`` (if it runs and is not the one running now)."""
        process = self.process
        if process is not None and process.is_alive and process is not self.env.active_process:
            process.interrupt(cause)

    def run(self) -> ProcessGenerator:
        """Run the vehicle as :meth:`FleetWorld._vehicle` does, and as faults make it."""
        self.process = self.env.active_process
        self.f.lives[self.vin] = self
        yield from self._life()
        self.car.awake = False
        self.f.lives.pop(self.vin, None)
        self.process = None

    def _life(self) -> ProcessGenerator:
        world = self.world
        env = self.env
        group = self.group
        # The wake-up is taken at the next online window.
        yield from self._sleep(world.draw_offline_s())
        self.window_end = env.now + world.draw_online_s()
        while True:
            offers = yield from self._check_in()
            if not offers:
                return
            action = offers[0].action
            fate = world.fate_of(self.car, action.attempts)
            self.deployment = action.deployment_id
            self.tag = f"{self.deployment}/{action.attempts}"
            self.number = 0
            self.phase = "download"
            if self._progress(ActionState.DOWNLOADING) is None:
                return
            refused = yield from self._download()
            if refused is None:
                return
            failed = fate.random() < group.download_p
            after: ActionState | None
            if refused or failed:
                after = yield from self._final(
                    ActionState.FAILED,
                    step="download",
                    reason=refused or "the download did not verify",
                )
            else:
                # Installation waits until the vehicle is parked: the end of this trip.
                self.phase = "wait"
                if not (yield from self._wait_parked()):
                    return
                after = yield from self._install(fate)
            if after is not ActionState.PENDING:
                return
            # A retry: the vehicle checks in again at its next online window.
            self.phase = "idle"
            yield from self._sleep(world.draw_offline_s())
            self.window_end = env.now + world.draw_online_s()

    # ------------------------------------------------------------- waiting
    def _sleep(
        self, delay: float, wake: tuple[type, ...] = ()
    ) -> Generator[simpy.Event, Any, object | None]:
        """Sleep ``delay`` s; return ``None``, or an interrupt's cause that is in ``wake``.

        The moment of an interrupt is kept in ``stopped_at``. A gateway restart
        is ridden out here (down, then registered again); with ``_Restart`` in
        ``wake`` it then ends the sleep, otherwise the sleep goes on to its end.
        """
        env = self.env
        end = env.now + delay
        timeout = env.timeout(delay)
        while True:
            try:
                yield timeout
                return None
            except simpy.Interrupt as interrupt:
                cause = interrupt.cause
                self.stopped_at = env.now
                if isinstance(cause, _Restart):
                    yield from self._gateway_down(cause.down_s)
                    if _Restart in wake:
                        return cause
                elif isinstance(cause, wake):
                    return cause
                if env.now >= end:
                    return None
                timeout = env.timeout(end - env.now)

    def _gateway_down(self, down_s: float) -> ProcessGenerator:
        """Stay down ``down_s``, then start as the gateway does: read the ECUs, register."""
        env = self.env
        f = self.f
        self.restarts += 1
        self.killed_at = env.now
        self.reporter += 1  # the reporter thread died with the gateway
        self.transferring = False
        self.flash = None  # nothing is flashed while the gateway is down
        self.down_until = max(self.down_until, env.now + down_s)
        delays = None
        started = 0.0
        while True:
            if env.now < self.down_until:
                delay = self.down_until - env.now
                delays = None
            elif f.link_up(self.vin):
                self.world.count_call("register")
                group = self.group
                self.world.backend.register(
                    vin=self.vin, model=group.model, tags=group.tags, ecus=self.car.ecus
                )
                return
            else:
                # Registration is retried as every call is; a give-up starts it over.
                if delays is None:
                    delays = iter(f.backoff.delays())
                    started = env.now
                f.refuse(self.vin)
                if env.now - started > f.backoff.give_up_after_s:
                    delay = RETRY_AFTER_GIVE_UP_S
                    delays = None
                else:
                    delay = next(delays)
            try:
                yield env.timeout(delay)
            except simpy.Interrupt as interrupt:
                cause = interrupt.cause
                if isinstance(cause, _Restart):
                    self.killed_at = env.now
                    self.down_until = max(self.down_until, env.now + cause.down_s)

    def _reach(
        self, after_give_up_s: float = RETRY_AFTER_GIVE_UP_S
    ) -> Generator[simpy.Event, Any, bool]:
        """Back off until the backend is reachable; return whether the backoff gave up once."""
        f = self.f
        env = self.env
        if f.link_up(self.vin):
            return False
        gave_up = False
        delays = iter(f.backoff.delays())
        started = env.now
        while not f.link_up(self.vin):
            f.refuse(self.vin)
            if env.now - started > f.backoff.give_up_after_s:
                # BackendUnavailable: the gateway starts the call over (after a pause).
                gave_up = True
                delay = after_give_up_s
                delays = iter(f.backoff.delays())
                started = env.now + delay
            else:
                delay = next(delays)
            yield from self._sleep(delay)
        return gave_up

    # -------------------------------------------------------------- calls
    def _check_in(self) -> Generator[simpy.Event, Any, list[Offer]]:
        yield from self._reach()
        self.world.count_call("check-in")
        offers: list[Offer] = self.world.backend.check_in(vin=self.vin, state="", ecus=())
        return offers

    def _next(self) -> int:
        self.number += 1
        return self.number

    def _progress(self, state: ActionState) -> ActionState | None:
        """Report progress: at once if the backend is reachable, else on the reporter's thread."""
        number = self._next()
        if self.f.link_up(self.vin):
            return self.world.report(self.car, self.deployment, self.tag, number, state)
        self.env.process(self._reporter(state, number, self.reporter))
        return state

    def _reporter(self, state: ActionState, number: int, generation: int) -> ProcessGenerator:
        """Send a queued progress report: backoff, dropped when superseded or given up."""
        f = self.f
        env = self.env
        delays = iter(f.backoff.delays())
        started = env.now
        while generation == self.reporter:
            if f.link_up(self.vin):
                self.world.report(self.car, self.deployment, self.tag, number, state)
                return
            f.refuse(self.vin)
            if env.now - started > f.backoff.give_up_after_s:
                return
            yield env.timeout(next(delays))

    def _final(
        self,
        state: ActionState,
        *,
        step: str = "",
        reason: str = "",
        inventory: tuple[EcuInfo, ...] = (),
    ) -> Generator[simpy.Event, Any, ActionState | None]:
        """Send the outcome until the backend takes it, always under the same report id."""
        self.phase = "report"
        self.reporter += 1  # a progress report still queued is superseded
        number = self._next()
        yield from self._reach(after_give_up_s=0.0)
        after = self.world.report(
            self.car,
            self.deployment,
            self.tag,
            number,
            state,
            step=step,
            reason=reason,
            inventory=inventory,
        )
        if after is None and state is ActionState.SUCCEEDED:
            # Refused (canceled while the vehicle installed out of reach): the gateway's
            # next check-in carries what its ECUs run now.
            self.world.count_call("check-in")
            self.world.backend.check_in(vin=self.vin, state="", ecus=inventory)
        return after

    def _poll_again(self) -> Generator[simpy.Event, Any, bool]:
        """After a restart (or a give-up) mid-download: check in, be offered it, report again."""
        offers = yield from self._check_in()
        if not any(o.action.deployment_id == self.deployment for o in offers):
            return False
        return self._progress(ActionState.DOWNLOADING) is not None

    # ------------------------------------------------------------ download
    def _download(self) -> Generator[simpy.Event, Any, str | None]:
        """Download within online windows; return why it failed verification, ``None`` to stop."""
        world = self.world
        env = self.env
        f = self.f
        goal, refused = f.download_goal(self.group.order, self.group.image_bytes)
        remaining = float(goal)
        bandwidth = world.draw_bandwidth_bytes_per_s()
        dropout = world.dropout_rate
        seen = self.restarts
        wake = (_LinkDown, _Restart)
        while remaining > 0:
            if not f.link_up(self.vin):
                # The stream is refused: retried with backoff, and after a give-up the
                # gateway checks in again and is offered the deployment again.
                gave_up = yield from self._reach()
                if gave_up and not (yield from self._poll_again()):
                    return None
            if self.restarts != seen:
                seen = self.restarts
                if not (yield from self._poll_again()):
                    return None
                continue
            available = self.window_end - env.now
            if dropout > 0:
                available = min(available, world.draw_dropout_s())
            needed = remaining / bandwidth
            if needed <= available:
                started = env.now
                self.transferring = True
                cause = yield from self._sleep(needed, wake)
                self.transferring = False
                if cause is None:
                    remaining = 0.0
                else:
                    remaining -= (self.stopped_at - started) * bandwidth
                continue
            if available > 0:
                started = env.now
                self.transferring = True
                cause = yield from self._sleep(available, wake)
                self.transferring = False
                if cause is None:
                    remaining -= available * bandwidth
                else:
                    remaining -= (self.stopped_at - started) * bandwidth
                    continue
            # Offline until the next window (a drop-out is short; a trip end is not).
            if env.now >= self.window_end:
                yield from self._sleep(world.draw_offline_s())
                self.window_end = env.now + world.draw_online_s()
            else:
                yield from self._sleep(min(60.0, self.window_end - env.now))
            bandwidth = world.draw_bandwidth_bytes_per_s()
        if self.restarts != seen and not (yield from self._poll_again()):
            return None
        return refused

    def _wait_parked(self) -> Generator[simpy.Event, Any, bool]:
        """Wait until the trip ends; a restart meanwhile checks in again first."""
        env = self.env
        end = self.window_end
        if end <= env.now:
            return True
        cause = yield from self._sleep(end - env.now, (_Restart,))
        while cause is not None:
            if not (yield from self._poll_again()):
                return False
            if env.now >= end:
                break
            cause = yield from self._sleep(end - env.now, (_Restart,))
        return True

    # ------------------------------------------------------------- install
    def _install(self, fate: random.Random) -> Generator[simpy.Event, Any, ActionState | None]:
        """Flash the release's ECUs in order; roll back and report as the plain model does."""
        group = self.group
        self.phase = "install"
        if self._progress(ActionState.INSTALLING) is None:
            return None
        flashed = 0
        for index, duration in enumerate(group.flash_s):
            failure = yield from self._flash(index, duration, fate)
            if failure is None:
                flashed += 1
                continue
            step, reason = failure
            ecu = group.order[index]
            self.phase = "rollback"
            if flashed:
                yield from self._roll_back(sum(group.restore_s[:flashed]))
            state = ActionState.ROLLED_BACK if flashed else ActionState.FAILED
            self.car.ecus = group.old
            return (
                yield from self._final(
                    state, step=f"{ecu}: {step}", reason=reason, inventory=group.old
                )
            )
        self.car.ecus = group.new
        return (yield from self._final(ActionState.SUCCEEDED, inventory=group.new))

    def _roll_back(self, work_s: float) -> ProcessGenerator:
        """Restore the ECUs flashed; a restart meanwhile carries on after it."""
        while work_s > 0:
            started = self.env.now
            cause = yield from self._sleep(work_s, (_Restart,))
            if cause is None:
                return
            work_s -= self.stopped_at - started

    def _flash(
        self, index: int, duration: float, fate: random.Random
    ) -> Generator[simpy.Event, Any, tuple[str, str] | None]:
        """Flash one ECU; return ``(step, reason)`` if it failed, ``None`` if it runs the new."""
        env = self.env
        f = self.f
        group = self.group
        ecu = group.order[index]
        drawn = fate.random()
        fate_at = duration * fate.random() if drawn < group.flash_p[index] else None

        def fresh() -> _Flash:
            return _Flash(index, ecu, duration, fate_at, f.image_bytes[ecu], f.bus.erase_s)

        flash = fresh()
        self.flash = flash
        pos = 0.0
        wake = (_Replan, _PowerLost, _Restart)
        while True:
            stop = f.plan(self, flash, pos)
            started = env.now
            cause = yield from self._sleep(stop.at - pos, wake)
            if cause is None:
                pos = stop.at
                if stop.kind == "milestone":
                    f.reached(self.vin, ecu, stop.transfer)
                    continue
                if stop.kind == "fail":
                    self.flash = None
                    if stop.armed is not None:
                        stop.armed.take(self.vin)
                    return stop.step, stop.reason
                break
            pos += self.stopped_at - started
            if isinstance(cause, _PowerLost):
                self.flash = None
                step = flash.step_at(pos)
                return step, f"power lost during the {step}: the ECU stopped answering"
            if isinstance(cause, _Restart):
                # Back from a restart (registered): the orchestrator resumes the installation.
                self.flash = None
                if pos >= flash.start_of(FlashStep.VERIFY) and self._boot(index, fate) is None:
                    # The ECU had reset into its new image, which booted: it is kept.
                    return None
                if env.now < self.killed_at + S3_S:
                    # The ECU leaves its programming session (and the bus is quiet) until S3.
                    yield from self._sleep(self.killed_at + S3_S - env.now)
                self._progress(ActionState.INSTALLING)
                flash = fresh()
                self.flash = flash
                pos = 0.0
            # A replan: the loop plans the rest of the flash again.
        self.flash = None
        return self._boot(index, fate)

    def _boot(self, index: int, fate: random.Random) -> tuple[str, str] | None:
        """Judge the new image's trial boot: the world's draw, then any boot-failure fault."""
        group = self.group
        drawn = fate.random() < group.boot_p[index]
        armed = self.f.take_boot_failure(self.vin, group.order[index])
        if armed:
            return (
                "boot",
                "the new image failed its trial boot; the ECU went back to its previous "
                "image (boot-failure fault)",
            )
        if drawn:
            return "boot", "the new image did not boot"
        return None


__all__ = [
    "NRC_STEPS",
    "S3_S",
    "UPDATE_PHASES",
    "FleetFaults",
    "check_fleet_targets",
    "fault_target_errors",
]
