"""``hil ecu run``: serve the vehicle's simulated ECUs on a bus until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from ecu_sim import SimulatedVehicle, parse_fault
from ecu_sim.faults import FAULT_KINDS
from hil.cli._bus import add_bus_options, open_bus
from hil.cli._vehicle import add_vehicle_option, vehicle_from
from hil.errors import UsageError


def add_subparser(subparsers: Any) -> None:
    """Register ``hil ecu run``."""
    parser = subparsers.add_parser("ecu", help="run simulated ECUs")
    actions = parser.add_subparsers(dest="ecu_command", metavar="ACTION")
    actions.required = True
    faults = "\n".join(f"  {text}" for text in FAULT_KINDS.values())
    run = actions.add_parser(
        "run",
        help="serve the vehicle's ECUs on a CAN bus until interrupted",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the simulated ECUs of a vehicle on any python-can bus until SIGINT or "
        "SIGTERM.\n\nfault kinds (--fault ECU:KIND[=ARGS]):\n" + faults,
    )
    add_vehicle_option(run)
    run.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="NVM of the ECUs, kept between runs (default: a temporary directory)",
    )
    run.add_argument(
        "--ecu",
        action="append",
        metavar="NAME",
        dest="ecus",
        help="run only this ECU (repeatable; default: all)",
    )
    run.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="ECU:KIND[=ARGS]",
        help="inject a fault into one ECU (repeatable), e.g. bms:fail-boot",
    )
    add_bus_options(run)
    run.set_defaults(run=run_ecus)


def run_ecus(args: argparse.Namespace) -> int:
    """Serve until a signal arrives, then shut down cleanly."""
    vehicle = vehicle_from(args)
    names = args.ecus or [e.name for e in vehicle.ecus]
    for name in names:
        vehicle.ecu(name)
    faults = [parse_fault(text) for text in args.fault]
    for fault in faults:
        if fault.ecu not in names:
            raise UsageError(f"fault {fault.text!r} names ECU {fault.ecu!r}, which is not running")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    bus = open_bus(args)
    temporary = None if args.state_dir else tempfile.TemporaryDirectory(prefix="hil-ecu-")
    state_dir = args.state_dir or Path(temporary.name)  # type: ignore[union-attr]
    try:
        sim = SimulatedVehicle(vehicle, bus, state_dir=state_dir, ecus=names)
        for fault in faults:
            fault.apply(sim.ecu(fault.ecu).faults)
        with sim:
            ecus = ", ".join(
                f"{e.spec.name} (0x{e.spec.request_id:03X}/0x{e.spec.response_id:03X} "
                f"v{e.version or '-'})"
                for e in sim.ecus.values()
            )
            print(f"vehicle {vehicle.name} ({vehicle.vin}): {ecus}", flush=True)
            print(f"bus: {bus.channel_info}; NVM in {state_dir}", flush=True)
            for fault in faults:
                print(f"fault armed: {fault.text}", flush=True)
            print("serving; Ctrl+C or SIGTERM stops", flush=True)
            while not stop.wait(0.2):
                pass
        print("stopped", flush=True)
    finally:
        bus.shutdown()
        if temporary is not None:
            temporary.cleanup()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
