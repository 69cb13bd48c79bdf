"""``hil gateway run``: the vehicle's telematics unit on a CAN bus, talking to the backend."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from backend_stub.errors import PkiError
from backend_stub.pki import load_pki
from backend_stub.server import is_loopback
from gateway.backend import Backoff
from gateway.tcu import Gateway
from hil.cli._backend import DEFAULT_BACKEND
from hil.cli._bus import add_bus_options, notifier_for, open_bus
from hil.cli._vehicle import add_vehicle_option, vehicle_from
from hil.errors import UsageError
from ota_formats.errors import KeyFileError
from ota_formats.signing import load_private_key, load_public_key


def add_subparser(subparsers: Any) -> None:
    """Register ``hil gateway run``."""
    parser = subparsers.add_parser("gateway", help="run the vehicle's telematics gateway (TCU)")
    actions = parser.add_subparsers(dest="gateway_command", metavar="ACTION")
    actions.required = True
    run = actions.add_parser(
        "run",
        help="check in with the backend and carry out its deployments on the vehicle's ECUs",
        description="Run the TCU of a vehicle: read its ECUs' inventory over UDS, register "
        "with the backend, check in, and carry out deployments (verified download, "
        "preconditions, flash in order, confirm or roll back). mTLS with the vehicle's "
        "certificate from --tls-dir, or --insecure towards a backend on loopback.",
    )
    add_vehicle_option(run)
    run.add_argument(
        "--backend",
        default=os.environ.get("HIL_BACKEND", DEFAULT_BACKEND),
        metavar="HOST:PORT",
        help=f"the backend (default: $HIL_BACKEND or {DEFAULT_BACKEND})",
    )
    security = run.add_mutually_exclusive_group()
    security.add_argument(
        "--tls-dir",
        type=Path,
        metavar="DIR",
        help="PKI directory ('hil pki init' and 'hil pki vehicle'): the vehicle's certificate, "
        "the CA, and the backend's release public key",
    )
    security.add_argument(
        "--insecure", action="store_true", help="plain connection to a backend on loopback"
    )
    run.add_argument(
        "--release-key",
        type=Path,
        metavar="FILE",
        help="the backend's release signing public key (PEM); default: the one in --tls-dir",
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        default=Path("gateway-state"),
        metavar="DIR",
        help="deployment state and downloaded images, kept across restarts "
        "(default ./gateway-state)",
    )
    run.add_argument(
        "--checkin-interval",
        type=float,
        metavar="S",
        help="seconds between check-ins (default: what the backend asks for)",
    )
    run.add_argument(
        "--precondition-timeout",
        type=float,
        metavar="S",
        help="how long a deployment waits for its preconditions (default: the vehicle file's)",
    )
    run.add_argument(
        "--once",
        action="store_true",
        help="check in once, carry out what is offered, and exit (status 1 if a deployment "
        "did not succeed)",
    )
    add_bus_options(run)
    run.set_defaults(run=run_gateway)


def _release_key(path: Path) -> Ed25519PublicKey:
    try:
        return load_public_key(path)
    except KeyFileError:
        try:
            return load_private_key(path).public_key()
        except KeyFileError as exc:
            raise UsageError(f"--release-key {path}: {exc}") from exc


def _channel(args: argparse.Namespace, vin: str) -> tuple[grpc.Channel, Ed25519PublicKey]:
    if args.tls_dir is not None:
        try:
            pki = load_pki(args.tls_dir)
            credentials = pki.channel_credentials(vin)
        except PkiError as exc:
            raise UsageError(str(exc)) from exc
        key_path = args.release_key or pki.release_public_key_path
        return grpc.secure_channel(args.backend, credentials), _release_key(key_path)
    if not args.insecure:
        raise UsageError("give --tls-dir DIR (the vehicle's certificate) or --insecure")
    if not is_loopback(args.backend.rpartition(":")[0].strip("[]")):
        raise UsageError(f"--insecure is for a backend on loopback, not {args.backend}")
    if args.release_key is None:
        raise UsageError("--insecure needs --release-key FILE (the backend's release public key)")
    return grpc.insecure_channel(args.backend), _release_key(args.release_key)


def run_gateway(args: argparse.Namespace) -> int:
    """Run until SIGINT or SIGTERM (or once, with ``--once``)."""
    if args.checkin_interval is not None and not args.checkin_interval > 0:
        raise UsageError("--checkin-interval must be above 0")
    if args.precondition_timeout is not None and not args.precondition_timeout > 0:
        raise UsageError("--precondition-timeout must be above 0")
    vehicle = vehicle_from(args)
    channel, release_key = _channel(args, vehicle.vin)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    bus = open_bus(args)
    try:
        with (
            notifier_for(bus) as notifier,
            Gateway(
                vehicle,
                bus,
                notifier,
                channel,
                state_dir=args.state_dir,
                release_keys=[release_key],
                backoff=Backoff(max_s=10.0, give_up_after_s=30.0),
                checkin_interval_s=args.checkin_interval,
                precondition_timeout_s=args.precondition_timeout,
                on_event=lambda text: print(text, flush=True),
            ) as gateway,
        ):
            print(
                f"gateway of {vehicle.vin} on {bus.channel_info}, backend {args.backend}, "
                f"state in {args.state_dir}",
                flush=True,
            )
            if args.once:
                gateway.poll()
                failed = [o for o in gateway.outcomes if o.state != "succeeded"]
                return 1 if failed else 0
            gateway.run(stop)
        print("stopped", flush=True)
    finally:
        channel.close()
        bus.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
