"""Faults as data, and their application to a wire-fidelity world.

A fault is a pydantic model with a ``kind``; a scenario's parameters hold a
list of them, so a scenario file writes one ``[[params.faults]]`` table per
fault::

    [[params.faults]]
    kind = "power-cut"
    ecu = "bcm"
    offset = 6000           # bytes into its next transfer
    restore_after_s = 0.3

    [[params.faults]]
    kind = "network-partition"
    during_flash_of = "bms" # or at_s = 2.0
    duration_s = 3.0

The models say what happens and when, in terms any fidelity understands (an
ECU, a vehicle, seconds, a byte offset, "while ECU X is being flashed"); they
hold nothing of sockets or buses, so the modeled fleet uses the same classes.
:func:`inject` applies one to a :class:`~scenarios.wire.WireWorld` from a
SimPy process, at its moment, and logs what it did as a ``fault`` event.

Timed faults start ``at_s`` seconds after :func:`inject` was started (the
scenario starts its faults as it starts its campaign), or once the ECU named
by ``during_flash_of`` is in its programming session, that is while the
gateway flashes it (with ``during_transfer``: once it receives its image).
Without either they apply at once. A fault without a ``vin`` targets the
scenario's vehicle (the only one, or the one it names).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from ota_formats.uds import Session
from scenarios.core import ProcessGenerator, Run, ScenarioError, ScenarioTimeout, ThreadBridge
from scenarios.registry import describe_errors

if TYPE_CHECKING:
    from backend_stub.api import update_pb2
    from scenarios.wire import WireWorld

NO_EFFECT = "not triggered"


class FaultModel(BaseModel):
    """Base of every fault: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def describe(self) -> str:
        """Return the fault in a few words, for logs."""
        values = self.model_dump(exclude_none=True, exclude={"kind"})
        return ", ".join(f"{key}={value}" for key, value in values.items())


class TimedFault(FaultModel):
    """A fault applied at a moment: ``at_s``, ``during_flash_of``, or at once."""

    at_s: float | None = Field(default=None, ge=0)
    """Seconds after the scenario started its faults."""
    during_flash_of: str | None = None
    """An ECU: apply once it is in its programming session (the gateway flashes it)."""
    during_transfer: bool = False
    """With ``during_flash_of``: wait until the ECU receives its image (TransferData)."""

    @model_validator(mode="after")
    def _one_moment(self) -> TimedFault:
        if self.at_s is not None and self.during_flash_of is not None:
            raise ValueError("give at_s or during_flash_of, not both")
        if self.during_transfer and self.during_flash_of is None:
            raise ValueError("during_transfer needs during_flash_of (the ECU)")
        return self


class EcuFault(TimedFault):
    """A fault of one ECU of a vehicle."""

    vin: str | None = None
    ecu: str


class PowerCut(EcuFault):
    """The ECU loses power: at a moment, or when its next transfer reaches ``offset`` bytes."""

    kind: Literal["power-cut"] = "power-cut"
    offset: int | None = Field(default=None, ge=0)
    """Bytes into the ECU's next transfer (TransferData) at which the power goes."""
    restore_after_s: float | None = Field(default=None, ge=0)
    """Power comes back after this long (never, if not given)."""

    @model_validator(mode="after")
    def _offset_or_moment(self) -> PowerCut:
        timed = self.at_s is not None or self.during_flash_of is not None
        if self.offset is not None and timed:
            raise ValueError("give offset or a moment (at_s, during_flash_of), not both")
        if self.offset is None and not timed:
            raise ValueError("give offset, at_s or during_flash_of")
        return self


class BootFailure(EcuFault):
    """The ECU's next new image fails its trial boot (``times`` times; every time if not given)."""

    kind: Literal["boot-failure"] = "boot-failure"
    times: int | None = Field(default=None, ge=1)


class ForcedNrc(EcuFault):
    """The ECU answers the next ``count`` requests of ``service`` with the NRC ``code``."""

    kind: Literal["nrc"] = "nrc"
    service: int = Field(ge=0, le=0xFF)
    code: int = Field(ge=0x10, le=0xFF)
    count: int | None = Field(default=1, ge=1)
    """How many requests (1 if not given; ``None``, from Python, for every one)."""

    @model_validator(mode="after")
    def _not_pending(self) -> ForcedNrc:
        if self.code == 0x78:
            raise ValueError("NRC 0x78 (response pending) cannot be forced; use slow-erase")
        return self


class SlowErase(EcuFault):
    """The ECU's next erase takes ``duration_s``, answering NRC 0x78 meanwhile."""

    kind: Literal["slow-erase"] = "slow-erase"
    duration_s: float = Field(ge=0)


class FrameLoss(TimedFault):
    """CAN frames between the gateway and the ECUs of a vehicle are lost.

    Each matching frame is lost with ``probability``, until ``count`` frames
    were lost or ``duration_s`` has passed (at least one of them is needed,
    else the bus never recovers).
    """

    kind: Literal["frame-loss"] = "frame-loss"
    vin: str | None = None
    probability: float = Field(default=1.0, gt=0, le=1)
    count: int | None = Field(default=None, ge=1)
    duration_s: float | None = Field(default=None, gt=0)
    can_ids: list[int] = Field(default_factory=list)
    """Only frames with these arbitration ids (any frame, if empty)."""
    direction: Literal["both", "to_ecus", "to_gateway"] = "both"

    @model_validator(mode="after")
    def _bounded(self) -> FrameLoss:
        if self.count is None and self.duration_s is None:
            raise ValueError("give count or duration_s (or both): the loss must end")
        return self


class BackendRestart(TimedFault):
    """The backend stops at once (calls in flight fail) and starts again ``down_s`` later."""

    kind: Literal["backend-restart"] = "backend-restart"
    vin: str | None = None
    """The vehicle whose ECU ``during_flash_of`` names."""
    down_s: float = Field(default=1.0, ge=0)


class GatewayRestart(TimedFault):
    """The vehicle's gateway dies mid-step, as in a crash, and starts again ``down_s`` later."""

    kind: Literal["gateway-restart"] = "gateway-restart"
    vin: str | None = None
    down_s: float = Field(default=0.5, ge=0)


class NetworkPartition(TimedFault):
    """The network between a vehicle's gateway and the backend is cut for ``duration_s``."""

    kind: Literal["network-partition"] = "network-partition"
    vin: str | None = None
    duration_s: float = Field(gt=0)


class TamperedArtifact(FaultModel):
    """The stored image of ``ecu`` in the release is altered after it was signed.

    The signed release still names the original SHA-256, so a gateway must
    refuse the image it downloads.
    """

    kind: Literal["tampered-artifact"] = "tampered-artifact"
    ecu: str
    offset: int | None = Field(default=None, ge=0)
    """The byte to flip (the middle one, if not given)."""


Fault = Annotated[
    PowerCut
    | BootFailure
    | ForcedNrc
    | SlowErase
    | FrameLoss
    | BackendRestart
    | GatewayRestart
    | NetworkPartition
    | TamperedArtifact,
    Field(discriminator="kind"),
]
"""Any fault, told apart by its ``kind``."""

FAULT_KINDS: tuple[str, ...] = (
    "power-cut",
    "boot-failure",
    "nrc",
    "slow-erase",
    "frame-loss",
    "backend-restart",
    "gateway-restart",
    "network-partition",
    "tampered-artifact",
)

_FAULT_LIST: TypeAdapter[list[Fault]] = TypeAdapter(list[Fault])


def parse_faults(items: object) -> list[Fault]:
    """Validate a list of fault tables; raise :class:`ScenarioError` saying which key is wrong."""
    try:
        return _FAULT_LIST.validate_python(items)
    except ValidationError as exc:
        raise ScenarioError(describe_errors(exc, "faults")) from None


def check_targets(faults: Sequence[Fault], vehicles: dict[str, Sequence[str]]) -> None:
    """Raise :class:`ScenarioError` for a fault naming a vehicle or an ECU that is not there.

    ``vehicles`` maps each VIN to its ECU names. A fault without a VIN needs
    exactly one vehicle.
    """
    for index, fault in enumerate(faults):
        where = f"faults.{index} ({fault.kind})"
        vin = getattr(fault, "vin", None)
        if vin is not None and vin not in vehicles:
            raise ScenarioError(f"{where}: no vehicle {vin!r} (known: {', '.join(vehicles)})")
        if vin is None and len(vehicles) != 1 and _needs_vehicle(fault):
            raise ScenarioError(f"{where}: several vehicles, name one with vin")
        names = vehicles[vin] if vin is not None else next(iter(vehicles.values()), [])
        for ecu in (getattr(fault, "ecu", None), getattr(fault, "during_flash_of", None)):
            if ecu is not None and ecu not in names:
                raise ScenarioError(f"{where}: no ECU {ecu!r} (known: {', '.join(names)})")


def _needs_vehicle(fault: Fault) -> bool:
    if isinstance(fault, TamperedArtifact):
        return False
    if isinstance(fault, BackendRestart):
        return fault.during_flash_of is not None
    return True


# ------------------------------------------------------------------ application
@dataclass
class FaultTarget:
    """What :func:`inject` applies faults to, and what it tells."""

    run: Run
    world: WireWorld
    bridge: ThreadBridge
    vin: str | None = None
    """The vehicle of faults that name none."""
    release: update_pb2.Release | None = None
    """The release a ``tampered-artifact`` fault alters."""
    trigger_timeout_s: float = 120.0
    """How long a fault waits for its moment before it is given up."""
    applied: list[Fault] = field(default_factory=list)
    """Every fault applied so far (one that never met its moment is missing)."""
    rng: random.Random = field(default_factory=random.Random)


def inject(target: FaultTarget, fault: Fault) -> ProcessGenerator:
    """SimPy process: wait for the fault's moment, apply it, and undo it when its time is up.

    Logs ``fault`` events (source ``fault``, kind = the fault's kind). A fault
    whose moment never comes within ``trigger_timeout_s`` logs that and ends.
    """
    run = target.run
    if isinstance(fault, TamperedArtifact):
        _tamper(target, fault)
        target.applied.append(fault)
        return
    # A backend restart at a time concerns no vehicle (and a fleet has no default one).
    vin = _vin_of(target, fault) if _needs_vehicle(fault) else ""
    if isinstance(fault, PowerCut) and fault.offset is not None:
        yield from _armed_power_cut(target, fault, vin)
        return
    try:
        yield from _moment(target, fault, vin)
    except ScenarioTimeout as exc:
        run.event("fault", fault.kind, f"{NO_EFFECT}: {exc}")
        return
    world = target.world
    if isinstance(fault, EcuFault):
        ecu = world.vehicle(vin).sim.ecu(fault.ecu)
        where = f"{vin} {fault.ecu}"
        if isinstance(fault, PowerCut):
            ecu.power_off(fault.restore_after_s)
            back = f", back after {fault.restore_after_s:g} s" if fault.restore_after_s else ""
            run.event("fault", fault.kind, f"{where}: power off{back}")
        elif isinstance(fault, BootFailure):
            ecu.faults.fail_boot(fault.times)
            times = "every time" if fault.times is None else f"{fault.times} time(s)"
            run.event("fault", fault.kind, f"{where}: the next new image fails to boot, {times}")
        elif isinstance(fault, ForcedNrc):
            ecu.faults.force_nrc(fault.service, fault.code, fault.count)
            run.event(
                "fault",
                fault.kind,
                f"{where}: service 0x{fault.service:02X} answered with NRC 0x{fault.code:02X}, "
                + (f"{fault.count} time(s)" if fault.count else "every time"),
            )
        else:
            assert isinstance(fault, SlowErase)
            ecu.faults.slow_erase(fault.duration_s)
            run.event("fault", fault.kind, f"{where}: the next erase takes {fault.duration_s:g} s")
        target.applied.append(fault)
    elif isinstance(fault, FrameLoss):
        yield from _frame_loss(target, fault, vin)
    elif isinstance(fault, BackendRestart):
        world.stop_backend()
        target.applied.append(fault)
        run.event("fault", fault.kind, f"backend stopped for {fault.down_s:g} s")
        yield run.env.timeout(fault.down_s)
        world.start_backend()
        run.event("fault", fault.kind, "backend started again")
    elif isinstance(fault, GatewayRestart):
        life = world.kill_gateway(vin)
        target.applied.append(fault)
        run.event("fault", fault.kind, f"{vin}: gateway {life.number} killed")
        yield run.env.timeout(fault.down_s)
        world.start_gateway(vin)
        run.event("fault", fault.kind, f"{vin}: gateway {life.number + 1} started")
    else:
        assert isinstance(fault, NetworkPartition)
        proxy = world.partition(vin)
        refused_before = proxy.refused
        target.applied.append(fault)
        run.event("fault", fault.kind, f"{vin}: link to the backend cut for {fault.duration_s:g} s")
        yield run.env.timeout(fault.duration_s)
        world.heal(vin)
        run.event(
            "fault",
            fault.kind,
            f"{vin}: link restored; "
            f"{proxy.refused - refused_before} connection(s) refused meanwhile",
        )


def _vin_of(target: FaultTarget, fault: Fault) -> str:
    vin = getattr(fault, "vin", None) or target.vin
    if vin is None:
        if len(target.world.vehicles) != 1:
            raise ScenarioError(f"{fault.kind} fault: several vehicles, name one with vin")
        vin = next(iter(target.world.vehicles))
    return vin


def _moment(target: FaultTarget, fault: TimedFault, vin: str) -> ProcessGenerator:
    """Wait until the fault's moment."""
    if fault.at_s is not None:
        yield target.run.env.timeout(fault.at_s)
    elif fault.during_flash_of is not None:
        ecu = target.world.vehicle(vin).sim.ecu(fault.during_flash_of)
        if fault.during_transfer:
            yield from target.bridge.wait_until(
                lambda: ecu.server.boot.downloading,
                timeout_s=target.trigger_timeout_s,
                what=f"{vin} {fault.during_flash_of} receiving its image",
            )
        else:
            yield from target.bridge.wait_until(
                lambda: ecu.session == Session.PROGRAMMING,
                timeout_s=target.trigger_timeout_s,
                what=f"{vin} {fault.during_flash_of} in its programming session",
            )


def _armed_power_cut(target: FaultTarget, fault: PowerCut, vin: str) -> ProcessGenerator:
    """Arm the ECU's power cut at a byte offset; log when the power goes and comes back."""
    run = target.run
    assert fault.offset is not None
    ecu = target.world.vehicle(vin).sim.ecu(fault.ecu)
    ecu.faults.power_cut_at(fault.offset, fault.restore_after_s)
    where = f"{vin} {fault.ecu}"
    run.event("fault", fault.kind, f"{where}: armed at byte {fault.offset} of its next transfer")
    try:
        yield from target.bridge.wait_until(
            lambda: not ecu.powered, timeout_s=target.trigger_timeout_s, what=f"{where} power cut"
        )
    except ScenarioTimeout as exc:
        run.event("fault", fault.kind, f"{NO_EFFECT}: {exc}")
        return
    target.applied.append(fault)
    run.event("fault", fault.kind, f"{where}: power off at byte {fault.offset}")
    if fault.restore_after_s is not None:
        try:
            yield from target.bridge.wait_until(
                lambda: ecu.powered,
                timeout_s=fault.restore_after_s + 10.0,
                what=f"{where} power back",
            )
        except ScenarioTimeout as exc:
            run.event("fault", fault.kind, f"{where}: {exc}")
            return
        run.event("fault", fault.kind, f"{where}: power back")


def _frame_loss(target: FaultTarget, fault: FrameLoss, vin: str) -> ProcessGenerator:
    from scenarios.wire import LossRule

    run = target.run
    rule = LossRule(
        probability=fault.probability,
        count=fault.count,
        can_ids=frozenset(fault.can_ids),
        direction=fault.direction,
        rng=random.Random(target.rng.random()),
    )
    if fault.duration_s is not None:
        # The rule is judged on the bus's threads, against the wall clock of the wire world.
        rule.until = time.monotonic() + fault.duration_s
    target.world.lose_frames(vin, rule)
    target.applied.append(fault)
    run.event("fault", fault.kind, f"{vin}: losing frames ({fault.describe()})")
    wait_s = fault.duration_s if fault.duration_s is not None else target.trigger_timeout_s
    try:
        yield from target.bridge.wait_until(
            lambda: rule.exhausted, timeout_s=wait_s + 1.0, what=f"{vin} frame loss"
        )
    except ScenarioTimeout:
        pass
    target.world.end_frame_loss(vin, rule)
    run.event("fault", fault.kind, f"{vin}: frame loss over, {rule.dropped} frame(s) lost")


def _tamper(target: FaultTarget, fault: TamperedArtifact) -> None:
    """Flip one byte of the stored image, as a corrupted disk or an intruder would."""
    release = target.release
    if release is None:
        raise ScenarioError("tampered-artifact fault: the scenario made no release to alter")
    image = next((i for i in release.images if i.ecu == fault.ecu), None)
    if image is None:
        raise ScenarioError(f"tampered-artifact fault: the release has no image for {fault.ecu!r}")
    try:
        offset = target.world.tamper_artifact(image.sha256, fault.offset)
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"tampered-artifact fault: {exc}") from None
    target.run.event(
        "fault", fault.kind, f"{fault.ecu} image {image.sha256[:12]}: byte {offset} flipped"
    )


__all__ = [
    "FAULT_KINDS",
    "BackendRestart",
    "BootFailure",
    "EcuFault",
    "Fault",
    "FaultModel",
    "FaultTarget",
    "ForcedNrc",
    "FrameLoss",
    "GatewayRestart",
    "NetworkPartition",
    "PowerCut",
    "SlowErase",
    "TamperedArtifact",
    "TimedFault",
    "check_targets",
    "inject",
    "parse_faults",
]
