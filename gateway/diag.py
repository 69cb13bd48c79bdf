"""A tester's diagnostic channel to one ECU: udsoncan's client over can-isotp.

:class:`DiagChannel` opens a physical ISO-TP connection (with the ECU's
transport parameters from the vehicle file) and a functional sender on the
vehicle's functional request id, and configures udsoncan with the DID codecs
and the seed/key algorithm of the wire contract. The bus and its notifier are
passed in, so the same code runs on a virtual bus, vcan or a real adapter.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar, cast

import can
import isotp
import udsoncan
from udsoncan import DidCodec
from udsoncan.client import Client
from udsoncan.connections import BaseConnection, PythonIsoTpConnection
from udsoncan.exceptions import (
    InvalidResponseException,
    NegativeResponseException,
    TimeoutException,
    UnexpectedResponseException,
)
from udsoncan.typing import ClientConfig

from gateway.errors import DiagnosticError, DiagnosticTimeout
from ota_formats.uds import DID_SIZES, BootStatus, Did, security_key, unpad_ascii
from ota_formats.vehicle import EcuSpec, VehicleSpec

T = TypeVar("T")


class AsciiRecord(DidCodec):
    """A fixed-size, space-padded ASCII DID record."""

    def __init__(self, size: int) -> None:
        self.size = size

    def encode(self, value: Any) -> bytes:
        """Pad ``value`` to the record size."""
        raw = str(value).encode("ascii")
        if len(raw) > self.size:
            raise ValueError(f"value longer than {self.size} characters")
        return raw + b" " * (self.size - len(raw))

    def decode(self, payload: bytes) -> str:
        """Strip the padding."""
        return unpad_ascii(payload)

    def __len__(self) -> int:
        return self.size


class RawRecord(DidCodec):
    """A fixed-size binary DID record, passed through as bytes."""

    def __init__(self, size: int) -> None:
        self.size = size

    def encode(self, value: Any) -> bytes:
        """Check the size."""
        data = bytes(value)
        if len(data) != self.size:
            raise ValueError(f"record must have {self.size} bytes")
        return data

    def decode(self, payload: bytes) -> bytes:
        """Return the bytes."""
        return bytes(payload)

    def __len__(self) -> int:
        return self.size


class BootStatusRecord(DidCodec):
    """The boot status record (DID 0xF1A0)."""

    def encode(self, value: Any) -> bytes:
        """Pack a :class:`BootStatus`."""
        return bytes(value.pack())

    def decode(self, payload: bytes) -> BootStatus:
        """Unpack a :class:`BootStatus`."""
        return BootStatus.unpack(bytes(payload))

    def __len__(self) -> int:
        return DID_SIZES[Did.BOOT_STATUS]


DID_CODECS: dict[int, DidCodec] = {
    Did.ACTIVE_SESSION: DidCodec(">B"),
    Did.PART_NUMBER: AsciiRecord(DID_SIZES[Did.PART_NUMBER]),
    Did.APP_SOFTWARE_VERSION: AsciiRecord(DID_SIZES[Did.APP_SOFTWARE_VERSION]),
    Did.SERIAL_NUMBER: AsciiRecord(DID_SIZES[Did.SERIAL_NUMBER]),
    Did.VIN: AsciiRecord(DID_SIZES[Did.VIN]),
    Did.HARDWARE_ID: AsciiRecord(DID_SIZES[Did.HARDWARE_ID]),
    Did.TESTER_SERIAL: RawRecord(DID_SIZES[Did.TESTER_SERIAL]),
    Did.PROGRAMMING_DATE: RawRecord(DID_SIZES[Did.PROGRAMMING_DATE]),
    Did.BOOT_STATUS: BootStatusRecord(),
}


def nrc_name(code: int) -> str:
    """Return the ISO 14229-1 name of a negative response code."""
    name: str = udsoncan.Response.Code.get_name(code)
    return name


def describe_failure(exc: BaseException) -> DiagnosticError:
    """Turn a udsoncan / ISO-TP exception into a :class:`DiagnosticError` with a clear text."""
    if isinstance(exc, DiagnosticError):
        return exc
    if isinstance(exc, NegativeResponseException):
        code = exc.response.code or 0
        return DiagnosticError(f"negative response 0x{code:02X} ({nrc_name(code)})", nrc=code)
    if isinstance(exc, TimeoutException):
        return DiagnosticTimeout(f"no response: {exc}")
    if isinstance(exc, InvalidResponseException | UnexpectedResponseException):
        return DiagnosticError(f"invalid response: {exc}")
    return DiagnosticError(f"{type(exc).__name__}: {exc}")


class FunctionalRefused(DiagnosticError):
    """The target ECU answered a functional request with a negative response."""

    def __init__(self, ecu: str, sid: int, code: int) -> None:
        super().__init__(
            f"{ecu} answered the functional request 0x{sid:02X} with negative response "
            f"0x{code:02X} ({nrc_name(code)})",
            nrc=code,
        )
        self.sid = sid


class MatchedReplies(BaseConnection):
    """A connection that hands over only replies to the request it sent last.

    On a slow link a reply can arrive after its request timed out or was
    asked again; udsoncan empties the receive queue only before it sends, so
    it would take that reply for the next request's and fail it ("service ID
    different than the request"). A reply to another service, positive
    (``SID + 0x40``) or negative (``7F SID``), is dropped here instead, and
    the wait goes on for the rest of its time.
    """

    def __init__(self, inner: BaseConnection, name: str | None = None) -> None:
        super().__init__(name)
        self.inner = inner
        """The connection underneath, which hands over every frame."""
        self._service: int | None = None

    def open(self) -> MatchedReplies:
        """Open the connection underneath."""
        self.inner.open()
        return self

    def close(self) -> None:
        """Close the connection underneath."""
        self.inner.close()

    def is_open(self) -> bool:
        """Whether the connection underneath is open."""
        return self.inner.is_open()

    def empty_rxqueue(self) -> None:
        """Drop every frame received and not read yet."""
        self.inner.empty_rxqueue()

    def specific_send(self, payload: bytes, timeout: float | None = None) -> None:
        """Send ``payload``, and expect replies to its service from now on."""
        self._service = payload[0] if payload else None
        self.inner.send(payload, timeout)

    def specific_wait_frame(self, timeout: float | None = None) -> bytes | None:
        """Return the next reply to the last request's service (``TimeoutException`` if none)."""
        service = self._service
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            frame = self.inner.wait_frame(timeout=left, exception=True)
            if frame is None or service is None or replies_to(frame, service):
                return frame
            self.logger.debug("dropped a late reply to another request: %s", frame.hex())


def replies_to(frame: bytes, service: int) -> bool:
    """Whether ``frame`` is a reply (positive or negative) to a request of ``service``."""
    if not frame:
        return False
    if frame[0] == 0x7F:
        return len(frame) > 1 and frame[1] == service
    return frame[0] == (service + 0x40) & 0xFF


class _NoReception:
    """rxfn of a send-only ISO-TP layer: functional requests get no reply on their own id."""

    def __call__(self, timeout: float) -> None:
        time.sleep(timeout)


class DiagChannel:
    """udsoncan clients to one ECU: ``client`` (physical) and :meth:`functional` requests."""

    def __init__(
        self,
        bus: can.BusABC,
        notifier: can.Notifier,
        vehicle: VehicleSpec,
        ecu: EcuSpec,
        *,
        p2_timeout_s: float = 1.0,
        p2_star_timeout_s: float | None = None,
    ) -> None:
        self.vehicle = vehicle
        self.ecu = ecu
        self.bus = bus
        params = ecu.isotp.params(fd=vehicle.can.fd)
        # Without a blocking send, udsoncan would start P2 before a long request is even out.
        params["blocking_send"] = True
        mode = isotp.AddressingMode.Normal_11bits
        self._stack = isotp.NotifierBasedCanStack(
            bus,
            notifier,
            address=isotp.Address(mode, txid=ecu.request_id, rxid=ecu.response_id),
            params=params,
        )
        self._functional_stack = isotp.TransportLayer(
            rxfn=_NoReception(),
            txfn=self._send_frame,
            # can-isotp accepts an AsymmetricAddress here; its annotation says Address only.
            address=isotp.AsymmetricAddress(  # type: ignore[arg-type]
                tx_addr=isotp.Address(mode, txid=vehicle.functional_request_id, tx_only=True),
                rx_addr=isotp.Address(mode, rxid=ecu.response_id, rx_only=True),
            ),
            params=params,
        )
        secret = ecu.security_secret
        config = dict(udsoncan.configs.default_client_config)
        config.update(
            {
                "security_algo": lambda level, seed, params=None: security_key(secret, seed),
                "data_identifiers": DID_CODECS,
                "p2_timeout": p2_timeout_s,
                "p2_star_timeout": p2_star_timeout_s or ecu.timing.p2_star_ms / 1000 + 1.0,
                "use_server_timing": False,
                "request_timeout": None,
                "server_address_format": 32,
                "server_memorysize_format": 32,
            }
        )
        self._connection = MatchedReplies(
            PythonIsoTpConnection(self._stack, name=f"{ecu.name}-physical"),
            name=f"{ecu.name}-physical-matched",
        )
        self._functional_connection = PythonIsoTpConnection(
            self._functional_stack, name=f"{ecu.name}-functional"
        )
        client_config = cast(ClientConfig, config)
        self.client = Client(self._connection, config=client_config)
        self._functional_client = Client(self._functional_connection, config=client_config)
        self._functional_lock = threading.Lock()
        self._open = False

    def _send_frame(self, frame: isotp.CanMessage) -> None:
        self.bus.send(
            can.Message(
                arbitration_id=frame.arbitration_id,
                data=frame.data,
                is_extended_id=frame.is_extended_id,
                is_fd=frame.is_fd,
                bitrate_switch=frame.bitrate_switch,
            )
        )

    def open(self) -> DiagChannel:
        """Start the ISO-TP layers."""
        if not self._open:
            self.client.open()
            self._functional_client.open()
            self._open = True
        return self

    def close(self) -> None:
        """Stop the ISO-TP layers."""
        if self._open:
            self._open = False
            self._functional_client.close()
            self.client.close()

    def __enter__(self) -> DiagChannel:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def call(self, action: Callable[[Client], T]) -> T:
        """Run ``action(client)``; udsoncan and ISO-TP errors become :class:`DiagnosticError`."""
        try:
            return action(self.client)
        except DiagnosticError:
            raise
        except Exception as exc:
            raise describe_failure(exc) from exc

    def functional(self, *actions: Callable[[Client], Any], listen_s: float = 0.0) -> None:
        """Send requests to every ECU (functional address) with the positive reply suppressed.

        With ``listen_s``, wait that long after the last one for a negative response of the
        target ECU (on its physical response id) and raise it, as a :class:`FunctionalRefused`.
        Only the thread that owns the physical requests may listen, or it would take their
        replies.
        """
        with self._functional_lock:
            try:
                if listen_s > 0:
                    self._connection.empty_rxqueue()
                with self._functional_client.suppress_positive_response:
                    for action in actions:
                        action(self._functional_client)
            except Exception as exc:
                raise describe_failure(exc) from exc
        if listen_s <= 0:
            return
        deadline = time.monotonic() + listen_s
        while (left := deadline - time.monotonic()) > 0:
            # Underneath the matching: a refusal answers the functional
            # request, not the last physical one.
            reply = self._connection.inner.wait_frame(timeout=left, exception=False)
            if reply is not None and len(reply) >= 3 and reply[0] == 0x7F:
                raise FunctionalRefused(self.ecu.name, reply[1], reply[2])

    def raw(self, payload: bytes, timeout_s: float) -> bytes | None:
        """Send raw bytes physically; return the first reply, or ``None`` after ``timeout_s``."""
        self._connection.empty_rxqueue()
        self._connection.send(payload)
        frame: bytes | None = self._connection.wait_frame(timeout=timeout_s, exception=False)
        return frame

    @contextlib.contextmanager
    def timeouts(self, p2_timeout_s: float) -> Iterator[None]:
        """Temporarily use another P2 client timeout (e.g. to poll an ECU that is booting)."""
        previous = self.client.config["p2_timeout"]
        self.client.set_config("p2_timeout", p2_timeout_s)
        try:
            yield
        finally:
            self.client.set_config("p2_timeout", previous)
