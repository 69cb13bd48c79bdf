"""The ``sim`` bench as configuration: its state file and the bench it describes.

``hil bench sim run`` (:class:`hil.bench.sim.SimBench`) writes a small JSON file
in the state directory (:func:`hil.bench.paths.state_dir`) naming its bus and the
loopback ports of its simulated power supply and relay board. The built-in
``sim`` bench is read from it, so every ``hil bench`` command, ``hil flash
--bench sim`` and the pytest plugin reach the simulated vehicle through the same
drivers and code as a real bench. Without the file (or when the process that
wrote it is gone) the ``sim`` bench exists but is not running.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hil.bench.paths import state_dir
from hil.bench.schema import BenchSpec, BoardSpec, BusSpec, LineSpec, PowerSpec, RelaysSpec

STATE_FILE = "sim-bench.json"
STATE_VERSION = 1

POWER_KIND = "korad"
RELAY_KIND = "lcus"
RELAY_BOARD = "relays"
RELAY_CHANNELS = 2
IGNITION_CHANNEL = 1
NOMINAL_VOLTS = 12.0
NOMINAL_AMPS = 2.0
MIN_VOLTS = 11.5
MAX_VOLTS = 14.5
NOT_RUNNING_PORT = "(not running)"


def state_file(env: Mapping[str, str] | None = None) -> Path:
    """Return the file where the running ``sim`` bench describes itself."""
    return state_dir(env) / STATE_FILE


def pid_alive(pid: int) -> bool:
    """Return whether a process with this id runs (``True`` where it cannot be told)."""
    if sys.platform == "win32":
        return True  # os.kill(pid, 0) would send CTRL_C_EVENT there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class SimBenchState:
    """What a running ``sim`` bench process tells its clients."""

    pid: int
    bus: dict[str, Any]
    """``can.Bus`` keyword arguments that reach the simulated ECUs."""
    power_port: str
    relay_port: str
    vehicle: str
    """The vehicle file of the simulated ECUs."""
    nvm_dir: str
    version: int = STATE_VERSION
    ignition_channel: int = IGNITION_CHANNEL
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, path: Path) -> None:
        """Write the file atomically (a reader sees the old or the new one)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)

    @classmethod
    def read(cls, path: Path) -> SimBenchState | None:
        """Read the file; ``None`` if there is none, it is unreadable, or its process is gone."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            state = cls(**data)
        except (OSError, ValueError, TypeError):
            return None
        if state.version != STATE_VERSION or not pid_alive(state.pid):
            return None
        return state

    def remove(self, path: Path) -> None:
        """Remove the file if it is still this state's."""
        current = SimBenchState.read(path)
        if current is not None and current.pid == self.pid and current.bus == self.bus:
            with contextlib.suppress(OSError):
                path.unlink()


def _bus_spec(kwargs: Mapping[str, Any]) -> BusSpec:
    named = ("interface", "channel", "bitrate", "fd", "data_bitrate")
    given = {key: value for key, value in kwargs.items() if key in named}
    options = {key: value for key, value in kwargs.items() if key not in named}
    return BusSpec(**given, options=options)


def sim_bench_spec(state: SimBenchState | None) -> BenchSpec:
    """Return the ``sim`` bench: its process's bus and ports, or placeholders if none runs."""
    port = state.power_port if state else NOT_RUNNING_PORT
    relay_port = state.relay_port if state else NOT_RUNNING_PORT
    return BenchSpec(
        description="the simulated demo vehicle, served by 'hil bench sim run'",
        vehicle=state.vehicle if state else "demo",
        bus=_bus_spec(state.bus) if state else BusSpec(),
        power=PowerSpec(
            kind=POWER_KIND,
            port=port,
            volts=NOMINAL_VOLTS,
            amps=NOMINAL_AMPS,
            min_volts=MIN_VOLTS,
            max_volts=MAX_VOLTS,
        ),
        relays=RelaysSpec(
            boards={
                RELAY_BOARD: BoardSpec(
                    kind=RELAY_KIND,
                    port=relay_port,
                    options={"channels": RELAY_CHANNELS, "state_query": True},
                )
            },
            lines={
                "ignition": LineSpec(
                    board=RELAY_BOARD,
                    channel=state.ignition_channel if state else IGNITION_CHANNEL,
                )
            },
        ),
    )
