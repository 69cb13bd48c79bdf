"""The ``hil.toml`` schema: pydantic models of benches, their bus, ECUs and instruments.

Everything a file can say is validated here, key by key, with unknown keys refused
(``extra="forbid"``). What needs the outside world (an environment variable, an
importable seed/key plugin, a driver's options) is checked later, when a bench is
resolved (:mod:`hil.bench.config`). ``docs/bench.md`` documents every key.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import can
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from hil.instruments import available_instruments
from ota_formats.errors import KeyFileError
from ota_formats.signing import public_key_from_hex
from ota_formats.vehicle import IsoTpSpec

SIM_BENCH = "sim"
"""The built-in bench: the simulated demo vehicle of ``hil bench sim run``."""

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
"""Bench, board and line names."""

_ENV_SECRET = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")
_PLUGIN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_BUS_KEYS = ("interface", "channel", "bitrate", "fd", "data_bitrate")

Addressing = Literal[
    "normal_11bits",
    "normal_29bits",
    "normal_fixed_29bits",
    "extended_11bits",
    "extended_29bits",
    "mixed_11bits",
    "mixed_29bits",
]
"""can-isotp's addressing modes, lower case (``isotp.AddressingMode.Normal_11bits``...)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(value: str, what: str) -> str:
    if not NAME_PATTERN.match(value):
        raise ValueError(
            f"{what} {value!r}: a name is a letter then up to 31 letters, digits, '_' or '-'"
        )
    return value


class BusSpec(_Model):
    """The CAN bus of a bench: python-can's own settings.

    Without ``interface``, python-can's configuration applies (its config files and
    ``CAN_*`` environment variables); ``context`` picks a section of those
    (``can.Bus(config_context=...)``) and ``config_file`` another file to read.
    ``options`` are passed to ``can.Bus`` as they are (e.g. ``receive_own_messages``);
    ``config_file`` is relative to the ``hil.toml`` that names it.
    """

    interface: str | None = None
    channel: str | int | None = None
    bitrate: int | None = Field(default=None, gt=0)
    fd: bool | None = None
    data_bitrate: int | None = Field(default=None, gt=0)
    context: str | None = Field(default=None, min_length=1)
    config_file: str | None = Field(default=None, min_length=1)
    thread_safe: bool = False
    """Open a ``can.ThreadSafeBus``: for interfaces that must not be sent on from several
    threads at once (the flasher's TesterPresent thread shares the bus with its requests)."""
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("interface")
    @classmethod
    def _check_interface(cls, value: str | None) -> str | None:
        if value is not None and value not in can.interfaces.VALID_INTERFACES:
            raise ValueError(f"unknown python-can interface {value!r}")
        return value

    @field_validator("options")
    @classmethod
    def _check_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = {*_BUS_KEYS, "context", "config_context", "bustype", "thread_safe"}
        clash = sorted(set(value) & reserved)
        if clash:
            raise ValueError(f"give {', '.join(clash)} as a key of the bus, not in options")
        return value

    @model_validator(mode="after")
    def _check(self) -> BusSpec:
        if self.data_bitrate is not None and self.fd is False:
            raise ValueError("data_bitrate is the CAN FD data phase rate: it needs fd = true")
        return self

    def kwargs(self) -> dict[str, Any]:
        """Return the keyword arguments given for ``can.Bus`` (without the context)."""
        given = {key: getattr(self, key) for key in _BUS_KEYS if getattr(self, key) is not None}
        return {**given, **self.options}


class SecuritySpec(_Model):
    """How the tester computes SecurityAccess keys for one ECU: exactly one of two ways.

    - ``secret``: the demo contract's algorithm, key = HMAC-SHA256(secret, seed)[:4];
      hexadecimal, or ``env:VARNAME`` to read the hexadecimal from the environment.
    - ``plugin``: ``"module:function"``, called as udsoncan calls its
      ``security_algo``: with those of ``level``, ``seed`` and ``params`` it names
      (by name), returning the key bytes; ``params`` come from this table.
    """

    secret: str | None = None
    plugin: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, value: str | None) -> str | None:
        if value is None or _ENV_SECRET.match(value):
            return value
        if value.startswith("env:"):
            raise ValueError("env: is followed by an environment variable name")
        try:
            raw = bytes.fromhex(value.replace(" ", ""))
        except ValueError:
            raise ValueError("a secret is hexadecimal, or env:VARNAME") from None
        if not raw:
            raise ValueError("the secret is empty")
        return value

    @field_validator("plugin")
    @classmethod
    def _check_plugin(cls, value: str | None) -> str | None:
        if value is not None and not _PLUGIN.match(value):
            raise ValueError("a seed/key plugin is named 'module:function'")
        return value

    @model_validator(mode="after")
    def _check(self) -> SecuritySpec:
        if (self.secret is None) == (self.plugin is None):
            raise ValueError("give either secret or plugin")
        if self.params and self.plugin is None:
            raise ValueError("params go to a plugin; the secret algorithm takes none")
        return self

    @property
    def env_var(self) -> str | None:
        """Return the environment variable the secret comes from, if it does."""
        match = _ENV_SECRET.match(self.secret or "")
        return match.group(1) if match else None


class UdsClientSpec(_Model):
    """udsoncan client timing of one ECU (its ``p2_timeout`` and friends), in seconds."""

    p2_timeout_s: float = Field(default=1.0, gt=0)
    p2_star_timeout_s: float | None = Field(default=None, gt=0)
    """Default: the ECU's P2* from its vehicle file plus 1 s, else 6 s."""
    request_timeout_s: float | None = Field(default=None, gt=0)
    """Overall limit of one request, pending replies included; none by default."""
    use_server_timing: bool = False
    """Take P2 and P2* from the ECU's session reply instead."""


class BenchEcuSpec(_Model):
    """One ECU of a bench. Keys not given come from the bench's vehicle file, if it has the ECU.

    Addresses by ``addressing`` (can-isotp's modes): ``normal_*`` and ``mixed_*`` use
    ``request_id``/``response_id``; ``extended_*`` add ``target_address`` and
    ``source_address``; ``normal_fixed_29bits`` uses only the two addresses;
    ``mixed_*`` adds ``address_extension``.
    """

    request_id: int | None = Field(default=None, ge=0, le=0x1FFFFFFF)
    response_id: int | None = Field(default=None, ge=0, le=0x1FFFFFFF)
    functional_id: int | None = Field(default=None, ge=0, le=0x1FFFFFFF)
    addressing: Addressing | None = None
    target_address: int | None = Field(default=None, ge=0, le=0xFF)
    source_address: int | None = Field(default=None, ge=0, le=0xFF)
    address_extension: int | None = Field(default=None, ge=0, le=0xFF)
    isotp: IsoTpSpec | None = None
    uds: UdsClientSpec | None = None
    security: SecuritySpec | None = None


class PowerSpec(_Model):
    """The bench's power supply (terminal 30): driver, port and the voltages to use.

    ``volts``/``amps`` are what ``power on`` sets; ``min_volts``/``max_volts`` the
    window a flash needs (measured at the supply's output).
    """

    kind: str
    port: str = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)
    volts: float | None = Field(default=None, ge=0)
    amps: float | None = Field(default=None, ge=0)
    min_volts: float | None = Field(default=None, ge=0)
    max_volts: float | None = Field(default=None, ge=0)

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, value: str) -> str:
        known = available_instruments()
        if value not in known:
            raise ValueError(f"unknown instrument kind {value!r}; known kinds: {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _check(self) -> PowerSpec:
        low, high = self.min_volts, self.max_volts
        if low is not None and high is not None and low >= high:
            raise ValueError(f"min_volts {low:g} is not below max_volts {high:g}")
        if self.volts is not None and (
            (low is not None and self.volts < low) or (high is not None and self.volts > high)
        ):
            raise ValueError(
                f"volts {self.volts:g} is outside the flashing window "
                f"{_window_text(low, high)}: power on would leave the bench unfit to flash"
            )
        return self

    @property
    def window_text(self) -> str:
        """Return the flashing window in words, e.g. ``11.50..14.50 V``."""
        return _window_text(self.min_volts, self.max_volts)


def _window_text(low: float | None, high: float | None) -> str:
    if low is None and high is None:
        return "any voltage"
    if high is None:
        return f"at least {low:.2f} V"
    if low is None:
        return f"at most {high:.2f} V"
    return f"{low:.2f}..{high:.2f} V"


class BoardSpec(_Model):
    """A relay board: driver kind, port and driver options."""

    kind: str
    port: str = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, value: str) -> str:
        known = available_instruments()
        if value not in known:
            raise ValueError(f"unknown instrument kind {value!r}; known kinds: {', '.join(known)}")
        return value


class LineSpec(_Model):
    """A named switched line: a relay channel (as printed on the board) of one board."""

    board: str
    channel: int = Field(ge=0)


class RelaysSpec(_Model):
    """Relay boards by name, and the named lines they switch (``ignition`` is terminal 15)."""

    boards: dict[str, BoardSpec] = Field(default_factory=dict)
    lines: dict[str, LineSpec] = Field(default_factory=dict)


def _check_anchor(text: str) -> str:
    try:
        public_key_from_hex(text)
    except KeyFileError as exc:
        raise ValueError(str(exc)) from exc
    return text


TrustAnchor = Annotated[str, AfterValidator(_check_anchor)]
"""A raw Ed25519 public key in hexadecimal."""


class BenchSpec(_Model):
    """One bench: its bus, its ECUs (from a vehicle file and/or listed), its instruments."""

    description: str = ""
    vehicle: str | None = Field(default=None, min_length=1)
    """A vehicle file (relative to this file), or ``"demo"`` for the bundled demo vehicle."""
    trust_anchors: tuple[TrustAnchor, ...] | None = None
    """Ed25519 public keys (hex) images must be signed with; default: the vehicle file's."""
    bus: BusSpec = Field(default_factory=BusSpec)
    ecus: dict[str, BenchEcuSpec] = Field(default_factory=dict)
    power: PowerSpec | None = None
    relays: RelaysSpec = Field(default_factory=RelaysSpec)


class HilFileSpec(_Model):
    """A whole ``hil.toml``."""

    default_bench: str | None = None
    """The bench used when neither ``--bench`` nor ``HIL_BENCH`` names one."""
    benches: dict[str, BenchSpec] = Field(default_factory=dict)
