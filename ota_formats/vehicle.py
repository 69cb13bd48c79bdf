"""The vehicle description file (TOML): ECUs, addresses, ISO-TP and UDS timing, secrets.

Both sides read it: the simulator builds its ECUs from it, and a tester (the
flasher, the gateway, a bench) takes addresses, transport parameters and
security secrets from it. ``docs/vehicle-file.md`` documents every key.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from ota_formats.errors import KeyFileError, VehicleFileError
from ota_formats.signing import public_key_from_hex

_VIN = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")


def is_valid_ecu_name(text: str) -> bool:
    """Whether ``text`` is a well-formed ECU name: 1-16 of a-z, 0-9, _ and -, from a letter."""
    return bool(_NAME.match(text))


def is_valid_vin(text: str) -> bool:
    """Whether ``text`` is a well-formed VIN: 17 characters of 0-9 and A-Z without I, O, Q."""
    return bool(_VIN.match(text))


_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,15}$")
_FD_LENGTHS = (8, 12, 16, 20, 24, 32, 48, 64)


def _hex_bytes(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return bytes.fromhex(value.replace(" ", ""))
        except ValueError as exc:
            raise ValueError("must be a hexadecimal string") from exc
    return value


HexBytes = Annotated[bytes, BeforeValidator(_hex_bytes)]


def _ascii_field(value: str, size: int, what: str) -> str:
    if not value or len(value) > size or not value.isascii() or not value.isprintable():
        raise ValueError(f"{what} must be 1 to {size} printable ASCII characters")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IsoTpSpec(_Model):
    """ISO-TP (ISO 15765-2) parameters of one ECU's diagnostic channel."""

    tx_padding: int | None = Field(default=0xCC, ge=0, le=0xFF)
    stmin_ms: int = Field(default=0, ge=0, le=127)
    blocksize: int = Field(default=8, ge=0, le=255)
    tx_data_length: int | None = None
    max_frame_size: int = Field(default=4095, ge=8, le=0xFFFFFFFF)
    rx_flowcontrol_timeout_ms: int = Field(default=1000, ge=1)
    rx_consecutive_frame_timeout_ms: int = Field(default=1000, ge=1)

    @field_validator("tx_data_length")
    @classmethod
    def _check_length(cls, value: int | None) -> int | None:
        if value is not None and value not in _FD_LENGTHS:
            raise ValueError(f"must be one of {', '.join(map(str, _FD_LENGTHS))}")
        return value

    def params(self, *, fd: bool) -> dict[str, Any]:
        """Return the parameter dictionary for a can-isotp transport layer."""
        length = self.tx_data_length or (64 if fd else 8)
        return {
            "stmin": self.stmin_ms,
            "blocksize": self.blocksize,
            "tx_padding": self.tx_padding,
            "tx_data_length": length,
            "max_frame_size": self.max_frame_size,
            "can_fd": fd,
            "bitrate_switch": fd,
            "rx_flowcontrol_timeout": self.rx_flowcontrol_timeout_ms,
            "rx_consecutive_frame_timeout": self.rx_consecutive_frame_timeout_ms,
        }


class TimingSpec(_Model):
    """UDS server timing and bootloader behaviour of one ECU."""

    p2_ms: int = Field(default=50, ge=1, le=0xFFFF)
    p2_star_ms: int = Field(default=5000, ge=10, le=655350)
    s3_ms: int = Field(default=5000, ge=100)
    response_pending_interval_ms: int = Field(default=2000, ge=1)
    boot_time_ms: int = Field(default=50, ge=0)
    erase_time_ms: int = Field(default=150, ge=0)
    security_max_attempts: int = Field(default=3, ge=1, le=255)
    security_lockout_s: float = Field(default=10.0, ge=0)
    max_boot_attempts: int = Field(default=3, ge=1, le=255)

    @model_validator(mode="after")
    def _check(self) -> TimingSpec:
        if self.p2_star_ms % 10:
            raise ValueError("p2_star_ms must be a multiple of 10 (it is sent in 10 ms units)")
        if self.response_pending_interval_ms >= self.p2_star_ms:
            raise ValueError("response_pending_interval_ms must be shorter than p2_star_ms")
        return self


class DtcSpec(_Model):
    """A diagnostic trouble code the ECU supports (beyond the bootloader's own)."""

    code: int = Field(ge=0, le=0xFFFFFF)
    description: str = ""
    status: int = Field(default=0, ge=0, le=0xFF)


class EcuSpec(_Model):
    """One ECU of the vehicle."""

    name: str
    role: str = ""
    request_id: int = Field(ge=0, le=0x7FF)
    response_id: int = Field(ge=0, le=0x7FF)
    hardware_id: str
    part_number: str
    serial_number: str
    security_secret: HexBytes
    software_version: str = "1.0.0"
    anti_rollback_counter: int = Field(default=1, ge=0, le=0xFFFFFFFF)
    bank_size_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=0xFFFFFFFF)
    factory_image_bytes: int = Field(default=64 * 1024, ge=0)
    max_block_length: int | None = Field(default=None, ge=3, le=0xFFFF)
    min_programming_voltage_v: float = Field(default=11.0, ge=0)
    isotp: IsoTpSpec = IsoTpSpec()
    timing: TimingSpec = TimingSpec()
    dtcs: tuple[DtcSpec, ...] = ()

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be lower-case letters, digits, '-' or '_', at most 16")
        return value

    @field_validator("hardware_id", "software_version", "part_number", "serial_number")
    @classmethod
    def _check_ascii(cls, value: str) -> str:
        return _ascii_field(value, 16, "value")

    @field_validator("security_secret")
    @classmethod
    def _check_secret(cls, value: bytes) -> bytes:
        if len(value) < 16:
            raise ValueError("must be at least 16 bytes (32 hex digits)")
        return value

    @model_validator(mode="after")
    def _check(self) -> EcuSpec:
        if self.request_id == self.response_id:
            raise ValueError("request_id and response_id must differ")
        if self.factory_image_bytes > self.bank_size_bytes:
            raise ValueError("factory_image_bytes exceeds bank_size_bytes")
        return self

    def block_length(self) -> int:
        """Return maxNumberOfBlockLength announced in RequestDownload replies."""
        limit = min(self.isotp.max_frame_size, 0xFFFF)
        return min(self.max_block_length or limit, limit)


class CanSpec(_Model):
    """Physical layer of the diagnostic bus."""

    fd: bool = False
    bitrate_bps: int = Field(default=500_000, ge=10_000, le=1_000_000)
    data_bitrate_bps: int | None = Field(default=None, ge=500_000, le=12_000_000)


class SigningSpec(_Model):
    """Image signing trust anchors of the vehicle (raw Ed25519 public keys in hex)."""

    trust_anchors: tuple[str, ...] = Field(min_length=1)

    @field_validator("trust_anchors")
    @classmethod
    def _check_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for text in value:
            try:
                public_key_from_hex(text)
            except KeyFileError as exc:
                raise ValueError(str(exc)) from exc
        return value


class PreconditionSpec(_Model):
    """One condition on a live restbus signal that must hold while the gateway updates ECUs."""

    signal: str = Field(min_length=1)
    """The DBC signal, e.g. ``ECM_VehicleSpeed``."""
    label: str = ""
    """What to call it in reports; the signal name by default."""
    min: float | None = None
    max: float | None = None
    equals: float | str | None = None
    """A number, or a name of the signal's value table (e.g. ``"On"``)."""

    @model_validator(mode="after")
    def _check(self) -> PreconditionSpec:
        if self.min is None and self.max is None and self.equals is None:
            raise ValueError(f"precondition on {self.signal}: give min, max or equals")
        if self.equals is not None and (self.min is not None or self.max is not None):
            raise ValueError(f"precondition on {self.signal}: equals excludes min and max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"precondition on {self.signal}: min is above max")
        return self

    @property
    def name(self) -> str:
        """The label, or the signal name."""
        return self.label or self.signal


class UpdateSpec(_Model):
    """How the vehicle's gateway runs an update (the ``[update]`` table)."""

    preconditions: tuple[PreconditionSpec, ...] = Field(default=(), alias="precondition")
    signal_max_age_ms: int = Field(default=1000, ge=10)
    """A signal older than this does not count as holding its condition."""
    precondition_timeout_s: float = Field(default=3600.0, gt=0)
    """How long a deployment waits for its preconditions before it fails."""


class VehicleSpec(_Model):
    """A whole vehicle description."""

    name: str
    vin: str
    model: str = ""
    dbc: str | None = None
    functional_request_id: int = Field(default=0x7DF, ge=0, le=0x7FF)
    can: CanSpec = CanSpec()
    signing: SigningSpec
    ecus: tuple[EcuSpec, ...] = Field(alias="ecu", min_length=1)
    update: UpdateSpec = UpdateSpec()

    _source: Path | None = PrivateAttr(default=None)

    @field_validator("vin")
    @classmethod
    def _check_vin(cls, value: str) -> str:
        if not _VIN.match(value):
            raise ValueError("a VIN has 17 characters from 0-9 and A-Z without I, O and Q")
        return value

    @model_validator(mode="after")
    def _check(self) -> VehicleSpec:
        names = [e.name for e in self.ecus]
        if len(set(names)) != len(names):
            raise ValueError("ECU names must be unique")
        ids = [i for e in self.ecus for i in (e.request_id, e.response_id)]
        ids.append(self.functional_request_id)
        if len(set(ids)) != len(ids):
            raise ValueError("request, response and functional CAN ids must all differ")
        if not self.can.fd:
            for ecu in self.ecus:
                if ecu.isotp.tx_data_length not in (None, 8):
                    raise ValueError(f"ecu {ecu.name}: tx_data_length > 8 needs can.fd = true")
        return self

    @property
    def source(self) -> Path | None:
        """The file this description was read from, if any."""
        return self._source

    def ecu(self, name: str) -> EcuSpec:
        """Return the ECU called ``name``."""
        for ecu in self.ecus:
            if ecu.name == name:
                return ecu
        known = ", ".join(e.name for e in self.ecus)
        raise VehicleFileError(f"vehicle {self.name!r} has no ECU {name!r} (it has: {known})")

    def trust_anchor_keys(self) -> list[Ed25519PublicKey]:
        """Return the signing trust anchors as public keys."""
        return [public_key_from_hex(text) for text in self.signing.trust_anchors]

    def dbc_path(self) -> Path | None:
        """Return the DBC file, resolved relative to the vehicle file."""
        if self.dbc is None:
            return None
        path = Path(self.dbc)
        if not path.is_absolute() and self._source is not None:
            path = (self._source.parent / path).resolve()
        return path

    def with_overrides(self, **changes: Any) -> VehicleSpec:
        """Return a validated copy with top-level or nested changes.

        ``changes`` maps keys as in the file, e.g. ``can={"fd": True}`` or
        ``ecu_defaults={"timing": {"erase_time_ms": 0}}`` to change every ECU.
        """
        data = self.model_dump(by_alias=True)
        ecu_defaults = changes.pop("ecu_defaults", None)
        _merge(data, changes)
        if ecu_defaults:
            for ecu in data["ecu"]:
                _merge(ecu, copy.deepcopy(ecu_defaults))
        return parse_vehicle(data, source=self._source)


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _describe(error: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    parts: list[str] = []
    node: Any = data
    for item in error["loc"]:
        if isinstance(item, int):
            name = None
            if isinstance(node, list) and 0 <= item < len(node) and isinstance(node[item], dict):
                name = node[item].get("name")
            parts[-1:] = [f"{parts[-1]}[{name or item}]"] if parts else [f"[{item}]"]
            node = node[item] if isinstance(node, list) and 0 <= item < len(node) else None
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, Mapping) else None
    where = ".".join(parts) or "(top level)"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def parse_vehicle(data: Mapping[str, Any], *, source: Path | None = None) -> VehicleSpec:
    """Validate a vehicle description given as a mapping (e.g. parsed TOML).

    Vehicle-level ``isotp`` and ``timing`` tables are defaults for every ECU.
    """
    raw = copy.deepcopy(dict(data))
    defaults = {k: raw.pop(k) for k in ("isotp", "timing") if k in raw}
    if defaults and isinstance(raw.get("ecu"), list):
        for ecu in raw["ecu"]:
            if isinstance(ecu, dict):
                for key, table in defaults.items():
                    if isinstance(table, dict):
                        merged = copy.deepcopy(table)
                        _merge(merged, ecu.get(key, {}) if isinstance(ecu.get(key), dict) else {})
                        ecu[key] = merged
    where = str(source) if source else "vehicle description"
    try:
        spec = VehicleSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise VehicleFileError(f"{where}: {_describe(first, raw)}{more}") from exc
    spec._source = source
    return spec


def load_vehicle(path: str | Path) -> VehicleSpec:
    """Read and validate a vehicle file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise VehicleFileError(f"cannot read vehicle file {file}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise VehicleFileError(f"{file}: not UTF-8 text") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise VehicleFileError(f"{file}: invalid TOML: {exc}") from exc
    return parse_vehicle(data, source=file.resolve())
