"""Calibrate a :class:`~scenarios.busmodel.BusModel` against real flashes of simulated ECUs.

:func:`measure_flashes` flashes the ECUs of a simulated vehicle on python-can's
in-process virtual bus with the real :class:`~gateway.Flasher`, at several image
sizes, and keeps each flash's step durations. :func:`derive_model` turns those
into the figures of a bus model:

* ``request_overhead_s``: one short request and its reply (the programming
  session and transfer exit steps), less the time of their two frames;
* ``frame_overhead_s``: what the TransferData phase spent per frame beyond its
  requests' overhead and STmin gaps (a least-squares fit through the origin
  over the sizes, with the frame and request counts the model itself computes);
* ``erase_s``: the erase step; ``boot_s``: the reset and verify steps;
* ``fixed_s``: everything else of a flash (identify .. fingerprint, request
  download, transfer exit, the checks, confirm, restoring the vehicle).

The geometry (bit rates, frame length, ISO-TP block size and STmin, transfer
block length) comes from the vehicle file.

python-can's virtual bus passes frames at once, so there the time measured per
frame is all host cost; the model adds the wire time its bit rate gives on top.
Its :meth:`~scenarios.busmodel.BusModel.flash_s` therefore predicts a flash on
the vehicle's real bus, and :meth:`Calibration.predicted_s` the flash as
measured (on a paced bus, one that takes wire time per frame, the two agree).
"""

from __future__ import annotations

import datetime
import itertools
import os
import platform
import statistics
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import can

from ecu_sim import SimulatedVehicle, demo_vehicle
from gateway import DiagChannel, Flasher, FlashStep
from ota_formats.vehicle import EcuSpec, VehicleSpec
from scenarios.busmodel import BusModel
from scenarios.core import ScenarioError
from scenarios.wire import signed_image

DEFAULT_SIZES_BYTES = (16 * 1024, 64 * 1024, 256 * 1024)
# Steps of exactly one single-frame request and its single-frame reply.
_SHORT_REQUEST_STEPS = (FlashStep.PROGRAMMING_SESSION, FlashStep.TRANSFER_EXIT)
_BOOT_STEPS = (FlashStep.RESET, FlashStep.VERIFY)
_FIT_ROUNDS = 5
_channels = itertools.count()


@dataclass(frozen=True)
class FlashMeasurement:
    """One measured flash: its size, total and transfer time, and each step's time."""

    ecu: str
    image_bytes: int
    duration_s: float
    transfer_s: float
    step_durations_s: Mapping[str, float]
    """Seconds per :class:`~gateway.FlashStep` value (e.g. ``"erase"``)."""

    def step_s(self, *steps: FlashStep) -> float:
        """Return the time of ``steps`` together (a step the flash lacks counts 0)."""
        return sum(self.step_durations_s.get(str(step), 0.0) for step in steps)


@dataclass(frozen=True)
class Comparison:
    """The model's prediction for one measured flash."""

    ecu: str
    image_bytes: int
    measured_s: float
    predicted_s: float
    """For the bus the flash was measured on (no wire time on an unpaced bus)."""
    bus_s: float
    """For the vehicle's real bus: :meth:`BusModel.flash_s`."""

    @property
    def ratio(self) -> float:
        """Return predicted over measured time."""
        return self.predicted_s / self.measured_s if self.measured_s > 0 else float("inf")


@dataclass(frozen=True)
class Calibration:
    """A derived bus model and the flashes it was derived from."""

    model: BusModel
    measurements: tuple[FlashMeasurement, ...]
    paced: bool = False
    """Whether the measured bus took wire time per frame (a real bus), unlike the virtual one."""

    def predicted_s(self, image_bytes: int) -> float:
        """Return the model's flash time for the bus the measurements were taken on."""
        return predicted_s(self.model, image_bytes, paced=self.paced)

    def comparisons(self) -> list[Comparison]:
        """Return measured against predicted time for every measured flash."""
        return [
            Comparison(
                m.ecu,
                m.image_bytes,
                m.duration_s,
                self.predicted_s(m.image_bytes),
                self.model.flash_s(m.image_bytes),
            )
            for m in self.measurements
        ]


def geometry(vehicle: VehicleSpec, ecu: EcuSpec) -> BusModel:
    """Return a bus model with the bus and ISO-TP parameters of ``ecu`` (default timings)."""
    fd = vehicle.can.fd
    return BusModel(
        bitrate_bps=vehicle.can.bitrate_bps,
        fd=fd,
        data_bitrate_bps=vehicle.can.data_bitrate_bps or BusModel().data_bitrate_bps,
        frame_bytes=ecu.isotp.tx_data_length or (64 if fd else 8),
        block_size=ecu.isotp.blocksize,
        st_min_s=ecu.isotp.stmin_ms / 1000,
        # maxNumberOfBlockLength counts the SID and the block counter.
        transfer_block_bytes=ecu.block_length() - 2,
    )


@dataclass(frozen=True)
class _Counts:
    frames: int
    requests: int
    gaps_s: float
    wire_s: float


def _counts(model: BusModel, image_bytes: int) -> _Counts:
    """Return the frames and requests the model counts for a transfer, its gaps and wire time.

    The model is linear in its per-frame and per-request costs: switching each
    on by one second in turn reads the counts off its own arithmetic, so the fit
    and the prediction can never disagree on them.
    """
    bare = model.model_copy(
        update={"frame_overhead_s": 0.0, "request_overhead_s": 0.0, "st_min_s": 0.0}
    )
    wire = bare.transfer_s(image_bytes)
    frames = bare.model_copy(update={"frame_overhead_s": 1.0}).transfer_s(image_bytes) - wire
    requests = bare.model_copy(update={"request_overhead_s": 1.0}).transfer_s(image_bytes) - wire
    gaps = bare.model_copy(update={"st_min_s": model.st_min_s}).transfer_s(image_bytes) - wire
    return _Counts(round(frames), round(requests), gaps, wire)


def predicted_s(model: BusModel, image_bytes: int, *, paced: bool) -> float:
    """Return ``model``'s flash time, without the wire time unless the bus is ``paced``."""
    total = model.flash_s(image_bytes)
    return total if paced else total - _counts(model, image_bytes).wire_s


def derive_model(
    measurements: Sequence[FlashMeasurement],
    base: BusModel,
    *,
    paced: bool = False,
    ecu_geometry: Mapping[str, BusModel] | None = None,
    source: str = "calibrated",
) -> BusModel:
    """Return ``base`` (a :func:`geometry`) with the timings derived from ``measurements``.

    ``ecu_geometry`` gives an ECU its own bus parameters where they differ from
    ``base`` (its frames and requests are counted with them). ``paced``
    says the measured bus took wire time per frame, so that time is taken off
    the measured per-frame time; python-can's virtual bus takes none.
    """
    if not measurements:
        raise ScenarioError("calibration: no flashes were measured")
    shapes = ecu_geometry or {}
    counts = [_counts(shapes.get(m.ecu, base), m.image_bytes) for m in measurements]
    wire_per_frame_s = (
        base.model_copy(update={"frame_overhead_s": 0.0}).frame_time_s() if paced else 0.0
    )
    short = [m.step_s(step) for m in measurements for step in _SHORT_REQUEST_STEPS]
    short = [s for s in short if s > 0] or [0.0]
    short_request_s = statistics.median(short)

    # The request cost holds two frames' cost and the frame cost holds the requests'
    # cost in its residual: a few rounds of alternating them settle both.
    frame_s = 0.0
    request_s = short_request_s
    sum_squares = sum(c.frames**2 for c in counts)
    for _ in range(_FIT_ROUNDS):
        spent = sum(
            c.frames * (m.transfer_s - c.requests * request_s - c.gaps_s)
            for m, c in zip(measurements, counts, strict=True)
        )
        per_frame_s = spent / sum_squares if sum_squares else 0.0
        frame_s = max(0.0, per_frame_s - wire_per_frame_s)
        request_s = max(0.0, short_request_s - 2 * (frame_s + wire_per_frame_s))

    erase_s = statistics.median(m.step_s(FlashStep.ERASE) for m in measurements)
    boot_s = statistics.median(m.step_s(*_BOOT_STEPS) for m in measurements)
    fixed_s = statistics.median(
        max(0.0, m.duration_s - m.transfer_s - m.step_s(FlashStep.ERASE, *_BOOT_STEPS))
        for m in measurements
    )
    figures = {
        "frame_overhead_s": frame_s,
        "request_overhead_s": request_s,
        "fixed_s": fixed_s,
        "erase_s": erase_s,
        "boot_s": boot_s,
    }
    # Nanoseconds are plenty, and a TOML file of such figures reads better.
    rounded = {name: round(value, 9) for name, value in figures.items()}
    return BusModel.model_validate({**base.model_dump(), **rounded, "source": source})


def measure_flashes(
    vehicle: VehicleSpec,
    *,
    sizes_bytes: Sequence[int],
    ecus: Sequence[str] = ("ecm",),
    rounds: int = 1,
    on_status: Callable[[str], None] | None = None,
) -> list[FlashMeasurement]:
    """Flash each of ``ecus`` with an image of each size, ``rounds`` times, and time it.

    The vehicle runs in this process on a virtual bus of its own, with its NVM
    in a temporary directory. A flash that fails raises :class:`ScenarioError`.
    """
    for name in ecus:
        vehicle.ecu(name)  # an unknown ECU fails before anything starts
    channel = f"hil-calibrate-{os.getpid()}-{next(_channels)}"
    fd = vehicle.can.fd
    measurements: list[FlashMeasurement] = []
    serial = itertools.count(1)
    total = len(ecus) * rounds * len(sizes_bytes)
    with ExitStack() as stack:
        ecu_bus = can.Bus(interface="virtual", channel=channel, fd=fd)
        stack.callback(ecu_bus.shutdown)
        bus = can.Bus(interface="virtual", channel=channel, fd=fd)
        stack.callback(bus.shutdown)
        notifier = can.Notifier(bus, [], timeout=0.1)
        stack.callback(notifier.stop)
        stack.enter_context(SimulatedVehicle(vehicle, ecu_bus, ecus=list(ecus)))
        for name in ecus:
            ecu = vehicle.ecu(name)
            with DiagChannel(bus, notifier, vehicle, ecu) as diag:
                flasher = Flasher(diag)
                for _round in range(rounds):
                    for size in sizes_bytes:
                        number = next(serial)
                        # Each image a new version with a higher anti-rollback counter:
                        # the ECU refuses downgrades, and confirming raises its counter.
                        counter = ecu.anti_rollback_counter + number
                        image = signed_image(ecu, f"99.{number}.0", counter, size=size)
                        if on_status is not None:
                            on_status(f"flash {number}/{total}: {name}, {len(image):,} bytes")
                        result = flasher.flash(image)
                        if not result.ok:
                            raise ScenarioError(
                                f"calibration flash of {name} with {len(image)} bytes "
                                f"failed: {result.failure}"
                            )
                        measurements.append(
                            FlashMeasurement(
                                ecu=name,
                                image_bytes=len(image),
                                duration_s=result.duration_s,
                                transfer_s=result.transfer_s,
                                step_durations_s={
                                    str(step): seconds
                                    for step, seconds in result.step_durations_s.items()
                                },
                            )
                        )
    return measurements


def calibrate(
    vehicle: VehicleSpec | None = None,
    *,
    sizes_bytes: Sequence[int] = DEFAULT_SIZES_BYTES,
    ecus: Sequence[str] = ("ecm",),
    rounds: int = 1,
    on_status: Callable[[str], None] | None = None,
    now: Callable[[], datetime.datetime] | None = None,
) -> Calibration:
    """Measure flashes of ``vehicle`` (the demo vehicle) and derive a bus model from them."""
    sizes = sorted(set(sizes_bytes))
    if len(sizes) < 2:
        raise ScenarioError("calibration needs at least two different image sizes")
    if rounds < 1:
        raise ScenarioError("calibration needs at least one round")
    if not ecus:
        raise ScenarioError("calibration needs at least one ECU")
    spec = vehicle or demo_vehicle()
    measurements = measure_flashes(
        spec, sizes_bytes=sizes, ecus=ecus, rounds=rounds, on_status=on_status
    )
    when = (now or (lambda: datetime.datetime.now(datetime.UTC)))()
    source = (
        f"hil scenario calibrate, {when:%Y-%m-%d %H:%M} UTC: vehicle {spec.name}, "
        f"ECU {', '.join(ecus)}, images of {', '.join(f'{s:,}' for s in sizes)} bytes of "
        f"payload, {rounds} round(s), real flasher and simulated ECUs on python-can's "
        f"virtual bus (host costs; wire time from bitrate_bps); Python "
        f"{platform.python_version()} on {platform.machine()}"
    )
    first = geometry(spec, spec.ecu(ecus[0]))
    shapes = {name: geometry(spec, spec.ecu(name)) for name in ecus}
    model = derive_model(measurements, first, ecu_geometry=shapes, source=source)
    return Calibration(model, tuple(measurements))


__all__ = [
    "DEFAULT_SIZES_BYTES",
    "Calibration",
    "Comparison",
    "FlashMeasurement",
    "calibrate",
    "derive_model",
    "geometry",
    "measure_flashes",
    "predicted_s",
]
