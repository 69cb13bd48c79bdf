"""Vehicle file option and the optional in-process simulated vehicle (``--sim``)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import can

from ecu_sim import SimulatedVehicle, demo_vehicle_path, parse_fault
from hil.cli._bus import notifier_for, open_bus, reject_bus_with_sim, virtual_channel
from hil.errors import UsageError
from ota_formats.vehicle import EcuSpec, VehicleSpec, load_vehicle


def add_vehicle_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--vehicle FILE`` (the bundled demo vehicle by default)."""
    parser.add_argument(
        "--vehicle",
        type=Path,
        metavar="FILE",
        help="vehicle description (TOML); default: the bundled demo vehicle",
    )


def add_sim_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--sim`` and ``--state-dir`` to run the simulated vehicle in this process."""
    parser.add_argument(
        "--sim",
        action="store_true",
        help="run the simulated vehicle in this process on its own virtual bus",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="with --sim: NVM of the simulated ECUs (kept between runs); default: temporary",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="ECU:KIND[=ARGS]",
        help="with --sim: inject a fault (as in 'hil ecu run'), e.g. bms:fail-boot",
    )


def vehicle_from(args: argparse.Namespace) -> VehicleSpec:
    """Load the vehicle named by ``--vehicle`` or the demo vehicle."""
    return load_vehicle(args.vehicle or demo_vehicle_path())


def ecu_from(vehicle: VehicleSpec, name: str) -> EcuSpec:
    """Return an ECU of the vehicle (a clear error for unknown names)."""
    return vehicle.ecu(name)


@dataclass
class TesterBus:
    """The tester's bus and notifier, with the simulated vehicle when ``--sim`` is used."""

    bus: can.BusABC
    notifier: can.Notifier
    vehicle: SimulatedVehicle | None


@contextlib.contextmanager
def tester_bus(args: argparse.Namespace, vehicle: VehicleSpec) -> Iterator[TesterBus]:
    """Open the tester's side: the bus from the options, or ``--sim``'s in-process bus."""
    reject_bus_with_sim(args)
    faults = [parse_fault(text) for text in getattr(args, "fault", [])]
    if faults and not getattr(args, "sim", False):
        raise UsageError("--fault needs --sim (faults are injected into simulated ECUs)")
    if getattr(args, "sim", False):
        channel = virtual_channel("hil-sim")
        fd = vehicle.can.fd
        ecu_bus = can.Bus(interface="virtual", channel=channel, fd=fd)
        bus = can.Bus(interface="virtual", channel=channel, fd=fd)
        try:
            with (
                SimulatedVehicle(vehicle, ecu_bus, state_dir=args.state_dir) as sim,
                notifier_for(bus) as notifier,
            ):
                for fault in faults:
                    fault.apply(sim.ecu(fault.ecu).faults)
                yield TesterBus(bus, notifier, sim)
        finally:
            bus.shutdown()
            ecu_bus.shutdown()
        return
    bus = open_bus(args)
    try:
        with notifier_for(bus) as notifier:
            yield TesterBus(bus, notifier, None)
    finally:
        bus.shutdown()
