"""The simulated vehicle: ECUs with a UDS server, an A/B bootloader, NVM and restbus.

Typical use::

    import can
    from ecu_sim import SimulatedVehicle, demo_vehicle

    bus = can.Bus(interface="virtual", channel="demo")
    with SimulatedVehicle(demo_vehicle(), bus, state_dir="state") as vehicle:
        vehicle.ecu("bms").faults.fail_boot()
        ...
"""

from importlib import resources
from pathlib import Path

from ecu_sim.ecu import SimulatedEcu
from ecu_sim.errors import EcuSimError, EcuStateError, FaultSpecError, NvmError
from ecu_sim.faults import FaultInjector, FaultSpec, parse_fault
from ecu_sim.state import Ignition, VehicleState
from ecu_sim.vehicle import SimulatedVehicle
from ota_formats.vehicle import VehicleSpec, load_vehicle

DEMO_VEHICLE_FILE = "demo.toml"


def demo_vehicle_path() -> Path:
    """Return the path of the bundled demo vehicle file."""
    return Path(str(resources.files(__name__).joinpath("vehicles", DEMO_VEHICLE_FILE)))


def demo_vehicle() -> VehicleSpec:
    """Load the bundled demo vehicle (ecm, bms, bcm)."""
    return load_vehicle(demo_vehicle_path())


__all__ = [
    "EcuSimError",
    "EcuStateError",
    "FaultInjector",
    "FaultSpec",
    "FaultSpecError",
    "Ignition",
    "NvmError",
    "SimulatedEcu",
    "SimulatedVehicle",
    "VehicleState",
    "demo_vehicle",
    "demo_vehicle_path",
    "parse_fault",
]
