"""The gateway's client of the OTA backend: check-ins, verified releases, resumable downloads.

Everything that crosses the network is retried with exponential backoff and
full jitter while the backend is unreachable (a restart, a dropped link), and
every report carries a ``report_id`` so that a retry is applied once. Nothing
a backend sends is trusted before it verifies: the release metadata against
the backend's release key, every downloaded artifact against the SHA-256 the
signed metadata names.

The channel is passed in (a ``grpc.Channel`` made by the caller, with mTLS or
plain on loopback); the clock, the sleep and the random source are injectable
so that tests and simulations drive the same code.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from backend_stub.api import (
    common_pb2,
    device_pb2,
    device_pb2_grpc,
    update_pb2,
    update_pb2_grpc,
)
from gateway.errors import BackendRefused, BackendUnavailable, ReleaseRejected
from ota_formats.errors import OtaFormatError
from ota_formats.release import ReleaseImageEntry, ReleaseManifest, verify_manifest

T = TypeVar("T")

# Failures worth another try: the backend is down, restarting or overloaded.
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
    }
)


@dataclass
class Backoff:
    """Exponential backoff with full jitter (a random wait up to the current ceiling)."""

    initial_s: float = 0.2
    max_s: float = 30.0
    factor: float = 2.0
    give_up_after_s: float = 300.0
    rng: random.Random = field(default_factory=random.Random)

    def delays(self) -> Iterable[float]:
        """Yield the waits before each retry."""
        ceiling = self.initial_s
        while True:
            yield self.rng.uniform(0.0, ceiling)
            ceiling = min(self.max_s, ceiling * self.factor)


@dataclass(frozen=True)
class EcuInventory:
    """What the gateway read from one ECU over UDS."""

    name: str
    hardware_id: str = ""
    part_number: str = ""
    software_version: str = ""
    serial_number: str = ""
    active_bank: int = 0
    anti_rollback: int = 0

    def to_pb(self) -> common_pb2.EcuInfo:
        """Return the message form."""
        return common_pb2.EcuInfo(**self.__dict__)


@dataclass(frozen=True)
class DeploymentNotice:
    """A deployment the backend wants this vehicle to act on."""

    deployment_id: str
    campaign_id: str
    release_id: str
    state: str


@dataclass(frozen=True)
class VerifiedDeployment:
    """A deployment whose release metadata verified with a trusted release key."""

    deployment_id: str
    campaign_id: str
    state: str
    attempt: int
    manifest: ReleaseManifest


def _state_name(value: int) -> str:
    return common_pb2.ActionState.Name(value).removeprefix("ACTION_STATE_").lower()


class BackendClient:
    """One vehicle's view of the backend, over a channel the caller made."""

    def __init__(
        self,
        channel: grpc.Channel,
        vin: str,
        *,
        release_keys: Sequence[Ed25519PublicKey],
        backoff: Backoff | None = None,
        call_timeout_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.vin = vin
        self.release_keys = list(release_keys)
        self.backoff = backoff or Backoff()
        self.call_timeout_s = call_timeout_s
        self._sleep = sleep
        self._clock = clock
        self._device = device_pb2_grpc.DeviceServiceStub(channel)  # type: ignore[no-untyped-call]
        self._update = update_pb2_grpc.UpdateServiceStub(channel)  # type: ignore[no-untyped-call]
        self.retries = 0

    # ------------------------------------------------------------ plumbing
    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        started = self._clock()
        delays = iter(self.backoff.delays())
        while True:
            try:
                return call()
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in _TRANSIENT:
                    raise BackendRefused(
                        f"{what}: backend refused ({code.name}): {exc.details()}", code=code.name
                    ) from exc
                if self._clock() - started > self.backoff.give_up_after_s:
                    raise BackendUnavailable(
                        f"{what}: backend unreachable for {self.backoff.give_up_after_s:g} s "
                        f"({code.name}: {exc.details()})"
                    ) from exc
                self.retries += 1
                self._sleep(next(delays))

    def _unary(self, what: str, method: Any, request: Any) -> Any:
        return self._retrying(
            what, lambda: method(request, timeout=self.call_timeout_s, wait_for_ready=True)
        )

    # -------------------------------------------------------------- device
    def register(
        self, inventory: Sequence[EcuInventory], *, model: str = "", tags: Sequence[str] = ()
    ) -> None:
        """Register this vehicle with its ECU inventory (again, after a change)."""
        self._unary(
            "register",
            self._device.RegisterVehicle,
            device_pb2.RegisterVehicleRequest(
                vin=self.vin, model=model, tags=list(tags), ecus=[e.to_pb() for e in inventory]
            ),
        )

    def check_in(
        self, *, state: str = "", inventory: Sequence[EcuInventory] = ()
    ) -> tuple[list[DeploymentNotice], int]:
        """Check in; return the deployments to act on and the next check-in interval (s)."""
        reply = self._unary(
            "check-in",
            self._device.CheckIn,
            device_pb2.CheckInRequest(
                vin=self.vin, state=state, ecus=[e.to_pb() for e in inventory]
            ),
        )
        notices = [
            DeploymentNotice(
                deployment_id=d.deployment_id,
                campaign_id=d.campaign_id,
                release_id=d.release_id,
                state=_state_name(d.state),
            )
            for d in reply.deployments
        ]
        return notices, int(reply.next_checkin_s)

    def report(
        self,
        deployment_id: str,
        state: str,
        *,
        report_id: str | None = None,
        progress_pct: int = 0,
        failure_step: str = "",
        failure_reason: str = "",
        ecus: Sequence[dict[str, str]] = (),
        inventory: Sequence[EcuInventory] = (),
        detail: str = "",
    ) -> tuple[str, bool]:
        """Report on a deployment until acknowledged; return (state after, duplicate)."""
        request = device_pb2.ReportDeploymentRequest(
            vin=self.vin,
            deployment_id=deployment_id,
            report_id=report_id or uuid.uuid4().hex,
            state=f"ACTION_STATE_{state.upper()}",
            progress_pct=progress_pct,
            failure_step=failure_step,
            failure_reason=failure_reason,
            ecus=[device_pb2.EcuProgress(**e) for e in ecus],
            inventory=[e.to_pb() for e in inventory],
            detail=detail,
        )
        reply = self._unary("report", self._device.ReportDeployment, request)
        return _state_name(reply.state), bool(reply.duplicate)

    # -------------------------------------------------------------- update
    def deployment(self, deployment_id: str) -> VerifiedDeployment:
        """Fetch a deployment and verify its release with the trusted release keys."""
        reply = self._unary(
            "deployment",
            self._update.GetDeployment,
            update_pb2.GetDeploymentRequest(vin=self.vin, deployment_id=deployment_id),
        )
        release = reply.release
        try:
            manifest = verify_manifest(release.metadata, release.signature, self.release_keys)
        except OtaFormatError as exc:
            raise ReleaseRejected(f"release {release.release_id}: {exc}") from exc
        if manifest.release_id != release.release_id:
            raise ReleaseRejected(
                f"release {release.release_id}: the signed metadata is for {manifest.release_id}"
            )
        return VerifiedDeployment(
            deployment_id=reply.deployment_id,
            campaign_id=reply.campaign_id,
            state=_state_name(reply.state),
            attempt=int(reply.attempt),
            manifest=manifest,
        )

    def download(
        self,
        image: ReleaseImageEntry,
        directory: str | Path,
        *,
        chunk_size: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Download one image of a verified release into ``directory``; return its path.

        A partial file (``<sha>.part``) is kept across interruptions and
        process restarts, and the transfer continues from its size. The
        complete file must have the size and SHA-256 the signed metadata
        names, or it is deleted and :class:`ReleaseRejected` raised.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / image.sha256
        if final.is_file() and _sha256_of(final) == image.sha256:
            return final
        partial = directory / f"{image.sha256}.part"
        if partial.exists() and partial.stat().st_size > image.size_bytes:
            partial.unlink()

        def fetch() -> None:
            offset = partial.stat().st_size if partial.exists() else 0
            if offset >= image.size_bytes:
                return
            stream = self._update.Download(
                update_pb2.DownloadRequest(
                    sha256=image.sha256, offset=offset, vin=self.vin, chunk_size=chunk_size
                ),
                timeout=max(self.call_timeout_s, 60.0),
                wait_for_ready=True,
            )
            with partial.open("ab") as handle:
                try:
                    for chunk in stream:
                        if chunk.offset != handle.tell():
                            raise ReleaseRejected(
                                f"artifact {image.sha256}: chunk at {chunk.offset}, "
                                f"expected {handle.tell()}"
                            )
                        if handle.tell() + len(chunk.data) > image.size_bytes:
                            raise ReleaseRejected(
                                f"artifact {image.sha256} is longer than the "
                                f"{image.size_bytes} bytes the release names"
                            )
                        handle.write(chunk.data)
                        if progress is not None:
                            progress(handle.tell(), image.size_bytes)
                finally:
                    handle.flush()
                    os.fsync(handle.fileno())

        try:
            self._retrying(f"download {image.ecu}", fetch)
        except ReleaseRejected:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        digest = _sha256_of(partial)
        if partial.stat().st_size != image.size_bytes or digest != image.sha256:
            partial.unlink()
            raise ReleaseRejected(
                f"artifact for {image.ecu} has SHA-256 {digest}, the signed release names "
                f"{image.sha256}: refused"
            )
        os.replace(partial, final)
        return final


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
