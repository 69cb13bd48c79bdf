"""The gateway's persisted state: the deployment in progress and the step it reached.

Written atomically (temporary file, fsync, rename, fsync of the directory)
after every step that changes an ECU, so a TCU that restarts at any moment
finds the deployment, the images it downloaded and, for each ECU, whether it
was flashed, confirmed or rolled back, and can resume or roll back.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import GatewayError

STATE_FORMAT = "hil-gateway-state/1"


class StateError(GatewayError):
    """The state file cannot be read or written."""


class Phase(StrEnum):
    """How far a deployment got."""

    DOWNLOADING = "downloading"
    """Images being downloaded and verified; no ECU touched."""
    WAITING = "waiting"
    """Images verified; waiting for the preconditions."""
    INSTALLING = "installing"
    """ECUs being flashed in the release's order."""
    CONFIRMING = "confirming"
    """Every ECU flashed; their images being confirmed."""
    ROLLING_BACK = "rolling_back"
    """An ECU failed; the ECUs already updated being restored."""
    REPORTING = "reporting"
    """The outcome is decided; the final report waits for the backend's acknowledgement."""


class EcuState(StrEnum):
    """Where one ECU stands in a deployment."""

    PENDING = "pending"
    FLASHING = "flashing"
    FLASHED = "flashed"
    """Runs the new image, on trial (not confirmed)."""
    UNCHANGED = "unchanged"
    """Already ran the release's version: nothing to do."""
    CONFIRMED = "confirmed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    NOT_STARTED = "not_started"
    """Not reached: an earlier ECU failed."""


@dataclass
class EcuRecord:
    """One ECU of a deployment."""

    name: str
    from_version: str
    to_version: str
    image: str = ""
    """File name of the verified image in the artifacts directory."""
    state: EcuState = EcuState.PENDING
    step: str = ""
    reason: str = ""
    version_after: str = ""
    duration_s: float = 0.0


@dataclass
class DeploymentRecord:
    """A deployment the gateway works on."""

    deployment_id: str
    attempt: int
    release_id: str
    phase: Phase
    ecus: list[EcuRecord] = field(default_factory=list)
    outcome: str = ""
    """The action state reported at the end: succeeded, failed or rolled_back."""
    failure_step: str = ""
    failure_reason: str = ""
    final_report_id: str = ""

    def ecu(self, name: str) -> EcuRecord:
        """Return the record of ECU ``name``."""
        for record in self.ecus:
            if record.name == name:
                return record
        raise KeyError(name)


@dataclass
class GatewayState:
    """Everything the gateway keeps across restarts."""

    deployment: DeploymentRecord | None = None
    finished: list[str] = field(default_factory=list)
    """Deployment ids (with attempt, ``dep-1#2``) whose outcome the backend acknowledged."""
    kept_images: dict[str, str] = field(default_factory=dict)
    """Per ECU, the verified image it runs (confirmed), kept for a re-flash rollback."""

    def to_json(self) -> dict[str, Any]:
        """Return the JSON document."""
        return {"format": STATE_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> GatewayState:
        """Parse the JSON document."""
        if document.get("format") != STATE_FORMAT:
            raise StateError(f"unknown gateway state format {document.get('format')!r}")
        raw = document.get("deployment")
        deployment = None
        if raw is not None:
            deployment = DeploymentRecord(
                deployment_id=raw["deployment_id"],
                attempt=int(raw["attempt"]),
                release_id=raw["release_id"],
                phase=Phase(raw["phase"]),
                ecus=[
                    EcuRecord(**{**e, "state": EcuState(e["state"])}) for e in raw.get("ecus", [])
                ],
                outcome=raw.get("outcome", ""),
                failure_step=raw.get("failure_step", ""),
                failure_reason=raw.get("failure_reason", ""),
                final_report_id=raw.get("final_report_id", ""),
            )
        return cls(
            deployment=deployment,
            finished=list(document.get("finished", [])),
            kept_images=dict(document.get("kept_images", {})),
        )


class StateStore(Protocol):
    """Where the gateway's state lives."""

    def load(self) -> GatewayState:
        """Return the stored state (an empty one at first)."""
        ...

    def save(self, state: GatewayState) -> None:
        """Store ``state`` so that a crash leaves the old or the new one."""
        ...


class MemoryStateStore:
    """State kept in memory (simulations; a copy is stored so callers cannot alias it)."""

    def __init__(self) -> None:
        self._document: dict[str, Any] | None = None

    def load(self) -> GatewayState:
        """Return the stored state."""
        if self._document is None:
            return GatewayState()
        return GatewayState.from_json(json.loads(json.dumps(self._document)))

    def save(self, state: GatewayState) -> None:
        """Store a copy of ``state``."""
        self._document = json.loads(json.dumps(state.to_json()))


class FileStateStore:
    """State in ``<directory>/gateway.json``, replaced atomically."""

    FILE_NAME = "gateway.json"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / self.FILE_NAME
        self._lock = threading.Lock()

    def load(self) -> GatewayState:
        """Return the stored state (an empty one when there is no file)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return GatewayState()
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc}") from exc
        try:
            return GatewayState.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(f"{self.path} is not a gateway state file: {exc}") from exc

    def save(self, state: GatewayState) -> None:
        """Write the state: temporary file, fsync, rename, fsync of the directory."""
        data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode()
        with self._lock:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                temporary = self.path.with_suffix(".tmp")
                with temporary.open("wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, self.path)
                with contextlib.suppress(OSError):
                    fd = os.open(self.directory, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            except OSError as exc:
                raise StateError(f"cannot write {self.path}: {exc}") from exc


__all__ = [
    "DeploymentRecord",
    "EcuRecord",
    "EcuState",
    "FileStateStore",
    "GatewayState",
    "MemoryStateStore",
    "Phase",
    "StateError",
    "StateStore",
]
