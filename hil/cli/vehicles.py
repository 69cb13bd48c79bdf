"""``hil vehicles list``: the vehicles registered with the backend."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from backend_stub.api import common_pb2, device_pb2
from hil.cli._backend import (
    CALL_TIMEOUT_S,
    add_backend_options,
    as_dict,
    operator_channel,
    print_json,
)


def add_filter_options(parser: argparse.ArgumentParser) -> None:
    """Add the vehicle filter options."""
    parser.add_argument("--model", default="", help="vehicles of this model")
    parser.add_argument("--tag", action="append", default=[], help="carrying this tag (repeat)")
    parser.add_argument("--vin", action="append", default=[], help="this VIN (repeat)")
    parser.add_argument("--ecu-name", default="", help="with this ECU")
    parser.add_argument("--hardware-id", default="", help="with an ECU of this hardware id")
    parser.add_argument(
        "--software-version", default="", help="whose ECU (above) runs this version"
    )


def filter_from(args: argparse.Namespace) -> common_pb2.VehicleFilter:
    """Build the filter message from the options."""
    return common_pb2.VehicleFilter(
        model=args.model,
        tags=args.tag,
        vins=args.vin,
        ecu_name=args.ecu_name,
        hardware_id=args.hardware_id,
        software_version=args.software_version,
    )


def add_subparser(subparsers: Any) -> None:
    """Register ``hil vehicles list``."""
    parser = subparsers.add_parser("vehicles", help="vehicles registered with the backend")
    actions = parser.add_subparsers(dest="vehicles_command", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser("list", help="list vehicles matching a filter")
    add_filter_options(listing)
    listing.add_argument("--limit", type=int, default=1000, help="at most this many (1000)")
    add_backend_options(listing)
    listing.set_defaults(run=run_list)


def run_list(args: argparse.Namespace) -> int:
    """List vehicles page by page."""
    vehicles: list[device_pb2.Vehicle] = []
    token = ""
    with operator_channel(args) as stubs:
        while len(vehicles) < args.limit:
            reply = stubs.device.ListVehicles(
                device_pb2.ListVehiclesRequest(
                    filter=filter_from(args),
                    page_size=min(1000, args.limit - len(vehicles)),
                    page_token=token,
                ),
                timeout=CALL_TIMEOUT_S,
            )
            vehicles.extend(reply.vehicles)
            token = reply.next_page_token
            if not token:
                break
    if args.json:
        print_json([as_dict(v) for v in vehicles])
        return 0
    table = Table(box=None)
    for column in ("vin", "model", "state", "last seen (UTC)", "check-ins", "ECUs"):
        table.add_column(column, no_wrap=column != "ECUs")
    for vehicle in vehicles:
        seen = datetime.datetime.fromtimestamp(vehicle.last_seen_at.seconds, datetime.UTC)
        ecus = ", ".join(f"{e.name} {e.software_version}" for e in vehicle.ecus)
        table.add_row(
            vehicle.vin,
            vehicle.model,
            vehicle.state,
            f"{seen:%Y-%m-%d %H:%M:%S}",
            str(vehicle.checkins),
            ecus,
        )
    Console().print(table)
    Console().print(f"{len(vehicles)} vehicle(s)")
    return 0
