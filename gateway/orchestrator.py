"""The vehicle-level update transaction: verify everything, flash in order, confirm or roll back.

One deployment goes through these phases, each persisted before it starts
(see :mod:`gateway.state`), so a TCU restart at any moment resumes it:

1. **downloading**: the release metadata is verified with the backend's
   release key; every image entry is checked against the ECU it targets
   (known ECU, compatible hardware, no anti-rollback downgrade); every image
   is downloaded with resume, its SHA-256 checked against the signed
   metadata, and its own signature checked with the vehicle's trust anchors.
   Anything that does not verify fails the deployment before any ECU is
   touched.
2. **waiting**: the update preconditions (live restbus signals) must hold;
   the deployment reports that it waits, and fails after the configured
   timeout.
3. **installing**: ECUs are flashed in the release's order with their new
   images left on trial (not confirmed). Before each ECU the preconditions
   are judged again on fresh frames, and during a flash on the last values
   seen; if they stop holding the flash is aborted.
4. **confirming**: every ECU flashed, each confirms its image (the ECU
   raises its anti-rollback counter only then).
5. **rolling back** (after any failure): every ECU this deployment changed
   goes back to its previous image, by bank switch or, failing that, by a
   re-flash of the previous image the gateway kept; the failing ECU too if
   it does not run its previous version.
6. **reporting**: the outcome (succeeded, failed, rolled back) with
   per-ECU states and the vehicle's versions, under a report id persisted
   beforehand so that a resend after a restart is applied once.

Progress reports go out on a reporter thread so that a backend outage does
not stall a flash; only the final report is waited for. Transports (the
backend client, one port per ECU), the precondition source, the state store,
the clock and the sleep are injected: a simulation drives the same code.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.backend import EcuInventory, VerifiedDeployment
from gateway.errors import BackendRefused, BackendUnavailable, GatewayError, ReleaseRejected
from gateway.flasher import FlashProgress, FlashResult, RollbackResult
from gateway.inventory import EcuReading
from gateway.preconditions import PreconditionSource
from gateway.state import (
    DeploymentRecord,
    EcuRecord,
    EcuState,
    GatewayState,
    Phase,
    StateStore,
)
from ota_formats import OtaFormatError, parse_image
from ota_formats.release import ReleaseImageEntry

log = logging.getLogger(__name__)

FINISHED_KEPT = 50
"""How many acknowledged deployment attempts the state remembers."""


class EcuPort(Protocol):
    """What the orchestrator does to one ECU (over UDS, or a model of it)."""

    name: str

    def read(self) -> EcuReading:
        """Read identification and boot status."""
        ...

    def flash(
        self,
        image: bytes,
        *,
        should_abort: Callable[[], str | None],
        on_progress: Callable[[FlashProgress], None],
    ) -> FlashResult:
        """Flash ``image`` and leave it on trial (unconfirmed)."""
        ...

    def confirm(self) -> None:
        """Confirm the running image; raise :class:`GatewayError` on failure."""
        ...

    def activate_previous(self) -> RollbackResult:
        """Switch back to the image in the other bank."""
        ...


class DeploymentSource(Protocol):
    """The backend as the orchestrator uses it (a :class:`~gateway.backend.BackendClient`)."""

    def deployment(self, deployment_id: str) -> VerifiedDeployment:
        """Fetch a deployment and verify its release."""
        ...

    def download(
        self,
        image: ReleaseImageEntry,
        directory: str | Path,
        *,
        chunk_size: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Download one image, resumable, checked against its SHA-256."""
        ...

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
        """Report on a deployment until acknowledged."""
        ...


@dataclass
class DeploymentOutcome:
    """What became of one deployment."""

    deployment_id: str
    release_id: str
    state: str
    """succeeded, failed, rolled_back or canceled."""
    failure_step: str = ""
    failure_reason: str = ""
    ecus: list[EcuRecord] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    acknowledged: bool = True
    """Whether the backend acknowledged the final report (else it is resent later)."""


class _Canceled(Exception):
    """The backend canceled the deployment before any ECU was touched."""


class _Failed(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


class Reporter:
    """Sends a deployment's reports in order on a thread of its own.

    Progress reports of the same state replace one another while queued, and
    go out at most every ``progress_interval_s``, so neither a slow backend nor
    a fast flash turns into a stream of writes; state changes are never
    dropped or delayed. :meth:`flush` sends what is queued without waiting.
    """

    def __init__(
        self, backend: DeploymentSource, deployment_id: str, *, progress_interval_s: float = 1.0
    ) -> None:
        self.backend = backend
        self.deployment_id = deployment_id
        self.progress_interval_s = progress_interval_s
        self.canceled = False
        self.sent = 0
        self._queue: deque[tuple[str, dict[str, Any], bool]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._hurry = 0
        self._last_progress = -float("inf")
        self._thread = threading.Thread(target=self._run, name="gateway-reporter", daemon=True)
        self._thread.start()

    def post(self, state: str, *, coalesce: bool = False, **fields: Any) -> None:
        """Queue a report (``coalesce``: may be replaced by the next one of the same state)."""
        with self._cond:
            if coalesce and self._queue and self._queue[-1][2] and self._queue[-1][0] == state:
                self._queue.pop()
            self._queue.append((state, fields, coalesce))
            self._cond.notify_all()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued report was sent (or given up); ``False`` on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            self._hurry += 1
            self._cond.notify_all()
            try:
                while self._queue or self._busy:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            finally:
                self._hurry -= 1
        return True

    def close(self) -> None:
        """Stop the thread once the queue is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(5.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                state, fields, coalesce = self._queue[0]
                wait = self._last_progress + self.progress_interval_s - time.monotonic()
                if (
                    coalesce
                    and wait > 0
                    and len(self._queue) == 1
                    and not (self._hurry or self._closed)
                ):
                    # A newer progress report may replace this one meanwhile.
                    self._cond.wait(wait)
                    continue
                self._queue.popleft()
                if coalesce:
                    self._last_progress = time.monotonic()
                self._busy = True
            try:
                self.backend.report(self.deployment_id, state, **fields)
                self.sent += 1
            except BackendRefused as exc:
                if exc.code == "FAILED_PRECONDITION" and "canceled" in str(exc):
                    self.canceled = True
                log.warning("report on %s refused: %s", self.deployment_id, exc)
            except BackendUnavailable as exc:
                log.warning("report on %s not delivered: %s", self.deployment_id, exc)
            except Exception:
                log.exception("report on %s failed", self.deployment_id)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


class UpdateOrchestrator:
    """Runs deployments on one vehicle: the gateway's update transaction."""

    def __init__(
        self,
        backend: DeploymentSource,
        ecus: Mapping[str, EcuPort],
        preconditions: PreconditionSource,
        store: StateStore,
        artifacts_dir: str | Path,
        *,
        trust_anchors: Sequence[Ed25519PublicKey],
        precondition_timeout_s: float = 3600.0,
        precondition_poll_s: float = 0.1,
        fresh_signal_timeout_s: float = 2.0,
        download_chunk_size: int = 0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.backend = backend
        self.ecus = dict(ecus)
        self.preconditions = preconditions
        self.store = store
        self.artifacts_dir = Path(artifacts_dir)
        self.trust_anchors = list(trust_anchors)
        self.precondition_timeout_s = precondition_timeout_s
        self.precondition_poll_s = precondition_poll_s
        self.fresh_signal_timeout_s = fresh_signal_timeout_s
        self.download_chunk_size = download_chunk_size
        self.clock = clock
        self.sleep = sleep
        self.on_event = on_event
        self._reporter: Reporter | None = None
        self._timings: dict[str, float] = {}

    # ------------------------------------------------------------------ public
    def pending(self) -> DeploymentRecord | None:
        """Return the deployment a previous run left unfinished, if any."""
        return self.store.load().deployment

    def resume(self) -> DeploymentOutcome | None:
        """Finish what a previous run left: resume the installation, roll back, or report."""
        state = self.store.load()
        record = state.deployment
        if record is None:
            return None
        if record.phase in (Phase.DOWNLOADING, Phase.WAITING):
            # Nothing was touched: the next check-in offers the deployment again.
            return None
        self._event(f"resuming {record.deployment_id} at {record.phase}")
        return self._drive(state)

    def run(self, deployment_id: str) -> DeploymentOutcome | None:
        """Carry out a deployment the backend offered; ``None`` if it was already done."""
        state = self.store.load()
        record = state.deployment
        if (
            record is not None
            and record.deployment_id == deployment_id
            and record.phase not in (Phase.DOWNLOADING, Phase.WAITING)
        ):
            return self._drive(state)
        self._timings = {}
        started = self.clock()
        try:
            verified = self.backend.deployment(deployment_id)
        except ReleaseRejected as exc:
            self._timings["verify release"] = self.clock() - started
            return self._refuse_unverified(deployment_id, "verify release", str(exc))
        self._timings["verify release"] = self.clock() - started
        if f"{deployment_id}#{verified.attempt}" in state.finished:
            return None
        if verified.state not in ("notified", "downloading", "pending"):
            # Installing/terminal on the backend but unknown here: nothing this run can do.
            log.warning("deployment %s is %s; not starting it", deployment_id, verified.state)
            return None
        record = DeploymentRecord(
            deployment_id=deployment_id,
            attempt=verified.attempt,
            release_id=verified.manifest.release_id,
            phase=Phase.DOWNLOADING,
        )
        state.deployment = record
        self.store.save(state)
        reporter = self._start_reporter(deployment_id)
        try:
            try:
                self._prepare(state, record, verified)
                self._wait_preconditions(state, record)
            except _Failed as failed:
                # Nothing was flashed: the vehicle keeps every version it had.
                record.outcome = "failed"
                record.failure_step = failed.step
                record.failure_reason = failed.reason
                for ecu in record.ecus:
                    if ecu.state is EcuState.PENDING:
                        ecu.state = EcuState.NOT_STARTED
                record.phase = Phase.REPORTING
                self.store.save(state)
                return self._drive(state)
            except _Canceled:
                self._event(f"{deployment_id} canceled by the backend; nothing was flashed")
                state.deployment = None
                self.store.save(state)
                return DeploymentOutcome(
                    deployment_id, record.release_id, "canceled", ecus=record.ecus
                )
            record.phase = Phase.INSTALLING
            self.store.save(state)
            reporter.post(
                "installing", progress_pct=0, detail="installing", ecus=self._ecus_pb(record)
            )
            return self._drive(state)
        finally:
            self._stop_reporter()

    # ----------------------------------------------------------- preparation
    def _prepare(
        self, state: GatewayState, record: DeploymentRecord, verified: VerifiedDeployment
    ) -> None:
        reporter = self._require_reporter()
        manifest = verified.manifest
        started = self.clock()
        readings: dict[str, EcuReading] = {}
        for entry in manifest.images:
            port = self.ecus.get(entry.ecu)
            if port is None:
                raise _Failed(
                    "check release",
                    f"release {manifest.release_id} has an image for ECU {entry.ecu!r}; "
                    f"this vehicle has {', '.join(self.ecus)}",
                )
            try:
                readings[entry.ecu] = reading = port.read()
            except GatewayError as exc:
                raise _Failed("check release", f"{entry.ecu}: cannot read it: {exc}") from exc
            inventory = reading.inventory
            # The image header names one hardware id, and both the flasher and the ECU
            # (0xFF01) refuse any other: a wider compatible_hardware_ids list must not let
            # an image through here that would only fail mid-update, after other ECUs.
            if inventory.hardware_id != entry.hardware_id:
                raise _Failed(
                    "check release",
                    f"{entry.ecu}: the image is for hardware {entry.hardware_id!r}, "
                    f"the ECU is {inventory.hardware_id!r}: refused",
                )
            if entry.anti_rollback < inventory.anti_rollback:
                raise _Failed(
                    "check release",
                    f"{entry.ecu}: downgrade refused: version {entry.version} has anti-rollback "
                    f"counter {entry.anti_rollback}, the ECU requires at least "
                    f"{inventory.anti_rollback}",
                )
            record.ecus.append(
                EcuRecord(
                    name=entry.ecu,
                    from_version=inventory.software_version,
                    to_version=entry.version,
                )
            )
        self._timings["check release"] = self.clock() - started
        self.store.save(state)
        total = sum(e.size_bytes for e in manifest.images) or 1
        done = 0
        reporter.post(
            "downloading",
            progress_pct=0,
            detail=f"downloading {len(manifest.images)} image(s), {total} bytes",
        )
        started = self.clock()
        verify_s = 0.0
        for entry, ecu in zip(manifest.images, record.ecus, strict=True):
            if reporter.canceled:
                raise _Canceled
            base = done

            def progress(sent: int, size: int, base: int = base) -> None:
                reporter.post(
                    "downloading", coalesce=True, progress_pct=min(99, (base + sent) * 100 // total)
                )

            try:
                path = self.backend.download(
                    entry,
                    self.artifacts_dir,
                    chunk_size=self.download_chunk_size,
                    progress=progress,
                )
            except ReleaseRejected as exc:
                raise _Failed("verify image", str(exc)) from exc
            except BackendRefused as exc:
                raise _Failed("download", str(exc)) from exc
            verify_started = self.clock()
            self._verify_image(entry, path)
            verify_s += self.clock() - verify_started
            ecu.image = path.name
            if readings[entry.ecu].inventory.software_version == entry.version and (
                readings[entry.ecu].inventory.anti_rollback >= entry.anti_rollback
            ):
                ecu.state = EcuState.UNCHANGED
            done += entry.size_bytes
            self.store.save(state)
        self._timings["download"] = self.clock() - started - verify_s
        self._timings["verify images"] = verify_s
        if reporter.canceled:
            raise _Canceled
        self._event(f"{record.deployment_id}: {len(manifest.images)} image(s) verified")

    def _verify_image(self, entry: ReleaseImageEntry, path: Path) -> None:
        try:
            image = parse_image(path.read_bytes())
            image.check_integrity()
            image.check_signature(self.trust_anchors)
        except OtaFormatError as exc:
            raise _Failed("verify image", f"{entry.ecu}: the image does not verify: {exc}") from exc
        header = image.header
        if (header.hardware_id, header.version, header.anti_rollback_counter) != (
            entry.hardware_id,
            entry.version,
            entry.anti_rollback,
        ):
            raise _Failed(
                "verify image",
                f"{entry.ecu}: the image header ({header.hardware_id} {header.version} "
                f"counter {header.anti_rollback_counter}) differs from the signed release "
                f"({entry.hardware_id} {entry.version} counter {entry.anti_rollback})",
            )

    def _wait_preconditions(self, state: GatewayState, record: DeploymentRecord) -> None:
        record.phase = Phase.WAITING
        self.store.save(state)
        if all(e.state is EcuState.UNCHANGED for e in record.ecus):
            return
        unmet = self._await_preconditions(record, "downloading", cancelable=True)
        if unmet:
            raise _Failed(
                "preconditions",
                f"not met within {self.precondition_timeout_s:g} s: " + "; ".join(unmet),
            )

    def _await_preconditions(
        self, record: DeploymentRecord, report_state: str, *, cancelable: bool = False
    ) -> list[str]:
        """Wait until the preconditions hold, saying so; return what still fails at the timeout."""
        reporter = self._require_reporter()
        started = self.clock()
        last: list[str] | None = None
        while True:
            unmet = self.preconditions.unmet()
            if not unmet:
                break
            if unmet != last:
                detail = "waiting for preconditions: " + "; ".join(unmet)
                self._event(f"{record.deployment_id}: {detail}")
                reporter.post(report_state, progress_pct=100 if cancelable else 0, detail=detail)
                last = unmet
            if cancelable and reporter.canceled:
                raise _Canceled
            if self.clock() - started >= self.precondition_timeout_s:
                return unmet
            self.sleep(self.precondition_poll_s)
        self._timings["wait"] = self._timings.get("wait", 0.0) + self.clock() - started
        if last is not None:
            reporter.post(report_state, progress_pct=0, detail="preconditions met")
        return []

    # ------------------------------------------------------------- the drive
    def _drive(self, state: GatewayState) -> DeploymentOutcome:
        record = state.deployment
        assert record is not None
        own_reporter = self._reporter is None
        if own_reporter:
            self._start_reporter(record.deployment_id)
        try:
            if record.phase is Phase.INSTALLING:
                self._install(state, record)
            if record.phase is Phase.CONFIRMING:
                self._confirm(state, record)
            if record.phase is Phase.ROLLING_BACK:
                self._roll_back(state, record)
            return self._finish(state, record)
        finally:
            if own_reporter:
                self._stop_reporter()

    def _install(self, state: GatewayState, record: DeploymentRecord) -> None:
        reporter = self._require_reporter()
        total = sum(self._image_size(e) for e in record.ecus if e.state is not EcuState.UNCHANGED)
        total = total or 1
        done = sum(
            self._image_size(e)
            for e in record.ecus
            if e.state in (EcuState.FLASHED, EcuState.CONFIRMED)
        )
        flashed_one = False
        for ecu in record.ecus:
            if ecu.state in (EcuState.FLASHED, EcuState.UNCHANGED, EcuState.CONFIRMED):
                continue
            port = self.ecus[ecu.name]
            if ecu.state is EcuState.FLASHING and self._runs_new(port, ecu):
                # The flash had finished when the gateway stopped: keep it.
                ecu.state = EcuState.FLASHED
                self.store.save(state)
                done += self._image_size(ecu)
                continue
            if flashed_one:
                # Mid-update: judged on frames sent after the last flash; no waiting them out.
                unmet = self._fresh_unmet(self.preconditions.now())
                why = "lost during the update: "
            else:
                # Starting (or resuming after a restart, when the ECUs may still be
                # silent from the interrupted programming session): wait for them.
                unmet = self._await_preconditions(record, "installing")
                why = f"not met within {self.precondition_timeout_s:g} s: "
            if unmet:
                self._fail_install(state, record, ecu, "preconditions", why + "; ".join(unmet))
                return
            image_path = self.artifacts_dir / ecu.image
            try:
                image = image_path.read_bytes()
            except OSError as exc:
                self._fail_install(state, record, ecu, "load image", f"{image_path}: {exc}")
                return
            ecu.state = EcuState.FLASHING
            self.store.save(state)
            self._event(
                f"{record.deployment_id}: flashing {ecu.name} "
                f"{ecu.from_version} -> {ecu.to_version}"
            )
            reporter.post(
                "installing",
                progress_pct=done * 100 // total,
                detail=f"flashing {ecu.name}",
                ecus=self._ecus_pb(record),
            )
            base = done

            def on_progress(p: FlashProgress, base: int = base) -> None:
                reporter.post(
                    "installing",
                    coalesce=True,
                    progress_pct=min(99, (base + p.bytes_sent) * 100 // total),
                )

            def should_abort() -> str | None:
                unmet = self.preconditions.unmet(stale_ok=True)
                return "preconditions lost: " + "; ".join(unmet) if unmet else None

            result = port.flash(image, should_abort=should_abort, on_progress=on_progress)
            flashed_one = True
            ecu.duration_s = result.duration_s
            self._timings[f"flash {ecu.name}"] = result.duration_s
            ecu.version_after = result.version_after or ""
            if not result.ok:
                failure = result.failure
                assert failure is not None
                self._fail_install(state, record, ecu, str(failure.step), failure.reason)
                return
            ecu.state = EcuState.FLASHED
            ecu.step = "verify"
            done += len(image)
            self.store.save(state)
            reporter.post(
                "installing",
                progress_pct=min(99, done * 100 // total),
                detail=f"{ecu.name} flashed",
                ecus=self._ecus_pb(record),
            )
        record.phase = Phase.CONFIRMING
        self.store.save(state)

    def _fail_install(
        self,
        state: GatewayState,
        record: DeploymentRecord,
        ecu: EcuRecord,
        step: str,
        reason: str,
    ) -> None:
        ecu.state = EcuState.FAILED
        ecu.step = step
        ecu.reason = reason
        record.failure_step = f"{ecu.name}: {step}"
        record.failure_reason = reason
        for other in record.ecus:
            if other.state is EcuState.PENDING:
                other.state = EcuState.NOT_STARTED
        record.phase = Phase.ROLLING_BACK
        self.store.save(state)
        self._event(f"{record.deployment_id}: {ecu.name} failed at {step}: {reason}")

    def _confirm(self, state: GatewayState, record: DeploymentRecord) -> None:
        started = self.clock()
        for ecu in record.ecus:
            if ecu.state is not EcuState.FLASHED:
                continue
            try:
                self.ecus[ecu.name].confirm()
            except GatewayError as exc:
                # Confirmed ECUs cannot go back (their counters rose): say exactly where it stands.
                ecu.step = "confirm"
                ecu.reason = str(exc)
                record.outcome = "failed"
                record.failure_step = f"{ecu.name}: confirm"
                confirmed = [e.name for e in record.ecus if e.state is EcuState.CONFIRMED]
                record.failure_reason = (
                    f"{exc}; every ECU runs its new version, confirmed: "
                    f"{', '.join(confirmed) or 'none'}"
                )
                record.phase = Phase.REPORTING
                self.store.save(state)
                return
            ecu.state = EcuState.CONFIRMED
            ecu.step = "confirm"
            self.store.save(state)
        for ecu in record.ecus:
            if ecu.state is EcuState.CONFIRMED and ecu.image:
                state.kept_images[ecu.name] = ecu.image
        self._timings["confirm"] = self.clock() - started
        record.outcome = "succeeded"
        record.phase = Phase.REPORTING
        self.store.save(state)

    def _roll_back(self, state: GatewayState, record: DeploymentRecord) -> None:
        reporter = self._require_reporter()
        started = self.clock()
        rolled: list[str] = []
        stuck: list[str] = []
        for ecu in reversed(record.ecus):
            if ecu.state in (EcuState.NOT_STARTED, EcuState.UNCHANGED, EcuState.PENDING):
                continue
            if ecu.state is EcuState.ROLLED_BACK:
                rolled.append(ecu.name)
                continue
            port = self.ecus[ecu.name]
            runs = self._version_of(port)
            if runs == ecu.from_version:
                # Never changed, reverted on its own (trial boot failed), or restored by
                # a rollback that a restart interrupted before it was recorded.
                if ecu.state is EcuState.FLASHING:
                    ecu.state = EcuState.FAILED
                    ecu.reason = ecu.reason or "interrupted: the gateway restarted mid-flash"
                elif ecu.state is not EcuState.FAILED:
                    ecu.state = EcuState.ROLLED_BACK
                    rolled.append(ecu.name)
                ecu.version_after = runs
                self.store.save(state)
                continue
            reporter.post(
                "installing", detail=f"rolling back {ecu.name}", ecus=self._ecus_pb(record)
            )
            self._event(f"{record.deployment_id}: rolling back {ecu.name} to {ecu.from_version}")
            ok, why, after = self._restore_previous(port, ecu, state)
            ecu.version_after = after
            if ok:
                if ecu.state is not EcuState.FAILED:
                    ecu.state = EcuState.ROLLED_BACK
                else:
                    ecu.reason += f"; restored {ecu.from_version}"
                rolled.append(ecu.name)
            else:
                ecu.state = EcuState.ROLLBACK_FAILED
                ecu.reason = why
                stuck.append(f"{ecu.name} runs {after or 'nothing'}: {why}")
            self.store.save(state)
        self._timings["rollback"] = self.clock() - started
        if stuck:
            record.outcome = "failed"
            record.failure_reason += "; rollback incomplete: " + "; ".join(stuck)
        else:
            record.outcome = "rolled_back" if rolled else "failed"
        record.phase = Phase.REPORTING
        self.store.save(state)

    def _restore_previous(
        self, port: EcuPort, ecu: EcuRecord, state: GatewayState
    ) -> tuple[bool, str, str]:
        """Bring ``ecu`` back to its previous version; return (ok, why not, version it runs)."""
        result = port.activate_previous()
        if result.ok and result.version_after == ecu.from_version:
            return True, "", result.version_after or ""
        why = result.reason or f"runs {result.version_after!r} after the bank switch"
        kept = state.kept_images.get(ecu.name)
        if kept:
            path = self.artifacts_dir / kept
            try:
                image = path.read_bytes()
                kept_version = parse_image(image).header.version
            except (OSError, OtaFormatError):
                kept_version = ""
            if kept_version == ecu.from_version:
                self._event(f"{ecu.name}: bank switch failed ({why}); re-flashing {kept_version}")
                flashed = port.flash(image, should_abort=lambda: None, on_progress=lambda _: None)
                if flashed.ok:
                    try:
                        port.confirm()
                    except GatewayError as exc:
                        return (
                            False,
                            f"re-flash of {kept_version} not confirmed: {exc}",
                            (flashed.version_after or ""),
                        )
                    return True, "", flashed.version_after or ""
                why += f"; re-flash of {kept_version} failed: {flashed.failure}"
        return False, why, self._version_of(port) or (result.version_after or "")

    def _finish(self, state: GatewayState, record: DeploymentRecord) -> DeploymentOutcome:
        reporter = self._require_reporter()
        if not record.final_report_id:
            record.final_report_id = uuid.uuid4().hex
            self.store.save(state)
        inventory = self.inventory()
        reporter.flush(30.0)
        started = self.clock()
        acknowledged = True
        try:
            self.backend.report(
                record.deployment_id,
                record.outcome,
                report_id=record.final_report_id,
                progress_pct=100 if record.outcome == "succeeded" else 0,
                failure_step=record.failure_step,
                failure_reason=record.failure_reason,
                ecus=self._ecus_pb(record),
                inventory=inventory,
                detail=self._summary(record),
            )
        except BackendUnavailable as exc:
            # Kept in the state: the next run resends it with the same report id.
            log.warning("final report on %s not delivered: %s", record.deployment_id, exc)
            acknowledged = False
        except BackendRefused as exc:
            log.warning("final report on %s refused: %s", record.deployment_id, exc)
        self._timings["report"] = self.clock() - started
        outcome = DeploymentOutcome(
            deployment_id=record.deployment_id,
            release_id=record.release_id,
            state=record.outcome,
            failure_step=record.failure_step,
            failure_reason=record.failure_reason,
            ecus=[EcuRecord(**e.__dict__) for e in record.ecus],
            timings_s=dict(self._timings),
            acknowledged=acknowledged,
        )
        if acknowledged:
            state.finished = [*state.finished, f"{record.deployment_id}#{record.attempt}"][
                -FINISHED_KEPT:
            ]
            state.deployment = None
            self.store.save(state)
            self._prune_artifacts(state)
        why = f" at {record.failure_step}: {record.failure_reason}" if record.failure_step else ""
        self._event(f"{record.deployment_id}: {record.outcome}{why} ({self._summary(record)})")
        return outcome

    def _refuse_unverified(self, deployment_id: str, step: str, reason: str) -> DeploymentOutcome:
        """Report a release that does not verify as failed; nothing was downloaded or flashed."""
        self._event(f"{deployment_id}: refused at {step}: {reason}")
        acknowledged = True
        try:
            self.backend.report(
                deployment_id,
                "failed",
                failure_step=step,
                failure_reason=reason,
                inventory=self.inventory(),
            )
        except (BackendUnavailable, BackendRefused) as exc:
            log.warning("report on %s: %s", deployment_id, exc)
            acknowledged = False
        return DeploymentOutcome(
            deployment_id,
            "",
            "failed",
            failure_step=step,
            failure_reason=reason,
            timings_s=dict(self._timings),
            acknowledged=acknowledged,
        )

    # ----------------------------------------------------------------- helpers
    def _fresh_unmet(self, since: float | None) -> list[str]:
        """Preconditions on frames received after ``since``, waiting briefly for them.

        After a flash the vehicle's communication resumes only when the ECUs
        are out of their programming sessions: give the restbus a moment.
        """
        deadline = self.clock() + self.fresh_signal_timeout_s
        while True:
            unmet = self.preconditions.unmet(since=since)
            if not unmet or self.clock() >= deadline:
                return unmet
            self.sleep(self.precondition_poll_s)

    def _runs_new(self, port: EcuPort, ecu: EcuRecord) -> bool:
        try:
            reading = port.read()
        except GatewayError:
            return False
        return (
            ecu.from_version != ecu.to_version
            and reading.inventory.software_version == ecu.to_version
            and not reading.update_pending
        )

    @staticmethod
    def _version_of(port: EcuPort) -> str:
        try:
            return port.read().inventory.software_version
        except GatewayError:
            return ""

    def _image_size(self, ecu: EcuRecord) -> int:
        try:
            return (self.artifacts_dir / ecu.image).stat().st_size if ecu.image else 0
        except OSError:
            return 0

    def inventory(self) -> list[EcuInventory]:
        """Read every ECU's identification (ECUs that do not answer are left out)."""
        readings: list[EcuInventory] = []
        for port in self.ecus.values():
            try:
                readings.append(port.read().inventory)
            except GatewayError as exc:
                self._event(f"inventory: {port.name} did not answer: {exc}")
        return readings

    @staticmethod
    def _ecus_pb(record: DeploymentRecord) -> list[dict[str, str]]:
        return [
            {
                "ecu": e.name,
                "state": str(e.state),
                "step": e.step,
                "reason": e.reason[:500],
                "from_version": e.from_version,
                "to_version": e.to_version,
            }
            for e in record.ecus
        ]

    @staticmethod
    def _summary(record: DeploymentRecord) -> str:
        parts = []
        for e in record.ecus:
            runs = e.version_after or e.from_version
            if e.state in (EcuState.CONFIRMED, EcuState.FLASHED):
                parts.append(f"{e.name} {e.from_version}->{e.version_after or e.to_version}")
            elif e.state is EcuState.ROLLED_BACK:
                parts.append(f"{e.name} rolled back to {runs}")
            elif e.state is EcuState.FAILED:
                parts.append(f"{e.name} failed at {e.step}, runs {runs}")
            elif e.state is EcuState.ROLLBACK_FAILED:
                parts.append(f"{e.name} NOT rolled back, runs {runs or '?'}")
            else:
                parts.append(f"{e.name} {str(e.state).replace('_', ' ')} ({e.from_version})")
        return ", ".join(parts)

    def _prune_artifacts(self, state: GatewayState) -> None:
        """Delete downloaded images no longer needed (keep those a rollback may re-flash)."""
        keep = set(state.kept_images.values())
        if state.deployment is not None:
            keep |= {e.image for e in state.deployment.ecus}
        with contextlib.suppress(OSError):
            for path in self.artifacts_dir.iterdir():
                if path.is_file() and path.name not in keep and not path.name.endswith(".part"):
                    path.unlink()

    def _start_reporter(self, deployment_id: str) -> Reporter:
        self._reporter = Reporter(self.backend, deployment_id)
        return self._reporter

    def _stop_reporter(self) -> None:
        if self._reporter is not None:
            self._reporter.flush(30.0)
            self._reporter.close()
            self._reporter = None

    def _require_reporter(self) -> Reporter:
        assert self._reporter is not None
        return self._reporter

    def _event(self, text: str) -> None:
        log.info("%s", text)
        if self.on_event is not None:
            self.on_event(text)


__all__ = [
    "DeploymentOutcome",
    "DeploymentSource",
    "EcuPort",
    "Reporter",
    "UpdateOrchestrator",
]
