"""A resolved bench and a connection to it: bus, UDS clients, power supply, relay lines.

:class:`Bench` is the configuration of one bench, resolved and checked (nothing is
opened). :meth:`Bench.connect` returns a :class:`BenchConnection`, which opens what
is asked of it on first use and closes everything at the end::

    from hil.bench import resolve_bench

    bench = resolve_bench()            # --bench/HIL_BENCH/hil.toml's default, else "sim"
    with bench.connect() as rig:
        rig.power.on()
        rig.ignition.on()
        client = rig.uds("bms")        # an open udsoncan client
        client.change_session(3)

The same code runs against a real bench and against the ``sim`` bench, whose
instruments are simulated ones on loopback ports (:mod:`hil.bench.sim`).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

import can
import isotp
import udsoncan
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from isotp.address import Address
from udsoncan.client import Client
from udsoncan.connections import PythonIsoTpConnection
from udsoncan.typing import ClientConfig

from gateway import DiagChannel
from gateway.diag import DID_CODECS
from hil.bench.errors import (
    BenchConfigError,
    BenchError,
    BenchFailure,
    BenchNotRunningError,
    BenchPartMissing,
    ConfigIssue,
    SupplyVoltageError,
)
from hil.bench.schema import BusSpec, PowerSpec, RelaysSpec, UdsClientSpec
from hil.bench.tomlpos import TomlPath
from hil.errors import BusError
from hil.instruments import PowerSupply, RelayBoard, open_power_supply, open_relay_board
from ota_formats.signing import public_key_from_hex
from ota_formats.uds import security_key
from ota_formats.vehicle import IsoTpSpec, VehicleSpec

IGNITION = "ignition"
"""The relay line that switches terminal 15."""

ADDRESSING_MODES: Mapping[str, isotp.AddressingMode] = {
    "normal_11bits": isotp.AddressingMode.Normal_11bits,
    "normal_29bits": isotp.AddressingMode.Normal_29bits,
    "normal_fixed_29bits": isotp.AddressingMode.NormalFixed_29bits,
    "extended_11bits": isotp.AddressingMode.Extended_11bits,
    "extended_29bits": isotp.AddressingMode.Extended_29bits,
    "mixed_11bits": isotp.AddressingMode.Mixed_11bits,
    "mixed_29bits": isotp.AddressingMode.Mixed_29bits,
}

Locator = Callable[[TomlPath, str], ConfigIssue]
"""Turns a key path and a message into an issue naming the file and line."""


class BenchBusError(BenchFailure, BusError):
    """The bench's CAN bus could not be opened."""


def _no_locator(path: TomlPath, message: str) -> ConfigIssue:
    return ConfigIssue(None, None, ".".join(str(part) for part in path), message)


# ---------------------------------------------------------------------------- ECUs


def _hmac_key(secret: bytes, level: int, seed: bytes, params: Any = None) -> bytes:
    return security_key(secret, seed)


@dataclass(frozen=True)
class SeedKey:
    """A SecurityAccess algorithm in udsoncan's form: ``algorithm(level=, seed=, params=)``.

    udsoncan calls it with those of ``level``, ``seed`` and ``params`` that it names.
    """

    algorithm: Callable[..., bytes]
    params: Mapping[str, Any] | None
    description: str
    """Where it comes from, without the secret: ``HMAC-SHA256, secret from env:BMS_KEY``."""

    @classmethod
    def hmac(cls, secret: bytes, description: str) -> SeedKey:
        """Return the demo contract's algorithm: key = HMAC-SHA256(secret, seed)[:4]."""
        return cls(functools.partial(_hmac_key, secret), None, description)

    def key(self, level: int, seed: bytes) -> bytes:
        """Compute the key for ``seed`` at security ``level``, passing what udsoncan passes."""
        given = {"level": level, "seed": seed, "params": self.params}
        names = algorithm_parameters(self.algorithm)
        if names is not None:
            given = {name: value for name, value in given.items() if name in names}
        return bytes(self.algorithm(**given))


def algorithm_parameters(function: Callable[..., Any]) -> set[str] | None:
    """Return which of ``level``, ``seed``, ``params`` a seed/key function takes by name.

    udsoncan passes exactly those (by name); ``None`` means all three (a function
    with ``**kwargs``, or one whose signature cannot be read).
    """
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters} & {"level", "seed", "params"}


def _no_seed_key(ecu: str) -> Callable[..., bytes]:
    def refuse(level: int, seed: bytes, params: Any = None) -> bytes:
        raise BenchError(
            f"ECU {ecu} has no security configured: give its security.secret or security.plugin"
        )

    return refuse


@dataclass(frozen=True)
class BenchEcu:
    """One ECU of a bench, resolved: addresses, ISO-TP and UDS client settings, seed/key."""

    name: str
    addressing: str
    """One of :data:`ADDRESSING_MODES`."""
    request_id: int | None
    response_id: int | None
    functional_id: int | None
    target_address: int | None
    source_address: int | None
    address_extension: int | None
    isotp: IsoTpSpec
    uds: UdsClientSpec
    """``p2_star_timeout_s`` is always set here."""
    seed_key: SeedKey | None
    fd: bool
    """ISO-TP over CAN FD frames."""
    flash_vehicle: VehicleSpec | None = field(default=None, repr=False)
    """A one-ECU vehicle description for :class:`gateway.DiagChannel` and the flasher;
    ``None`` where the flasher cannot reach the ECU (it speaks 11-bit normal addressing)."""

    def address(self) -> Address:
        """Return the physical ISO-TP address, from the tester's side."""
        mode = ADDRESSING_MODES[self.addressing]
        if self.addressing == "normal_fixed_29bits":
            return isotp.Address(
                mode, target_address=self.target_address, source_address=self.source_address
            )
        if self.addressing.startswith("extended"):
            return isotp.Address(
                mode,
                txid=self.request_id,
                rxid=self.response_id,
                target_address=self.target_address,
                source_address=self.source_address,
            )
        if self.addressing.startswith("mixed"):
            return isotp.Address(
                mode,
                txid=self.request_id,
                rxid=self.response_id,
                address_extension=self.address_extension,
            )
        return isotp.Address(mode, txid=self.request_id, rxid=self.response_id)

    def isotp_params(self) -> dict[str, Any]:
        """can-isotp parameters of the tester's stack (blocking sends, as udsoncan needs)."""
        params = self.isotp.params(fd=self.fd)
        # Without a blocking send, udsoncan would start P2 before a long request is even out.
        params["blocking_send"] = True
        return params

    def client_config(self) -> ClientConfig:
        """Return the udsoncan client configuration: timing, seed/key, DID codecs."""
        config = dict(udsoncan.configs.default_client_config)
        config.update(
            {
                "security_algo": self.seed_key.algorithm
                if self.seed_key
                else _no_seed_key(self.name),
                "security_algo_params": self.seed_key.params if self.seed_key else None,
                "data_identifiers": dict(DID_CODECS),
                "p2_timeout": self.uds.p2_timeout_s,
                "p2_star_timeout": self.uds.p2_star_timeout_s,
                "request_timeout": self.uds.request_timeout_s,
                "use_server_timing": self.uds.use_server_timing,
                "server_address_format": 32,
                "server_memorysize_format": 32,
            }
        )
        return cast(ClientConfig, config)

    @property
    def flashable(self) -> bool:
        """Whether ``hil flash`` (the gateway's flasher) can reach this ECU."""
        return self.flash_vehicle is not None

    def describe(self) -> dict[str, Any]:
        """Return the resolved settings, for people (no secrets)."""
        ids: dict[str, Any] = {"addressing": self.addressing}
        for key in (
            "request_id",
            "response_id",
            "functional_id",
            "target_address",
            "source_address",
            "address_extension",
        ):
            value = getattr(self, key)
            if value is not None:
                ids[key] = f"0x{value:X}"
        return {
            **ids,
            "can_fd": self.fd,
            "isotp": self.isotp.model_dump(),
            "uds": self.uds.model_dump(),
            "security": self.seed_key.description if self.seed_key else "none",
        }


# ---------------------------------------------------------------------------- instruments


@dataclass(frozen=True)
class PowerReading:
    """What a supply says about its output."""

    volts: float
    """Measured at the output."""
    amps: float
    """Measured at the output."""
    output_on: bool
    set_volts: float
    limit_amps: float

    def __str__(self) -> str:
        state = "on" if self.output_on else "off"
        return (
            f"output {state}, {self.volts:.2f} V {self.amps:.3f} A measured "
            f"(set {self.set_volts:.2f} V, limit {self.limit_amps:.3f} A)"
        )


class PowerControl:
    """A bench's power supply with the bench's nominal values and flashing window."""

    def __init__(
        self,
        supply: PowerSupply,
        spec: PowerSpec,
        bench: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.supply = supply
        """The driver, for anything this class does not cover."""
        self.spec = spec
        self.bench = bench
        self._sleep = sleep

    def on(self) -> None:
        """Set the nominal voltage and current limit (where configured); switch the output on."""
        self.set(self.spec.volts, self.spec.amps)
        self.supply.output(True)

    def off(self) -> None:
        """Switch the output off."""
        self.supply.output(False)

    def cycle(self, off_s: float = 1.0, on_s: float = 0.0) -> None:
        """Off, wait ``off_s``, on, wait ``on_s`` (e.g. the ECUs' boot time)."""
        self.off()
        self._sleep(off_s)
        self.on()
        if on_s > 0:
            self._sleep(on_s)

    def set(self, volts: float | None = None, amps: float | None = None) -> None:
        """Change the voltage set point and/or the current limit."""
        if amps is not None:
            self.supply.set_current_limit(amps)
        if volts is not None:
            self.supply.set_voltage(volts)

    def read(self) -> PowerReading:
        """Measure the output and read the set points back."""
        return PowerReading(
            volts=self.supply.measure_voltage(),
            amps=self.supply.measure_current(),
            output_on=self.supply.is_on(),
            set_volts=self.supply.voltage_setpoint(),
            limit_amps=self.supply.current_limit(),
        )

    def check_flash_window(self) -> PowerReading:
        """Measure the output; raise :class:`SupplyVoltageError` outside the flashing window."""
        reading = self.read()
        low, high = self.spec.min_volts, self.spec.max_volts
        problem = None
        if not reading.output_on:
            problem = "output off"
        elif low is not None and reading.volts < low:
            problem = "undervoltage"
        elif high is not None and reading.volts > high:
            problem = "overvoltage"
        if problem is not None:
            raise SupplyVoltageError(
                f"bench {self.bench}: {problem}: the supply measures {reading.volts:.2f} V "
                f"(output {'on' if reading.output_on else 'off'}), the flashing window is "
                f"{self.spec.window_text}",
                problem=problem,
                measured_v=reading.volts,
                min_v=low,
                max_v=high,
            )
        return reading


class RelayLine:
    """A named line of the bench, switched by one relay channel."""

    def __init__(self, name: str, board_name: str, board: RelayBoard, channel: int) -> None:
        self.name = name
        self.board_name = board_name
        self.board = board
        self.channel = channel
        self._last: bool | None = None

    def set(self, on: bool) -> None:
        """Switch the line on (relay energised) or off."""
        self.board.set(self.channel, on)
        self._last = bool(on)

    def on(self) -> None:
        """Switch the line on."""
        self.set(True)

    def off(self) -> None:
        """Switch the line off."""
        self.set(False)

    @property
    def reports_state(self) -> bool:
        """Whether the board can say what state its relays are in."""
        return self.board.reports_state

    def state(self) -> bool | None:
        """Return the state the board reports; else the one last set here; else ``None``."""
        if self.board.reports_state:
            return self.board.get(self.channel)
        return self._last

    def __repr__(self) -> str:
        return f"RelayLine({self.name!r}, {self.board_name!r}, channel={self.channel})"


# ---------------------------------------------------------------------------- the bench


@dataclass(frozen=True)
class Bench:
    """One bench, resolved from the configuration: what it has and how to reach it."""

    name: str
    source: str
    """Where it is defined: ``built-in`` or ``hil.toml:12``."""
    description: str
    simulated: bool
    """The ``sim`` bench: no confirmation is asked before flashing."""
    bus: BusSpec
    ecus: Mapping[str, BenchEcu]
    vehicle: VehicleSpec | None
    """The vehicle file the bench takes ECUs from, if any (without the bench's overrides)."""
    trust_anchors: tuple[str, ...] | None
    """Ed25519 keys (hex) images must be signed with: the bench's own, else the vehicle's."""
    power: PowerSpec | None
    relays: RelaysSpec
    base_dir: Path | None = None
    """The directory of the file that defines the bench (relative paths start there)."""
    unavailable: str | None = None
    """Why the bench cannot be reached now (the ``sim`` bench when it is not running)."""
    path: TomlPath = ()
    locate: Locator = field(default=_no_locator, repr=False, compare=False)

    # -- what it has --------------------------------------------------------------------

    def ecu(self, name: str) -> BenchEcu:
        """Return the ECU called ``name``."""
        try:
            return self.ecus[name]
        except KeyError:
            known = ", ".join(self.ecus) or "none"
            raise BenchPartMissing(
                f"bench {self.name} has no ECU {name!r} (it has: {known})"
            ) from None

    @property
    def line_names(self) -> list[str]:
        """The names of the relay lines."""
        return list(self.relays.lines)

    def trust_anchor_keys(self) -> list[Ed25519PublicKey] | None:
        """Return the keys images must verify against; ``None`` if the bench names none."""
        if self.trust_anchors is None:
            return None
        return [public_key_from_hex(text) for text in self.trust_anchors]

    def require_available(self) -> None:
        """Raise :class:`BenchNotRunningError` if the bench cannot be reached now."""
        if self.unavailable is not None:
            raise BenchNotRunningError(self.unavailable)

    # -- opening parts ------------------------------------------------------------------

    def bus_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``can.Bus``, after python-can's own configuration."""
        kwargs = self.bus.kwargs()
        if self.bus.config_file is not None:
            path = Path(self.bus.config_file)
            if self.base_dir is not None and not path.is_absolute():
                path = self.base_dir / path
            if not path.is_file():
                raise BenchConfigError(
                    self.locate((*self.path, "bus", "config_file"), f"no such file: {path}")
                )
            loaded = can.util.load_config(path=path, config=kwargs, context=self.bus.context)
            return dict(loaded)
        if self.bus.context is not None:
            kwargs["config_context"] = self.bus.context
        return kwargs

    def resolved_bus_config(self) -> dict[str, Any]:
        """Return the bus configuration as python-can resolves it, without opening it."""
        kwargs = self.bus_kwargs()
        context = kwargs.pop("config_context", None)
        return dict(can.util.load_config(config=kwargs, context=context))

    def open_bus(self) -> can.BusABC:
        """Open the bench's CAN bus (the caller shuts it down)."""
        self.require_available()
        kwargs = self.bus_kwargs()
        bus_class: Any = can.ThreadSafeBus if self.bus.thread_safe else can.Bus
        try:
            bus: can.BusABC = bus_class(**kwargs)
        except (can.CanError, ValueError, TypeError, OSError, ImportError) as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "python-can defaults"
            raise BenchBusError(
                f"bench {self.name}: cannot open the CAN bus ({shown}): {exc}"
            ) from exc
        return bus

    def open_power_supply(self) -> PowerSupply:
        """Open the bench's power supply driver (the caller closes it)."""
        self.require_available()
        if self.power is None:
            raise BenchPartMissing(f"bench {self.name} has no power supply")
        return open_power_supply(self.power.kind, self.power.port, **self.power.options)

    def open_relay_board(self, name: str) -> RelayBoard:
        """Open the relay board called ``name`` (the caller closes it)."""
        self.require_available()
        board = self.relays.boards.get(name)
        if board is None:
            known = ", ".join(self.relays.boards) or "none"
            raise BenchPartMissing(f"bench {self.name} has no relay board {name!r} ({known})")
        return open_relay_board(board.kind, board.port, **board.options)

    def connect(self) -> BenchConnection:
        """Return a connection that opens the bench's parts on first use (use ``with``)."""
        return BenchConnection(self)

    def describe(self) -> dict[str, Any]:
        """Return the resolved configuration, for people and ``--json`` (no secrets)."""
        bus: dict[str, Any] = {
            key: value for key, value in self.bus.model_dump().items() if value not in (None, {})
        }
        if not self.bus.thread_safe:
            bus.pop("thread_safe", None)
        try:
            resolved = self.resolved_bus_config()
            bus["python-can"] = {k: v for k, v in resolved.items() if v is not None}
        except (can.CanError, ValueError, TypeError, BenchError) as exc:
            bus["python-can"] = f"unresolved: {str(exc).splitlines()[0]}"
        described: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "description": self.description,
            "simulated": self.simulated,
        }
        if self.simulated or self.unavailable:
            described["status"] = self.unavailable or "running"
        described["vehicle"] = str(self.vehicle.source) if self.vehicle is not None else None
        described["bus"] = bus
        described["ecus"] = {name: ecu.describe() for name, ecu in self.ecus.items()}
        described["power"] = self.power.model_dump() if self.power is not None else None
        described["relays"] = self.relays.model_dump()
        return described


class BenchConnection:
    """The opened parts of a bench: each opened on first use, all closed by :meth:`close`.

    Instruments on serial ports serve one client at a time, as the ports themselves do:
    while a connection holds the power supply, another process cannot use it.
    """

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self._bus: can.BusABC | None = None
        self._notifier: can.Notifier | None = None
        self._clients: dict[str, Client] = {}
        self._channels: dict[str, DiagChannel] = {}
        self._power: PowerControl | None = None
        self._boards: dict[str, RelayBoard] = {}
        self._lines: dict[str, RelayLine] = {}
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BenchError(f"the connection to bench {self.bench.name} is closed")

    # -- bus and diagnostics ------------------------------------------------------------

    @property
    def bus(self) -> can.BusABC:
        """The bench's CAN bus."""
        self._check_open()
        if self._bus is None:
            self._bus = self.bench.open_bus()
        return self._bus

    @property
    def notifier(self) -> can.Notifier:
        """The one notifier of the bus (ISO-TP stacks listen through it)."""
        self._check_open()
        if self._notifier is None:
            self._notifier = can.Notifier(self.bus, [], timeout=0.1)
        return self._notifier

    def uds(self, ecu: str) -> Client:
        """Return an open udsoncan client to ``ecu``, configured from the bench (one per ECU)."""
        client = self._clients.get(ecu)
        if client is None:
            spec = self.bench.ecu(ecu)
            stack = isotp.NotifierBasedCanStack(
                self.bus, self.notifier, address=spec.address(), params=spec.isotp_params()
            )
            connection = PythonIsoTpConnection(stack, name=f"{self.bench.name}-{ecu}")
            client = Client(connection, config=spec.client_config())
            client.open()
            self._clients[ecu] = client
        return client

    def diag(self, ecu: str) -> DiagChannel:
        """Return an open :class:`gateway.DiagChannel` to ``ecu``, for the flasher."""
        channel = self._channels.get(ecu)
        if channel is None:
            spec = self.bench.ecu(ecu)
            if spec.flash_vehicle is None:
                raise BenchError(
                    f"ECU {ecu} of bench {self.bench.name} uses {spec.addressing} addressing; "
                    "the flasher (gateway.DiagChannel) speaks normal_11bits only"
                )
            vehicle = spec.flash_vehicle
            channel = DiagChannel(
                self.bus,
                self.notifier,
                vehicle,
                vehicle.ecu(ecu),
                p2_timeout_s=spec.uds.p2_timeout_s,
                p2_star_timeout_s=spec.uds.p2_star_timeout_s,
            )
            config = spec.client_config()
            for key in ("security_algo", "security_algo_params", "request_timeout"):
                channel.client.set_config(key, config[key])
            channel.open()
            self._channels[ecu] = channel
        return channel

    # -- instruments --------------------------------------------------------------------

    @property
    def power(self) -> PowerControl:
        """The power supply, with the bench's nominal values and flashing window."""
        self._check_open()
        if self._power is None:
            supply = self.bench.open_power_supply()
            assert self.bench.power is not None
            self._power = PowerControl(supply, self.bench.power, self.bench.name)
        return self._power

    @property
    def has_power(self) -> bool:
        """Whether the bench has a power supply."""
        return self.bench.power is not None

    def board(self, name: str) -> RelayBoard:
        """Return the relay board called ``name`` (shared by all its lines)."""
        self._check_open()
        board = self._boards.get(name)
        if board is None:
            board = self.bench.open_relay_board(name)
            self._boards[name] = board
        return board

    def line(self, name: str) -> RelayLine:
        """Return the relay line called ``name``."""
        line = self._lines.get(name)
        if line is None:
            spec = self.bench.relays.lines.get(name)
            if spec is None:
                known = ", ".join(self.bench.relays.lines) or "none"
                raise BenchPartMissing(
                    f"bench {self.bench.name} has no relay line {name!r} (it has: {known})"
                )
            board = self.board(spec.board)
            numbers = board.channel_numbers
            if spec.channel not in numbers:
                raise BenchConfigError(
                    self.bench.locate(
                        (*self.bench.path, "relays", "lines", name, "channel"),
                        f"board {spec.board} ({board.kind}, {board.channels} channels) has "
                        f"channels {numbers.start}..{numbers.stop - 1}, not {spec.channel}",
                    )
                )
            line = RelayLine(name, spec.board, board, spec.channel)
            self._lines[name] = line
        return line

    @property
    def ignition(self) -> RelayLine:
        """The ``ignition`` line (terminal 15)."""
        return self.line(IGNITION)

    def lines(self) -> Iterator[RelayLine]:
        """Every relay line of the bench."""
        for name in self.bench.relays.lines:
            yield self.line(name)

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Close every client, the bus and the instruments (their outputs stay as they are)."""
        if self._closed:
            return
        self._closed = True
        closers: list[Callable[[], object]] = [
            *(client.close for client in self._clients.values()),
            *(channel.close for channel in self._channels.values()),
        ]
        if self._notifier is not None:
            closers.append(self._notifier.stop)
        if self._bus is not None:
            closers.append(self._bus.shutdown)
        if self._power is not None:
            closers.append(self._power.supply.close)
        closers += [board.close for board in self._boards.values()]
        failure: BaseException | None = None
        for close in closers:
            try:
                close()
            except Exception as exc:  # close the rest, then report the first failure
                failure = failure or exc
        if failure is not None:
            raise failure
