"""How long a download and a flash take, from the diagnostic bus's parameters.

The modeled fleet needs a flash duration per ECU without sending a frame. It
is built from what decides it on a real bus: the bit rates, classic or FD
frames, the ISO-TP block size and STmin, the transfer block length, plus the
host's own cost per frame and per request and the ECU's erase and boot times.
The last ones are measured by ``hil scenario calibrate`` on a wire run and
stored in a TOML file, which the fleet scenarios take as ``bus_model``.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

_FD_LENGTHS = (8, 12, 16, 20, 24, 32, 48, 64)


class BusModel(BaseModel):
    """Timing model of a UDS flash over ISO-TP over CAN."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bitrate_bps: int = Field(default=500_000, ge=10_000, le=1_000_000)
    fd: bool = False
    data_bitrate_bps: int = Field(default=2_000_000, ge=500_000, le=12_000_000)
    frame_bytes: int = Field(default=8, description="CAN data length (8 classic; up to 64 FD)")
    block_size: int = Field(default=8, ge=0, le=255, description="ISO-TP BS (0: one FC only)")
    st_min_s: float = Field(default=0.0, ge=0.0, le=0.127)
    transfer_block_bytes: int = Field(default=4093, ge=1, le=0xFFFF)
    frame_overhead_s: float = Field(default=0.0, ge=0.0, description="host cost per frame")
    request_overhead_s: float = Field(default=0.002, ge=0.0, description="per UDS request")
    fixed_s: float = Field(default=0.3, ge=0.0, description="identify .. fingerprint, checks")
    erase_s: float = Field(default=0.15, ge=0.0)
    boot_s: float = Field(default=0.05, ge=0.0)
    source: str = Field(default="defaults", description="where the figures came from")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.frame_bytes not in _FD_LENGTHS or (not self.fd and self.frame_bytes != 8):
            raise ValueError("frame_bytes must be 8 for classic CAN, or an FD length for FD")
        return self

    # ----------------------------------------------------------------- frames
    def frame_time_s(self, data_bytes: int | None = None) -> float:
        """Return the time one data frame takes on the wire, plus the host's cost."""
        data = self.frame_bytes if data_bytes is None else data_bytes
        if not self.fd:
            # 11-bit data frame: 47 bits of framing plus data, with worst-case-ish stuffing.
            bits = (47 + 8 * data) * 1.2
            wire = bits / self.bitrate_bps
        else:
            # Arbitration at the nominal rate, data phase (with CRC) at the data rate.
            arbitration = 30 / self.bitrate_bps
            data_bits = (8 * data + 28) * 1.2
            wire = arbitration + data_bits / self.data_bitrate_bps
        return wire + self.frame_overhead_s

    def isotp_time_s(self, payload: int) -> float:
        """Return the time to send one ISO-TP message of ``payload`` bytes."""
        per_frame = self.frame_bytes - 1
        if payload <= per_frame:
            return self.frame_time_s()
        first = self.frame_bytes - 2
        consecutive = math.ceil(max(0, payload - first) / per_frame)
        flow_controls = 1 + (consecutive - 1) // self.block_size if self.block_size else 1
        frames = 1 + consecutive + flow_controls
        gaps = max(0, consecutive - 1) * self.st_min_s
        return frames * self.frame_time_s() + gaps

    # ------------------------------------------------------------------ flash
    def transfer_s(self, image_bytes: int) -> float:
        """Return the TransferData phase of ``image_bytes`` bytes."""
        data_per_block = self.transfer_block_bytes
        blocks, last = divmod(image_bytes, data_per_block)
        total = blocks * self.isotp_time_s(data_per_block + 2)
        if last:
            total += self.isotp_time_s(last + 2)
        requests = blocks + (1 if last else 0)
        return total + requests * (self.request_overhead_s + self.frame_time_s())

    def flash_s(self, image_bytes: int) -> float:
        """Return a whole flash of one ECU: fixed steps, erase, transfer, reset and boot."""
        return self.fixed_s + self.erase_s + self.transfer_s(image_bytes) + self.boot_s

    # ------------------------------------------------------------------- file
    @classmethod
    def load(cls, path: Path) -> BusModel:
        """Read a bus model from a TOML file; ``ValueError`` naming file and key."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{path}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML: {exc}") from None
        try:
            return cls.model_validate(data.get("bus_model", data))
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"]) or "bus_model"
            why = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
            raise ValueError(f"{path}: {key}: {why}") from None

    def dump(self) -> str:
        """Return the model as a TOML document (``[bus_model]``)."""
        lines = ["[bus_model]"]
        for name, value in self.model_dump().items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                text = repr(value)
            lines.append(f"{name} = {text}")
        return "\n".join(lines) + "\n"


__all__ = ["BusModel"]
