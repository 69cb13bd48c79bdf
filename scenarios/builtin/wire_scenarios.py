"""Wire-fidelity scenarios: one vehicle flashed, the rollback paths, a small fleet campaign.

Each builds a :class:`~scenarios.wire.WireWorld` (the real backend over gRPC
on loopback, simulated ECUs on virtual CAN buses, a gateway thread per
vehicle), drives the operator's side, and judges the outcome twice: from the
backend's records (actions, campaign, events, inventory) and from the
simulated ECUs themselves (versions, boot status, bank records).

What they leave in the run:

* the gateways' events in the log (source: the VIN, kind ``gateway``),
  brought into the SimPy thread through a :class:`~scenarios.core.ThreadBridge`;
* ``spans``: per vehicle (lane ``VIN``) the phases of its deployment as the
  gateway announced them, and per ECU (lane ``VIN/ecu``) each UDS step of a
  flash as the flasher itself reported its start (``FlashProgress``), then
  confirm and rollback calls. Times are the wall clock of the run;
* ``outcomes``: one dict per vehicle (and case);
* a CAN trace per vehicle (ASC, what the gateway sent and received) under
  ``traces/``, listed in ``attachments``;
* a ``campaign`` series of action counts, and figures (durations, sizes).
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal

import can
import grpc
from pydantic import Field, field_validator, model_validator

from backend_stub.api import campaign_pb2, common_pb2
from ecu_sim import demo_vehicle
from ecu_sim.ecu import SimulatedEcu
from ecu_sim.nvm import NvmRecord
from gateway.flasher import FlashProgress, FlashResult, RollbackResult
from gateway.inventory import EcuReading
from gateway.orchestrator import DeploymentOutcome, EcuPort
from ota_formats.uds import DTC_BOOT_REVERTED, NO_BANK, BootResult
from ota_formats.vehicle import VehicleSpec
from scenarios.core import (
    ProcessGenerator,
    Run,
    Scenario,
    ScenarioError,
    ScenarioParams,
    ScenarioTimeout,
    Span,
    ThreadBridge,
    catch_up,
    run_time,
)
from scenarios.faults import (
    BootFailure,
    Fault,
    FaultTarget,
    GatewayRestart,
    PowerCut,
    TamperedArtifact,
    check_targets,
    inject,
)
from scenarios.registry import register
from scenarios.wire import GatewayLife, WireWorld, action_state

OLD, NEW = "1.0.0", "1.1.0"
"""What the demo vehicle's ECUs run, and the version the scenarios install."""
OLD_COUNTER, NEW_COUNTER = 1, 2
TERMINAL = ("succeeded", "failed", "rolled_back", "canceled")
ACTIVE = ("notified", "downloading", "installing")
ACTION_STATES = tuple(
    name.removeprefix("ACTION_STATE_").lower()
    for name in common_pb2.ActionState.keys()  # noqa: SIM118 (an enum wrapper, not a dict)
    if name != "ACTION_STATE_UNSPECIFIED"
)
POLL_S = 0.2
"""How often the scenarios ask the backend how things stand."""


def demo_spec(vin: str | None = None) -> VehicleSpec:
    """Return the bundled demo vehicle, under another VIN if given."""
    spec = demo_vehicle()
    return spec.with_overrides(vin=vin) if vin is not None else spec


# ------------------------------------------------------------------- timeline
@dataclass
class _Open:
    step: str
    start: float
    life: GatewayLife | None


class Timeline:
    """Turns what the gateways' threads report into :class:`Span` s (used in the SimPy thread).

    A span started by a gateway that was later killed ends at its death,
    failed; what a killed gateway reports afterwards is not taken.
    """

    def __init__(self, run: Run, prefix: str = "") -> None:
        self.run = run
        self.prefix = prefix
        self._open: dict[str, _Open] = {}

    def lane(self, vin: str, ecu: str | None = None) -> str:
        """Return the lane of a vehicle or of one of its ECUs."""
        return f"{self.prefix}{vin}" + (f"/{ecu}" if ecu else "")

    @staticmethod
    def _dead(life: GatewayLife | None, t: float) -> bool:
        return life is not None and life.killed_at is not None and t > life.killed_at

    def _add(self, lane: str, step: str, start: float, end: float, ok: bool, detail: str) -> None:
        start_s = run_time(self.run.env, start)
        end_s = max(start_s, run_time(self.run.env, end))
        self.run.spans.append(Span(lane, step, start_s, end_s, ok, detail))

    def _close(self, lane: str, end: float, ok: bool, detail: str = "") -> None:
        opened = self._open.pop(lane, None)
        if opened is None:
            return
        life = opened.life
        if life is not None and life.killed_at is not None and end > life.killed_at:
            end, ok, detail = life.killed_at, False, "gateway killed"
        self._add(lane, opened.step, opened.start, end, ok, detail)

    def is_open(self, lane: str, step: str, life: GatewayLife | None) -> bool:
        """Return whether ``step`` of ``life`` is the lane's open span."""
        opened = self._open.get(lane)
        return opened is not None and (opened.step, opened.life) == (step, life)

    def begin(self, lane: str, step: str, t: float, life: GatewayLife | None) -> None:
        """Start a span on ``lane`` (ending the lane's open one there)."""
        if self._dead(life, t):
            return
        self._close(lane, t, True)
        self._open[lane] = _Open(step, t, life)

    def end(self, lane: str, t: float, ok: bool, detail: str = "") -> None:
        """End the lane's open span."""
        if lane in self._open:
            self._close(lane, t, ok, detail)

    def flash_ended(self, lane: str, life: GatewayLife, result: FlashResult, t: float) -> None:
        """End a flash: its last step failed if the flash failed there."""
        opened = self._open.get(lane)
        if opened is None or opened.life is not life:
            return
        failure = result.failure
        failed_here = failure is not None and str(failure.step) == opened.step
        self._close(lane, t, not failed_here, failure.reason if failed_here and failure else "")

    def call(
        self,
        lane: str,
        step: str,
        life: GatewayLife,
        start: float,
        end: float,
        ok: bool,
        detail: str = "",
    ) -> None:
        """Add a span of one whole call (confirm, rollback)."""
        if self._dead(life, start):
            return
        self._close(lane, start, True)
        if life.killed_at is not None and end > life.killed_at:
            end, ok, detail = life.killed_at, False, "gateway killed"
        self._add(lane, step, start, end, ok, detail)

    def finish(self) -> None:
        """End every open span (now, failed, unless its gateway died earlier)."""
        now = time.monotonic()
        for lane in list(self._open):
            self._close(lane, now, False, "unfinished")


class _TimedPort:
    """An ECU port that tells the timeline when each UDS step starts and how calls end.

    It passes every call through to the gateway's own port unchanged; the step
    starts are the flasher's own progress reports.
    """

    def __init__(
        self,
        port: EcuPort,
        lane: str,
        life: GatewayLife,
        timeline: Timeline,
        bridge: ThreadBridge,
    ) -> None:
        self.port = port
        self.name = port.name
        self._lane = lane
        self._life = life
        self._timeline = timeline
        self._bridge = bridge

    def read(self) -> EcuReading:
        """Read identification and boot status."""
        return self.port.read()

    def flash(
        self,
        image: bytes,
        *,
        should_abort: Callable[[], str | None],
        on_progress: Callable[[FlashProgress], None],
    ) -> FlashResult:
        """Flash through the gateway's port, noting when each step starts."""
        last: list[str] = []
        timeline, lane, life = self._timeline, self._lane, self._life

        def progress(p: FlashProgress) -> None:
            step = str(p.step)
            if not last or last[-1] != step:
                last.append(step)
                t = time.monotonic()
                self._bridge.call(lambda: timeline.begin(lane, step, t, life))
            on_progress(p)

        result = self.port.flash(image, should_abort=should_abort, on_progress=progress)
        t = time.monotonic()
        self._bridge.call(lambda: timeline.flash_ended(lane, life, result, t))
        return result

    def confirm(self) -> None:
        """Confirm through the gateway's port."""
        start = time.monotonic()
        try:
            self.port.confirm()
        except Exception as exc:
            self._post("confirm", start, False, str(exc))
            raise
        self._post("confirm", start, True)

    def activate_previous(self) -> RollbackResult:
        """Switch back through the gateway's port."""
        start = time.monotonic()
        result = self.port.activate_previous()
        self._post("rollback (bank switch)", start, result.ok, result.reason)
        return result

    def _post(self, step: str, start: float, ok: bool, detail: str = "") -> None:
        end = time.monotonic()
        timeline, lane, life = self._timeline, self._lane, self._life
        self._bridge.call(lambda: timeline.call(lane, step, life, start, end, ok, detail))


# Gateway events that start a phase of a deployment on the vehicle's lane.
_PHASES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^deployment \S+ \(\w+\) offered$"), "download and verify"),
    (re.compile(r"^\S+: waiting for preconditions"), "wait for preconditions"),
    (re.compile(r"^\S+: \d+ image\(s\) verified$"), "install"),
    (re.compile(r"^\S+: flashing "), "install"),
    (re.compile(r"^resuming \S+ at "), "install (resumed)"),
    (re.compile(r"^\S+: rolling back "), "roll back"),
)
_FINISHED = re.compile(r"^\S+: (succeeded|failed|rolled_back)(?: at (.*?))?(?: \(|$)")
_REFUSED = re.compile(r"^\S+: (refused at .*|canceled by the backend.*)$")


# ------------------------------------------------------------------------ rig
class Rig:
    """One wire world of a run, with what the scenarios observe of it.

    The world reports gateway events, UDS steps and CAN frames; the rig logs
    them into the run, keeps a CAN trace per vehicle and a timeline, and
    closes it all (traces, then the world) on :meth:`close` or at the end of
    the run.
    """

    def __init__(
        self,
        run: Run,
        bridge: ThreadBridge,
        name: str,
        specs: Sequence[VehicleSpec],
        *,
        prefix: str = "",
    ) -> None:
        self.run = run
        self.bridge = bridge
        self.prefix = prefix
        self.timeline = Timeline(run, prefix)
        self._stack = ExitStack()
        run.stack.enter_context(self._stack)
        self._stack.callback(self._finish)
        # Known before it starts: the gateways report as soon as they run.
        self.world = WireWorld(
            run.directory / name,
            specs,
            proxy_backend=True,
            on_event=self._on_event,
            on_gateway=self._on_gateway,
        )
        self._stack.enter_context(self.world)
        traces = run.directory / "traces"
        traces.mkdir(parents=True, exist_ok=True)
        for vin in self.world.vehicles:
            path = traces / f"{prefix.replace('/', '-')}{vin}.asc"
            writer = can.ASCWriter(str(path))
            self.world.add_trace(vin, writer)
            # Detach before closing, so that no gateway writes into a closed file.
            self._stack.callback(writer.stop)
            self._stack.callback(self.world.remove_trace, vin, writer)
            run.attachments[f"trace {prefix}{vin}"] = str(path.relative_to(run.directory))

    def close(self) -> None:
        """Close the traces, then stop the world."""
        self._stack.close()

    def _finish(self) -> None:
        # What the world's threads reported last belongs to this world's timeline.
        self.bridge.drain()
        self.timeline.finish()

    # -- what the world's threads report
    def _on_event(self, vin: str, text: str) -> None:
        t = time.monotonic()
        vehicle = self.world.vehicles.get(vin)
        life = vehicle.lives[-1] if vehicle is not None and vehicle.lives else None
        self.bridge.call(lambda: self._event(vin, text, t, life))

    def _event(self, vin: str, text: str, t: float, life: GatewayLife | None) -> None:
        self.run.event(vin, "gateway", text)
        lane = self.timeline.lane(vin)
        for pattern, phase in _PHASES:
            if pattern.search(text):
                # Flashing the next ECU is still the same phase (the ECU lanes tell them apart).
                if not self.timeline.is_open(lane, phase, life):
                    self.timeline.begin(lane, phase, t, life)
                return
        finished = _FINISHED.match(text)
        if finished is not None:
            state, where = finished.groups()
            self.timeline.end(lane, t, state == "succeeded", f"{state} {where or ''}".strip())
            return
        refused = _REFUSED.match(text)
        if refused is not None:
            self.timeline.end(lane, t, False, refused.group(1))

    def _on_gateway(self, vin: str, life: GatewayLife) -> None:
        orchestrator = life.gateway.orchestrator
        orchestrator.ecus = {
            name: _TimedPort(port, self.timeline.lane(vin, name), life, self.timeline, self.bridge)
            for name, port in orchestrator.ecus.items()
        }

    # -- helpers for the scenarios (SimPy processes)
    def settle(self) -> ProcessGenerator:
        """SimPy process: let scenario time catch up after a blocking call."""
        yield from catch_up(self.run.env)

    def start_faults(self, target: FaultTarget, faults: Iterable[Fault]) -> ProcessGenerator:
        """SimPy process: start a process per fault, and let those due at once apply."""
        for fault in faults:
            self.run.env.process(inject(target, fault))
        yield self.run.env.timeout(0)

    def counts(self, campaign_id: str) -> dict[str, float]:
        """Return the campaign's action counts by state, every state present."""
        counts = self.world.operator.counts(campaign_id)
        return {state: float(counts.get(state, 0)) for state in ACTION_STATES}

    def wait_actions(
        self,
        campaign_id: str,
        vins: Sequence[str],
        *,
        timeout_s: float,
        done: Callable[[], bool] | None = None,
    ) -> ProcessGenerator:
        """SimPy process: return the vehicles' actions once all ended (or once ``done()`` holds).

        The actions returned are read after ``done()`` held, so that they are
        no older than what it judged. Samples the campaign's counts on the way.
        The backend may be down for a while (a fault): the wait goes on.
        """
        deadline = self.run.now + timeout_s
        wanted = set(vins)
        last_sample = -1.0
        while True:
            yield from catch_up(self.run.env)
            finished = False
            try:
                judged = done() if done is not None else None
                actions = {
                    a.vin: a for a in self.world.operator.actions(campaign_id) if a.vin in wanted
                }
                if self.run.now - last_sample >= 0.5:
                    self.run.sample("campaign", **self.counts(campaign_id))
                    last_sample = self.run.now
                if len(actions) == len(wanted):
                    finished = (
                        judged
                        if judged is not None
                        else all(action_state(a) in TERMINAL for a in actions.values())
                    )
            except grpc.RpcError as exc:
                # A backend restarting (a fault) answers nothing for a while.
                if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise
                actions = {}
            broken = {vin: self.world.vehicle(vin).errors for vin in vins}
            broken = {vin: errors for vin, errors in broken.items() if errors}
            if broken:
                raise ScenarioError(f"a gateway stopped: {broken}")
            if finished:
                return actions
            if self.run.now >= deadline:
                states = {vin: action_state(a) for vin, a in actions.items()}
                raise ScenarioTimeout(
                    f"the deployments did not end within {timeout_s:g} s: {states}"
                )
            yield self.run.env.timeout(POLL_S)

    def wait_outcomes(
        self, actions: dict[str, campaign_pb2.Action], *, timeout_s: float = 30.0
    ) -> ProcessGenerator:
        """SimPy process: return each vehicle's gateway outcome of its deployment (or ``None``)."""

        def found(vin: str) -> DeploymentOutcome | None:
            wanted = actions[vin].deployment_id
            return next(
                (
                    o
                    for o in reversed(self.world.vehicle(vin).outcomes)
                    if o.deployment_id == wanted
                ),
                None,
            )

        try:
            yield from self.bridge.wait_until(
                lambda: all(found(vin) is not None for vin in actions),
                timeout_s=timeout_s,
                what="the gateways' outcomes",
            )
        except ScenarioTimeout as exc:
            self.run.event("scenario", "warning", str(exc))
        return {vin: found(vin) for vin in actions}

    def inventory(self, vin: str) -> dict[str, tuple[str, int, int]]:
        """Return the backend's record of each ECU: (version, active bank, anti-rollback)."""
        vehicle = self.world.operator.vehicle(vin)
        return {e.name: (e.software_version, e.active_bank, e.anti_rollback) for e in vehicle.ecus}

    def record_outcome(
        self,
        vin: str,
        action: campaign_pb2.Action | None,
        outcome: DeploymentOutcome | None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Add one vehicle's outcome to the run; return it."""
        sim = self.world.vehicle(vin).sim
        record: dict[str, Any] = {
            **extra,
            "vin": vin,
            "state": action_state(action) if action is not None else "none",
            "wave": int(action.wave) if action is not None else None,
            "attempts": int(action.attempts) if action is not None else 0,
            "failure_step": action.failure_step if action is not None else "",
            "failure_reason": action.failure_reason if action is not None else "",
            "gateway_state": outcome.state if outcome is not None else "",
            "versions": {name: ecu.version for name, ecu in sim.ecus.items()},
            "flash_s": {
                key.removeprefix("flash "): round(value, 4)
                for key, value in (outcome.timings_s if outcome is not None else {}).items()
                if key.startswith("flash ")
            },
        }
        self.run.outcomes.append(record)
        return record


# ---------------------------------------------------------------- judgements
def nvm(sim_ecus: dict[str, SimulatedEcu]) -> dict[str, NvmRecord]:
    """Return a copy of every ECU's NVM record (banks, counters, DTCs, boot count)."""
    return {name: copy.deepcopy(ecu.server.boot.record) for name, ecu in sim_ecus.items()}


def boot_problems(ecu: SimulatedEcu, *, may_revert: bool = False) -> list[str]:
    """Return what is not sane in an ECU's boot state (nothing: it is sane).

    Sane: nothing left on trial, the running version is the active bank's
    valid image, the anti-rollback counter is that of the version it runs
    (raised only by a confirmed update), the last boot went fine (or, for an
    ECU whose new image was made to fail, reverted).
    """
    problems: list[str] = []
    status = ecu.boot_status
    record = ecu.server.boot.record
    version = ecu.version
    if status.pending_bank != NO_BANK:
        problems.append(f"bank {status.pending_bank} still pending its trial boot")
    if status.active_bank not in (0, 1):
        problems.append(f"no active bank ({status.active_bank})")
    else:
        bank = record.banks[status.active_bank]
        if (bank.state, bank.version) != ("valid", version):
            problems.append(
                f"active bank {status.active_bank} is {bank.state} {bank.version!r}, "
                f"runs {version!r}"
            )
    expected_counter = NEW_COUNTER if version == NEW else OLD_COUNTER
    if status.anti_rollback_counter != expected_counter:
        problems.append(
            f"anti-rollback counter {status.anti_rollback_counter}, expected {expected_counter}"
        )
    allowed = {BootResult.OK, BootResult.REVERTED} if may_revert else {BootResult.OK}
    if status.last_boot_result not in allowed:
        problems.append(f"last boot {BootResult(status.last_boot_result).name}")
    return problems


def check_vehicle(
    run: Run,
    rig: Rig,
    vin: str,
    state: str,
    *,
    label: str,
    reverted: Sequence[str] = (),
) -> None:
    """Record the checks every vehicle must pass whatever happened to it.

    One version everywhere (the new release if the backend says succeeded,
    else the old one), sane boot states, and a backend inventory that is what
    the ECUs run.
    """
    sim = rig.world.vehicle(vin).sim
    versions = {name: ecu.version for name, ecu in sim.ecus.items()}
    expected = NEW if state == "succeeded" else OLD
    run.check_equal(
        f"{label}: every ECU runs {expected} ({state})", versions, dict.fromkeys(versions, expected)
    )
    problems = {
        name: p
        for name, ecu in sim.ecus.items()
        if (p := boot_problems(ecu, may_revert=name in reverted))
    }
    run.check(f"{label}: boot status sane", not problems, str(problems) if problems else "")
    actual = {
        name: (ecu.version, ecu.boot_status.active_bank, ecu.boot_status.anti_rollback_counter)
        for name, ecu in sim.ecus.items()
    }
    run.check_equal(f"{label}: backend inventory is what the ECUs run", rig.inventory(vin), actual)


# ---------------------------------------------------------------------- flash
class FlashParams(ScenarioParams):
    """Parameters of :class:`FlashScenario`."""

    image_kib: int = Field(default=8, ge=1, le=4096)
    """Size of each ECU's application image."""
    faults: list[Fault] = Field(default_factory=list)
    """Faults the update must ride out (it is still expected to succeed)."""
    timeout_s: float = Field(default=120.0, gt=0)
    """How long the deployment may take."""


@register
class FlashScenario(Scenario):
    """One demo vehicle updated end to end: every ECU to the new release, confirmed."""

    name = "flash"
    summary = "update the demo vehicle's 3 ECUs over the real backend and gateway"
    fidelity = "wire"
    Params = FlashParams

    def time_limit(self) -> float:
        """Return the deployment timeout plus time to build and judge."""
        params = self.run.params
        assert isinstance(params, FlashParams)
        return params.timeout_s + 60.0

    def main(self) -> ProcessGenerator:
        """Build the world, run the campaign, judge the vehicle and the backend."""
        run = self.run
        params = run.params
        assert isinstance(params, FlashParams)
        spec = demo_spec()
        vin = spec.vin
        check_targets(params.faults, {vin: [e.name for e in spec.ecus]})
        bridge = ThreadBridge(run.env)
        run.status("starting the backend, the vehicle and its gateway")
        rig = Rig(run, bridge, "world", [spec])
        yield from rig.settle()
        wire = rig.world.vehicle(vin)
        before = nvm(wire.sim.ecus)
        size = params.image_kib * 1024
        release = rig.world.release_for(vin, NEW, NEW_COUNTER, size=size, name="flash")
        run.event("operator", "release", f"{release.release_id}: {NEW}, 3 images of {size} bytes")
        yield from rig.settle()
        target = FaultTarget(run, rig.world, bridge, vin=vin, release=release, rng=run.rng)
        yield from rig.start_faults(target, params.faults)

        run.status(f"updating {vin} to {NEW}")
        started = run.now
        campaign_id = rig.world.operator.start_campaign(release.release_id, [vin], name="flash")
        run.event("operator", "campaign", f"{campaign_id} started")
        actions = yield from rig.wait_actions(campaign_id, [vin], timeout_s=params.timeout_s)
        outcomes = yield from rig.wait_outcomes(actions)
        run.figure("campaign_s", round(run.now - started, 3))
        action, outcome = actions[vin], outcomes[vin]
        state = action_state(action)
        rig.record_outcome(vin, action, outcome)

        # The backend's records.
        why = f" ({action.failure_step}: {action.failure_reason})" if action.failure_step else ""
        run.check("backend: action succeeded", state == "succeeded", f"{state}{why}")
        run.check_equal(
            "backend: campaign completed",
            rig.world.operator.campaign_state(campaign_id),
            "completed",
        )
        run.check_equal(
            "gateway: outcome succeeded and acknowledged",
            (outcome.state, outcome.acknowledged) if outcome is not None else None,
            ("succeeded", True),
        )
        # The ECUs themselves.
        versions = wire.versions()
        run.check_equal(
            "ecus: every ECU runs the new version", versions, dict.fromkeys(versions, NEW)
        )
        problems: dict[str, list[str]] = {}
        for name, ecu in wire.sim.ecus.items():
            found = boot_problems(ecu)
            status = ecu.boot_status
            record = ecu.server.boot.record
            old_bank = before[name].active_bank
            if not record.confirmed:
                found.append("not confirmed")
            if old_bank is None or status.active_bank == old_bank:
                found.append(f"runs from bank {status.active_bank}, as before the update")
            elif record.banks[old_bank] != before[name].banks[old_bank]:
                found.append(f"the previous image in bank {old_bank} was changed")
            if found:
                problems[name] = found
        run.check(
            "ecus: new image confirmed in the other bank, previous one kept",
            not problems,
            str(problems) if problems else f"{len(versions)} ECUs",
        )
        run.check_equal(
            "backend: inventory updated",
            rig.inventory(vin),
            {
                name: (NEW, ecu.boot_status.active_bank, NEW_COUNTER)
                for name, ecu in wire.sim.ecus.items()
            },
        )
        if params.faults:
            run.check_equal(
                "faults: every fault applied",
                sorted(f.kind for f in target.applied),
                sorted(f.kind for f in params.faults),
            )
        # Figures: what the update took.
        if outcome is not None:
            for key, value in outcome.timings_s.items():
                run.figure(f"{key.replace(' ', '_')}_s", round(value, 4))
            flash_s = sum(v for k, v in outcome.timings_s.items() if k.startswith("flash "))
            if flash_s > 0 and state == "succeeded":
                run.figure("flash_throughput_bps", round(3 * size / flash_s))
        run.figure("image_bytes", size)
        run.figure("can_frames", wire.link.sent + wire.link.received)


# ------------------------------------------------------------------- rollback
RollbackCaseName = Literal["power-cut", "boot-failure", "tampered", "gateway-restart"]
ROLLBACK_CASES: tuple[RollbackCaseName, ...] = (
    "power-cut",
    "boot-failure",
    "tampered",
    "gateway-restart",
)


class RollbackParams(ScenarioParams):
    """Parameters of :class:`RollbackScenario`."""

    cases: list[RollbackCaseName] = Field(default_factory=lambda: list(ROLLBACK_CASES))
    """Which cases to run, in this order, each in a fresh world."""
    image_kib: int = Field(default=12, ge=2, le=4096)
    timeout_s: float = Field(default=90.0, gt=0)
    """How long each case's deployment may take."""

    @field_validator("cases")
    @classmethod
    def _distinct(cls, cases: list[RollbackCaseName]) -> list[RollbackCaseName]:
        if not cases:
            raise ValueError("name at least one case")
        if len(set(cases)) != len(cases):
            raise ValueError("a case is named twice")
        return cases


@dataclass(frozen=True)
class RollbackCase:
    """One way an update goes wrong, and what must come of it."""

    name: RollbackCaseName
    fault: Fault
    states: tuple[str, ...]
    """Backend states that are correct for the action."""
    failure_step: str
    """The recorded failure step, when the state is not succeeded."""
    reason: str
    """Text the recorded failure reason contains."""
    reverted: tuple[str, ...] = ()
    """ECUs whose last boot may be a revert."""


def rollback_case(name: RollbackCaseName, image_bytes: int) -> RollbackCase:
    """Return the fault and expectations of a rollback case."""
    if name == "power-cut":
        return RollbackCase(
            name,
            PowerCut(ecu="bcm", offset=image_bytes // 2, restore_after_s=0.3),
            ("rolled_back",),
            "bcm: transfer",
            "",
        )
    if name == "boot-failure":
        return RollbackCase(
            name,
            BootFailure(ecu="bms"),
            ("rolled_back",),
            "bms: verify",
            "failed its trial boot",
            reverted=("bms",),
        )
    if name == "tampered":
        return RollbackCase(
            name, TamperedArtifact(ecu="bcm"), ("failed",), "verify image", "artifact for bcm"
        )
    # Killed in bms's programming session: the next gateway resumes from the state on disk.
    return RollbackCase(
        name,
        GatewayRestart(during_flash_of="bms", down_s=0.5),
        ("succeeded", "rolled_back"),
        "bms:",
        "",
    )


@register
class RollbackScenario(Scenario):
    """The rollback paths of an update, each in a fresh world."""

    name = "rollback"
    summary = "power cut mid-transfer, boot failure, tampered image, gateway restart mid-flash"
    fidelity = "wire"
    Params = RollbackParams

    def time_limit(self) -> float:
        """Return each case's timeout plus time to build and judge it."""
        params = self.run.params
        assert isinstance(params, RollbackParams)
        return len(params.cases) * (params.timeout_s + 60.0)

    def main(self) -> ProcessGenerator:
        """Run each case in its own world; judge the vehicle and the backend after each."""
        run = self.run
        params = run.params
        assert isinstance(params, RollbackParams)
        bridge = ThreadBridge(run.env)
        for name in params.cases:
            yield from self._case(bridge, rollback_case(name, params.image_kib * 1024), params)

    def _case(
        self, bridge: ThreadBridge, case: RollbackCase, params: RollbackParams
    ) -> ProcessGenerator:
        run = self.run
        spec = demo_spec()
        vin = spec.vin
        run.status(f"{case.name}: starting a fresh world")
        run.event("scenario", "case", case.name)
        rig = Rig(run, bridge, case.name, [spec], prefix=f"{case.name}/")
        yield from rig.settle()
        wire = rig.world.vehicle(vin)
        before = nvm(wire.sim.ecus)
        size = params.image_kib * 1024
        release = rig.world.release_for(vin, NEW, NEW_COUNTER, size=size, name=case.name)
        yield from rig.settle()
        target = FaultTarget(run, rig.world, bridge, vin=vin, release=release, rng=run.rng)
        yield from rig.start_faults(target, [case.fault])
        started = run.now
        campaign_id = rig.world.operator.start_campaign(release.release_id, [vin], name=case.name)
        run.status(f"{case.name}: campaign {campaign_id}")
        actions = yield from rig.wait_actions(campaign_id, [vin], timeout_s=params.timeout_s)
        outcomes = yield from rig.wait_outcomes(actions)
        run.figure(f"{case.name}_s", round(run.now - started, 3))
        action, outcome = actions[vin], outcomes[vin]
        state = action_state(action)
        rig.record_outcome(vin, action, outcome, case=case.name)
        label = case.name

        run.check_equal(
            f"{label}: fault applied", [f.kind for f in target.applied], [case.fault.kind]
        )
        run.check(
            f"{label}: backend state",
            state in case.states,
            f"{state} (expected {' or '.join(case.states)})",
        )
        if state != "succeeded":
            run.check(
                f"{label}: failure step and reason recorded",
                action.failure_step.startswith(case.failure_step)
                and case.reason in action.failure_reason
                and bool(action.failure_reason),
                f"{action.failure_step}: {action.failure_reason}",
            )
        run.check_equal(
            f"{label}: the gateway reports what the backend recorded",
            outcome.state if outcome is not None else None,
            state,
        )
        run.check_equal(
            f"{label}: campaign",
            rig.world.operator.campaign_state(campaign_id),
            "completed" if state == "succeeded" else "paused",
        )
        check_vehicle(run, rig, vin, state, label=label, reverted=case.reverted)
        self._specific(rig, case, state, before)
        rig.close()
        yield from rig.settle()

    def _specific(
        self, rig: Rig, case: RollbackCase, state: str, before: dict[str, NvmRecord]
    ) -> None:
        """Record the case's own check of the ECUs' banks."""
        run = self.run
        wire = rig.world.vehicle(demo_spec().vin)
        after = nvm(wire.sim.ecus)
        label = case.name
        if case.name == "power-cut":
            # ecm and bms went back by a bank switch; bcm's interrupted download left nothing.
            switched = all(
                after[n].active_bank == before[n].active_bank
                and after[n].banks[1 - (before[n].active_bank or 0)].version == NEW
                for n in ("ecm", "bms")
            )
            bcm_other = after["bcm"].banks[1 - (before["bcm"].active_bank or 0)]
            run.check(
                f"{label}: earlier ECUs switched back, bcm's other bank erased",
                switched and bcm_other.state == "erased",
                f"bcm other bank {bcm_other.state}",
            )
        elif case.name == "boot-failure":
            bms = wire.sim.ecu("bms")
            other = after["bms"].banks[1 - (before["bms"].active_bank or 0)]
            run.check(
                f"{label}: bms reverted by itself, new image rejected, bcm untouched",
                DTC_BOOT_REVERTED in bms.dtcs
                and (other.state, other.version) == ("rejected", NEW)
                and after["bcm"] == before["bcm"],
                f"bms other bank {other.state} {other.version}",
            )
        elif case.name == "tampered":
            untouched = [n for n in after if after[n] == before[n]]
            run.check_equal(f"{label}: no ECU was touched", untouched, list(after))
        else:
            lives = wire.lives
            resumed = any(e.startswith("resuming ") for e in wire.events)
            run.check(
                f"{label}: gateway killed mid-flash, the next one resumed the deployment",
                len(lives) == 2 and lives[0].killed_at is not None and resumed,
                f"{len(lives)} gateway(s), resumed: {resumed}",
            )


# ---------------------------------------------------------------------- fleet
class FleetWireParams(ScenarioParams):
    """Parameters of :class:`FleetWireScenario`."""

    vehicles: int = Field(default=5, ge=2, le=20)
    image_kib: int = Field(default=8, ge=1, le=1024)
    waves: list[int] = Field(default_factory=lambda: [1, 2])
    """Vehicles per wave; the rest form one last wave."""
    success_threshold_pct: float = Field(default=95.0, ge=0, le=100)
    error_threshold_pct: float = Field(default=50.0, ge=0, le=100)
    failing_vehicle: int | None = Field(default=1, ge=0)
    """Index (in VIN order) of the vehicle whose ``failing_ecu`` fails its trial boot."""
    failing_ecu: Literal["ecm", "bms", "bcm"] = "bms"
    resume: bool = True
    """Resume the campaign after an automatic pause (the operator accepts the failure)."""
    faults: list[Fault] = Field(default_factory=list)
    timeout_s: float = Field(default=120.0, gt=0)

    @field_validator("waves")
    @classmethod
    def _positive(cls, waves: list[int]) -> list[int]:
        if any(w <= 0 for w in waves):
            raise ValueError("every wave needs at least one vehicle")
        return waves

    @model_validator(mode="after")
    def _deterministic(self) -> FleetWireParams:
        if self.failing_vehicle is not None and self.failing_vehicle >= self.vehicles:
            raise ValueError(f"failing_vehicle must be below vehicles ({self.vehicles})")
        course = expected_course(self)
        if course.racy:
            raise ValueError(
                f"wave {course.failing_wave} may pass its success threshold before its failure "
                "reaches its error threshold: the outcome would depend on timing; "
                "raise success_threshold_pct or error_threshold_pct"
            )
        return self


def wave_sizes(vehicles: int, waves: Sequence[int]) -> list[int]:
    """Return the wave sizes a campaign of ``vehicles`` gets: the listed counts, then the rest."""
    sizes: list[int] = []
    left = vehicles
    for count in waves:
        if left == 0:
            break
        sizes.append(min(count, left))
        left -= sizes[-1]
    if left:
        sizes.append(left)
    return sizes


@dataclass(frozen=True)
class Course:
    """How a campaign with one failing vehicle must go, by its waves and thresholds."""

    sizes: list[int]
    wave_of: list[int]
    """The wave of each vehicle, in VIN order."""
    failing_wave: int | None
    pause: Literal["", "error threshold", "success threshold"]
    """Why the campaign pauses on the failing wave (empty: it does not)."""
    racy: bool = False

    def pause_reason_prefix(self) -> str:
        """Return how the backend's pause reason starts."""
        if self.pause == "error threshold":
            return f"error threshold reached in wave {self.failing_wave}"
        return f"wave {self.failing_wave} ended with"


def expected_course(params: FleetWireParams) -> Course:
    """Return what the campaign engine's rules make of the parameters (one failure)."""
    sizes = wave_sizes(params.vehicles, params.waves)
    wave_of = [index for index, size in enumerate(sizes) for _ in range(size)]
    if params.failing_vehicle is None:
        return Course(sizes, wave_of, None, "")
    wave = wave_of[params.failing_vehicle]
    size = sizes[wave]
    error_pause = params.error_threshold_pct * size <= 100.0  # one failed of ``size``
    passes_anyway = (size - 1) * 100.0 >= params.success_threshold_pct * size
    if error_pause:
        return Course(sizes, wave_of, wave, "error threshold", racy=passes_anyway)
    if passes_anyway:
        return Course(sizes, wave_of, wave, "")
    return Course(sizes, wave_of, wave, "success threshold")


def fleet_vin(index: int) -> str:
    """Return the VIN of the ``index``-th vehicle of the wire fleet."""
    return f"WHLFLT{index + 1:011d}"


@register
class FleetWireScenario(Scenario):
    """A campaign in waves over a few vehicles, each with its own gateway; one vehicle fails."""

    name = "fleet-wire"
    summary = "a campaign in waves over 5 vehicles via gRPC; one fails its boot"
    fidelity = "wire"
    Params = FleetWireParams

    def time_limit(self) -> float:
        """Return the campaign timeout plus time to build and judge."""
        params = self.run.params
        assert isinstance(params, FleetWireParams)
        return 2 * params.timeout_s + 90.0

    def main(self) -> ProcessGenerator:
        """Run the campaign; judge waves, thresholds, pause, and every vehicle."""
        run = self.run
        params = run.params
        assert isinstance(params, FleetWireParams)
        course = expected_course(params)
        vins = [fleet_vin(i) for i in range(params.vehicles)]
        specs = [demo_spec(vin) for vin in vins]
        check_targets(params.faults, {s.vin: [e.name for e in s.ecus] for s in specs})
        bridge = ThreadBridge(run.env)
        run.status(f"starting the backend and {len(vins)} vehicles with their gateways")
        rig = Rig(run, bridge, "world", specs)
        yield from rig.settle()
        operator = rig.world.operator
        size = params.image_kib * 1024
        release = rig.world.release_for(vins[0], NEW, NEW_COUNTER, size=size, name="fleet")
        yield from rig.settle()
        failing = vins[params.failing_vehicle] if params.failing_vehicle is not None else None
        faults: list[Fault] = list(params.faults)
        if failing is not None:
            faults.insert(0, BootFailure(vin=failing, ecu=params.failing_ecu))
        target = FaultTarget(run, rig.world, bridge, release=release, rng=run.rng)
        yield from rig.start_faults(target, faults)

        started = run.now
        campaign_id = operator.start_campaign(
            release.release_id,
            vins,
            name="fleet",
            waves=params.waves,
            success_threshold_pct=params.success_threshold_pct,
            error_threshold_pct=params.error_threshold_pct,
        )
        run.event("operator", "campaign", f"{campaign_id}: waves {course.sizes}")
        run.status(f"campaign {campaign_id} over {len(vins)} vehicles, waves {course.sizes}")

        def settled() -> bool:
            # Ended, or paused with the paused wave's vehicles done (nothing new starts then).
            state = operator.campaign_state(campaign_id)
            if state != "paused":
                return state in ("completed", "aborted")
            return not any(action_state(a) in ACTIVE for a in operator.actions(campaign_id))

        actions = yield from rig.wait_actions(
            campaign_id, vins, timeout_s=params.timeout_s, done=settled
        )
        campaign = operator.campaign(campaign_id)
        first_state = _campaign_state(campaign)
        paused_at = {vin: action_state(a) for vin, a in actions.items()}
        pause_reason = campaign.pause_reason
        run.figure(
            "paused_after_s" if first_state == "paused" else "campaign_s",
            round(run.now - started, 3),
        )
        resumed_after_event = 0
        if first_state == "paused":
            run.event("operator", "campaign", f"paused: {pause_reason}")
            resumed_after_event = max((e.event_id for e in operator.events(campaign_id)), default=0)
            if params.resume:
                operator.campaigns.ResumeCampaign(
                    campaign_pb2.CampaignRequest(campaign_id=campaign_id), timeout=30
                )
                run.event("operator", "campaign", "resumed (the wave's failure accepted)")
                actions = yield from rig.wait_actions(
                    campaign_id, vins, timeout_s=params.timeout_s, done=settled
                )
                campaign = operator.campaign(campaign_id)
                run.figure("campaign_s", round(run.now - started, 3))
        run.sample("campaign", **rig.counts(campaign_id))
        outcomes = yield from rig.wait_outcomes(
            {vin: a for vin, a in actions.items() if action_state(a) in TERMINAL}
        )
        for index, vin in enumerate(vins):
            rig.record_outcome(vin, actions[vin], outcomes.get(vin), index=index)
        if params.faults:
            run.check_equal(
                "faults: every fault applied",
                sorted(f.kind for f in target.applied),
                sorted(f.kind for f in faults),
            )
        self._judge(
            rig,
            course,
            campaign_id,
            actions,
            outcomes,
            failing,
            first_state,
            pause_reason,
            paused_at,
            resumed_after_event,
        )

    def _judge(
        self,
        rig: Rig,
        course: Course,
        campaign_id: str,
        actions: dict[str, campaign_pb2.Action],
        outcomes: dict[str, DeploymentOutcome | None],
        failing: str | None,
        first_state: str,
        pause_reason: str,
        paused_at: dict[str, str],
        resumed_after_event: int,
    ) -> None:
        run = self.run
        params = run.params
        assert isinstance(params, FleetWireParams)
        operator = rig.world.operator
        vins = [fleet_vin(i) for i in range(params.vehicles)]
        campaign = operator.campaign(campaign_id)
        events = operator.events(campaign_id)

        # Waves: sizes and members, as the parameters make them.
        run.check_equal("waves: sizes", [int(w.size) for w in campaign.waves], course.sizes)
        run.check_equal(
            "waves: each vehicle in its wave (VIN order)",
            [int(actions[vin].wave) for vin in vins],
            course.wave_of,
        )
        # Notified only once its wave had started.
        wave_started = {
            int(m.group(1)): e.event_id
            for e in events
            if e.kind == "wave_started" and (m := re.match(r"wave (\d+):", e.detail))
        }
        notified = {
            e.vin: e.event_id
            for e in reversed(events)
            if e.kind == "action" and e.action_state == common_pb2.ACTION_STATE_NOTIFIED
        }
        early = [
            vin
            for vin, event_id in notified.items()
            if event_id < wave_started.get(int(actions[vin].wave), 1 << 62)
        ]
        run.check(
            "waves: every vehicle notified after its wave started",
            not early and bool(notified),
            f"notified in waves {sorted({int(actions[v].wave) for v in notified})}"
            + (f"; too early: {early}" if early else ""),
        )
        # The threshold behaviour the parameters call for.
        if course.pause:
            later = [
                vin
                for vin, wave in zip(vins, course.wave_of, strict=True)
                if wave > (course.failing_wave or 0)
            ]
            run.check(
                f"threshold: campaign paused on wave {course.failing_wave} ({course.pause})",
                first_state == "paused" and pause_reason.startswith(course.pause_reason_prefix()),
                f"{first_state}: {pause_reason}",
            )
            untouched = [vin for vin in later if paused_at[vin] != "scheduled"]
            before_pause = [
                vin for vin in later if notified.get(vin, 1 << 62) <= resumed_after_event
            ]
            run.check(
                "threshold: later waves not notified while paused",
                not untouched and not before_pause,
                f"{len(later)} vehicle(s) waited"
                + (f"; not scheduled at the pause: {untouched}" if untouched else "")
                + (f"; notified before the resume: {before_pause}" if before_pause else ""),
            )
        else:
            run.check(
                "threshold: campaign not paused",
                first_state != "paused",
                f"{first_state}: {pause_reason}",
            )
        expected_final = "paused" if course.pause and not params.resume else "completed"
        states = {vin: action_state(actions[vin]) for vin in vins}
        run.check_equal("campaign: final state", _campaign_state(campaign), expected_final)
        expected_states = {
            vin: (
                "rolled_back"
                if vin == failing
                else "scheduled"
                if expected_final == "paused" and course.wave_of[i] > (course.failing_wave or 0)
                else "succeeded"
            )
            for i, vin in enumerate(vins)
        }
        if failing is not None and params.failing_ecu == "ecm":
            # Nothing flashed before the first ECU: nothing to roll back.
            expected_states[failing] = "failed"
        run.check_equal("campaign: every vehicle's action", states, expected_states)
        counts = {s: n for s, n in operator.counts(campaign_id).items() if n}
        expected_counts: dict[str, int] = {}
        for state in expected_states.values():
            expected_counts[state] = expected_counts.get(state, 0) + 1
        run.check_equal("campaign: counts", counts, expected_counts)
        if failing is not None:
            action = actions[failing]
            run.check(
                f"{failing}: failure recorded at {params.failing_ecu}'s trial boot",
                action.failure_step == f"{params.failing_ecu}: verify"
                and "failed its trial boot" in action.failure_reason,
                f"{action.failure_step}: {action.failure_reason}",
            )
        # Every vehicle that took part: consistent, and the gateway agrees with the backend.
        for vin in vins:
            state = states[vin]
            if state == "scheduled":
                versions = rig.world.vehicle(vin).versions()
                run.check_equal(f"{vin}: untouched", versions, dict.fromkeys(versions, OLD))
                continue
            check_vehicle(
                run,
                rig,
                vin,
                state,
                label=vin,
                reverted=(params.failing_ecu,) if vin == failing else (),
            )
            outcome = outcomes.get(vin)
            run.check_equal(
                f"{vin}: the gateway reports what the backend recorded",
                outcome.state if outcome is not None else None,
                state,
            )
        updated = sum(1 for s in states.values() if s == "succeeded")
        run.figure("vehicles_updated", updated)
        run.figure(
            "vehicles_failed", sum(1 for s in states.values() if s in ("failed", "rolled_back"))
        )
        durations = [
            sum(v for k, v in o.timings_s.items()) for o in outcomes.values() if o is not None
        ]
        if durations:
            run.figure("mean_deployment_s", round(sum(durations) / len(durations), 3))


def _campaign_state(campaign: campaign_pb2.Campaign) -> str:
    name: str = common_pb2.CampaignState.Name(campaign.state)
    return name.removeprefix("CAMPAIGN_STATE_").lower()


__all__ = [
    "Course",
    "FlashParams",
    "FlashScenario",
    "FleetWireParams",
    "FleetWireScenario",
    "Rig",
    "RollbackCase",
    "RollbackParams",
    "RollbackScenario",
    "Timeline",
    "boot_problems",
    "catch_up",
    "check_vehicle",
    "demo_spec",
    "expected_course",
    "fleet_vin",
    "nvm",
    "rollback_case",
    "run_time",
    "wave_sizes",
]
