"""Share one CAN bus with other processes over loopback, with python-can-remote's server.

Clients join with python-can's ``remote`` interface, ``channel="ws://127.0.0.1:PORT/"``.

python-can-remote's server opens one bus *per client connection* with the same
configuration. That is what a python-can ``virtual`` channel needs (every bus
on the channel in this process sees the others' frames), but most hardware
drivers allow one handle per channel, and frames sent through one handle do not
reach another. So the server here always serves a virtual channel (the hub);
a real interface is opened once and bridged to the hub frame by frame.

:func:`serve_bus` returns a started :class:`BusServer`; :meth:`BusServer.stop`
closes the clients' connections and shuts the server down.
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import can
from can.interfaces.virtual import VirtualBus
from can_remote import DEFAULT_PORT, RemoteServer

from backend_stub.server import is_loopback
from hil.errors import BusError, UsageError

__all__ = ["DEFAULT_PORT", "BusServer", "parse_listen", "serve_bus"]

logger = logging.getLogger(__name__)

_SHUTDOWN_GRACE_S = 2.0
_hubs = itertools.count()


def parse_listen(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6); a bare ``HOST`` takes the default port."""
    host, sep, port = text.rpartition(":")
    if not sep or (host.count(":") and not host.startswith("[")):
        # No port given ("127.0.0.1", "[::1]" or a bare IPv6 address).
        host, port = text, str(DEFAULT_PORT)
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise UsageError(f"--listen {text!r}: no host (e.g. 127.0.0.1:{DEFAULT_PORT})")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen {text!r}: the port must be a number from 0 to 65535")
    return host, int(port)


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


class _HubServer(RemoteServer):  # type: ignore[misc]
    """python-can-remote's server, tracking its connections so that it can close them."""

    # Connection threads are waited for by BusServer.stop(), with a deadline.
    block_on_close = False

    def __init__(self, host: str, port: int, **config: Any) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(host, port, **config)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def open_connections(self) -> list[socket.socket]:
        with self._connections_lock:
            return list(self._connections)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that left without a goodbye, or asked for a bus the hub cannot open:
        # one log line, not socketserver's traceback on stderr.
        exc = sys.exc_info()[1]
        logger.warning("connection from %s ended: %s", client_address, exc)


class _IPv6HubServer(_HubServer):
    address_family = socket.AF_INET6


class _Forward(can.Listener):
    """Sends each received frame on another bus (one direction of the bridge)."""

    def __init__(
        self, target: can.BusABC, *, skip_own: bool, name: str, failed: threading.Event
    ) -> None:
        self.target = target
        self.skip_own = skip_own
        self.name = name
        self.failure: Exception | None = None
        self.failed = failed
        self.send_errors = 0

    def on_message_received(self, msg: can.Message) -> None:
        if self.skip_own and not msg.is_rx:
            return  # the real interface echoing a frame the bridge sent
        if msg.is_error_frame and self.name == "to-interface":
            return  # an error frame cannot be transmitted
        out = copy.copy(msg)
        out.channel = None  # socketcan would send to the interface named in msg.channel
        try:
            self.target.send(out)
        except Exception as exc:  # one frame the target refuses must not stop the bridge
            self.send_errors += 1
            if self.send_errors == 1 or logger.isEnabledFor(logging.DEBUG):
                logger.warning("bridge %s: cannot send %s: %s", self.name, msg, exc)

    def on_error(self, exc: Exception) -> None:
        # Receiving failed (the adapter went away): remember it; the owner stops.
        if self.failure is None:
            self.failure = exc
        self.failed.set()
        time.sleep(0.1)  # the notifier calls again at once: do not spin until it is stopped


@dataclass
class _Bridge:
    """A bus bridged to the hub: one notifier per bus, each forwarding to the other."""

    bus: can.BusABC
    hub: can.BusABC
    notifiers: list[can.Notifier]
    forwards: list[_Forward]
    failed: threading.Event

    @classmethod
    def start(cls, bus: can.BusABC, hub_channel: str) -> _Bridge:
        hub = can.Bus(interface="virtual", channel=hub_channel, preserve_timestamps=True)
        failed = threading.Event()
        forwards = [
            _Forward(hub, skip_own=True, name="to-hub", failed=failed),
            _Forward(bus, skip_own=False, name="to-interface", failed=failed),
        ]
        notifiers = [
            can.Notifier(bus, [forwards[0]], timeout=0.1),
            can.Notifier(hub, [forwards[1]], timeout=0.1),
        ]
        return cls(bus, hub, notifiers, forwards, failed)

    def stop(self) -> None:
        for notifier in self.notifiers:
            notifier.stop()
        self.hub.shutdown()


class BusServer:
    """A started hub: python-can-remote's server on ``host:port``, serving one bus."""

    def __init__(
        self,
        server: _HubServer,
        thread: threading.Thread,
        hub_channel: str,
        bridge: _Bridge | None,
    ) -> None:
        self._server = server
        self._thread = thread
        self.hub_channel = hub_channel
        self._bridge = bridge
        host, port = server.server_address[:2]
        self.host: str = host
        self.port: int = port
        self._stopped = False

    @property
    def url(self) -> str:
        """The channel clients give python-can's ``remote`` interface."""
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        if _is_ipv6(host):
            host = f"[{host}]"
        return f"ws://{host}:{self.port}/"

    @property
    def served(self) -> str:
        """What the hub serves, in python-can's words (``channel_info``)."""
        if self._bridge is not None:
            return str(self._bridge.bus.channel_info)
        return f"virtual channel {self.hub_channel!r}"

    @property
    def clients(self) -> int:
        """How many clients are connected."""
        return len(self._server.clients)

    @property
    def failure(self) -> Exception | None:
        """Why the bridged interface stopped receiving, if it did."""
        if self._bridge is None:
            return None
        for forward in self._bridge.forwards:
            if forward.failure is not None:
                return forward.failure
        return None

    def wait_failed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the bridged interface to fail."""
        if self._bridge is None:
            time.sleep(timeout)
            return False
        return self._bridge.failed.wait(timeout)

    def stop(self, grace_s: float = _SHUTDOWN_GRACE_S) -> None:
        """Stop accepting, close every client's connection, stop the bridge."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._thread.join()
        deadline = time.monotonic() + grace_s
        # A websocket close frame first: clients answer it and their connections end.
        while self._server.open_connections() and time.monotonic() < deadline:
            for protocol in list(self._server.clients):
                try:
                    protocol.close()
                except OSError:
                    pass
            time.sleep(0.02)
        # Clients that did not answer (or never sent their bus request): cut them off.
        for sock in self._server.open_connections():
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + grace_s
        while self._server.open_connections() and time.monotonic() < deadline:
            time.sleep(0.02)
        # Each connection shuts its own bus down once its sender thread ends (<= 0.5 s).
        deadline = time.monotonic() + grace_s
        while self._server.clients and time.monotonic() < deadline:
            time.sleep(0.02)
        self._server.server_close()
        if self._bridge is not None:
            self._bridge.stop()

    def __enter__(self) -> BusServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_bus(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    bus: can.BusABC | None = None,
    channel: str | None = None,
    allow_remote: bool = False,
) -> BusServer:
    """Start python-can-remote's server on ``host:port`` (port 0: a free one).

    Without ``bus``, it serves the virtual ``channel`` (default: a fresh name).
    With ``bus`` (any python-can bus; the caller opened it and shuts it down after
    :meth:`BusServer.stop`), it serves a virtual hub bridged to that bus; a virtual
    ``bus`` is not bridged: its channel is served as it is.
    A host other than loopback needs ``allow_remote``: the protocol has neither
    authentication nor encryption.
    """
    if not is_loopback(host) and not allow_remote:
        raise UsageError(
            f"--listen {host}: not a loopback address; anyone who can reach it could send "
            "on the bus (no authentication): give --allow-remote to mean it"
        )
    if isinstance(bus, VirtualBus):
        channel, bus = str(bus.channel_id), None
    hub_channel = channel or f"hil-bus-{os.getpid()}-{next(_hubs)}"
    bridge = _Bridge.start(bus, hub_channel) if bus is not None else None
    server_class = _IPv6HubServer if _is_ipv6(host) else _HubServer
    try:
        server = server_class(host, port, interface="virtual", channel=hub_channel)
    except OSError as exc:
        if bridge is not None:
            bridge.stop()
        raise BusError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="hil-bus-serve"
    )
    thread.daemon = True
    thread.start()
    return BusServer(server, thread, hub_channel, bridge)
