"""``hil bus serve``: share one CAN bus with other processes over loopback."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType
from typing import Any

import can
from can.interfaces.virtual import VirtualBus

import dbc
from backend_stub.server import is_loopback
from hil.bus_server import DEFAULT_PORT, BusServer, parse_listen, serve_bus
from hil.cli._bus import add_bus_options, bus_given, open_bus
from hil.errors import BusError, UsageError

DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"

_DESCRIPTION = """\
Share one CAN bus with other processes through python-can-remote's server
(a websocket on loopback). Clients join with python-can's 'remote' interface
and the URL printed at start, e.g. 'hil ecu run -i remote -c ws://127.0.0.1:PORT/'.

Without bus options the hub is a python-can virtual channel: processes on a
machine without vcan meet there. With bus options (-i socketcan -c vcan0,
-i pcan -c PCAN_USBBUS1 -b 500000, python-can's config files with -c or
--bus-kwargs config_context=NAME) the interface is opened once and bridged to
the hub, so every client sees the others' frames and the interface's.

It listens on loopback only, unless --allow-remote: the protocol has neither
authentication nor encryption, and whoever reaches the port can send on the bus.
"""

_EPILOG = """\
notes on python-can-remote (clients):
  - the server decides the bus: a client's -b/--fd/--data-bitrate are ignored;
    --timing fails on the client (a BitTiming object cannot be sent as JSON)
  - CAN FD frames (up to 64 bytes, BRS/ESI) pass; a bridged classic interface
    refuses them (logged)
  - a client does not receive its own frames unless it asks with
    --bus-kwargs receive_own_messages=True
  - filters given when the bus is opened (can_filters=...) apply on the server;
    bus.set_filters() afterwards has no effect on a remote bus
  - stop the clients before the hub: a client whose hub went away loses its bus
    (its receive thread ends) and may fail when it shuts the bus down
"""


def add_subparser(subparsers: Any) -> None:
    """Register ``hil bus serve``."""
    parser = subparsers.add_parser("bus", help="share a CAN bus with other processes")
    actions = parser.add_subparsers(dest="bus_command", metavar="ACTION")
    actions.required = True
    serve = actions.add_parser(
        "serve",
        help="serve a CAN bus (virtual by default) to python-can 'remote' clients",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_DESCRIPTION,
        epilog=_EPILOG,
    )
    serve.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to listen on (default {DEFAULT_LISTEN}; port 0 picks a free one); "
        "loopback only unless --allow-remote",
    )
    serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --listen address other than loopback (no authentication, no TLS: "
        "anyone who can reach it can send on the bus)",
    )
    add_bus_options(serve)
    serve.set_defaults(run=run_serve)


def _usage_lines(url: str) -> list[str]:
    return [
        f"join with python-can's interface 'remote', channel {url}, e.g.:",
        f"  hil ecu run -i remote -c {url}",
        f"  hil diag --ecu ecm -i remote -c {url} info",
        f"  python -m can.logger -i remote -c {url}",
        f"  cantools monitor -i remote -c {url} {dbc.path()}",
        f'  can.Bus(interface="remote", channel="{url}")',
    ]


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM, then close the clients' connections and the bus."""
    host, port = parse_listen(args.listen)
    if not is_loopback(host) and not args.allow_remote:
        raise UsageError(
            f"--listen {args.listen} is not a loopback address; the bus would be open to the "
            "network without authentication: add --allow-remote to mean it"
        )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    bus: can.BusABC | None = None
    try:
        bus, channel = _bus_to_serve(args)
        server = serve_bus(host, port, bus=bus, channel=channel, allow_remote=args.allow_remote)
        failure = _serve_until(server, stop)
    finally:
        if bus is not None:
            bus.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure is not None:
        raise BusError(f"the served CAN bus failed: {failure}") from failure
    print("stopped", flush=True)
    return 0


def _bus_to_serve(args: argparse.Namespace) -> tuple[can.BusABC | None, str | None]:
    """Return the bus to bridge, or the virtual channel to serve as it is."""
    if not bus_given(args):
        return None, None
    bus = open_bus(args)
    if isinstance(bus, VirtualBus):
        # Served as it is (no bridge); this process would not read it, so close it.
        channel = str(bus.channel_id)
        bus.shutdown()
        return None, channel
    return bus, None


def _serve_until(server: BusServer, stop: threading.Event) -> Exception | None:
    with server:
        print(f"serving {server.served} at {server.url}", flush=True)
        if not is_loopback(server.host):
            print(
                f"warning: listening on {server.host}, not only loopback: anyone who can "
                "reach this port can send on the bus",
                flush=True,
            )
        for line in _usage_lines(server.url):
            print(line, flush=True)
        print("serving; Ctrl+C or SIGTERM stops", flush=True)
        while not stop.is_set():
            if server.wait_failed(0.2):
                return server.failure
    return None
