"""A modeled fleet: vehicles as SimPy processes in virtual time, the real campaign engine.

The backend is the real :class:`~backend_stub.service.OtaBackend` with its
campaign engine, over the in-memory store (which passes the same contract
tests as the SQL store), with the SimPy clock injected. Vehicles are SimPy
processes that stand in for a gateway: they check in, download within their
online windows, wait until parked, flash their ECUs (durations from a
:class:`~scenarios.busmodel.BusModel`), roll back on failure and report, all
through the backend's own calls. No campaign rule is written here: waves,
thresholds, pauses and retries are the engine's.

Vehicles sleep until the backend has something for them: when a wave starts
(or a paused campaign resumes), the world sends its vehicles a wake-up
message, as OEM backends do with an SMS shoulder-tap, and a vehicle checks in
at its next online window. A vehicle with nothing to do costs no event, which
is what lets a million vehicles run in a couple of minutes.

Faults (:mod:`scenarios.fleet_faults`) put their own vehicle process in
(``FleetWorld.life``); without them the one here runs, with no check for them.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import itertools
import math
import random
import weakref
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend_stub.artifacts import ArtifactStore
from backend_stub.engine import CampaignStatus, check_spec
from backend_stub.errors import BackendError, InvalidArgument
from backend_stub.model import (
    ACTIVE_ACTION_STATES,
    AbortCriterion,
    ActionState,
    Campaign,
    CampaignEvent,
    CampaignSpec,
    CampaignState,
    DeploymentReport,
    EcuInfo,
    RolloutRate,
    Vehicle,
    VehicleFilter,
    WaveSpec,
    maker,
)
from backend_stub.service import OtaBackend, check_ecus
from backend_stub.store.memory import MemoryStore
from ota_formats.image import build_image
from ota_formats.signing import dev_private_key
from scenarios.busmodel import BusModel
from scenarios.core import ProcessGenerator, Run
from scenarios.wire import payload

HOUR = 3600.0
MINUTE = 60.0
_OUTCOMES = frozenset({ActionState.SUCCEEDED, ActionState.FAILED, ActionState.ROLLED_BACK})
# Bound once for the vehicle's hot path: an attribute of an Enum class is
# looked up through the metaclass's ``__getattr__`` hook, several times the
# cost of a global.
_PENDING = ActionState.PENDING
_DOWNLOADING = ActionState.DOWNLOADING
_INSTALLING = ActionState.INSTALLING
_SUCCEEDED = ActionState.SUCCEEDED


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FailureRates(_Model):
    """Probabilities of failure per attempt: of a download, and per ECU of a flash and a boot."""

    download: float = Field(default=0.002, ge=0.0, le=1.0)
    flash: float = Field(default=0.0005, ge=0.0, le=1.0)
    boot: float = Field(default=0.0005, ge=0.0, le=1.0)
    flash_by_ecu: dict[str, float] = Field(default_factory=dict)
    """Per ECU name, instead of ``flash``."""
    boot_by_ecu: dict[str, float] = Field(default_factory=dict)
    """Per ECU name, instead of ``boot``."""

    @model_validator(mode="after")
    def _check(self) -> FailureRates:
        for table in (self.flash_by_ecu, self.boot_by_ecu):
            for name, value in table.items():
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"{name}: a probability must be between 0 and 1")
        return self

    def flash_p(self, ecu: str) -> float:
        """Return the flash failure probability of ``ecu``."""
        return self.flash_by_ecu.get(ecu, self.flash)

    def boot_p(self, ecu: str) -> float:
        """Return the boot failure probability of ``ecu``."""
        return self.boot_by_ecu.get(ecu, self.boot)


class EcuModel(_Model):
    """One ECU of a vehicle model."""

    name: str
    hardware_id: str
    version: str = "1.0.0"


class PopulationEntry(_Model):
    """A share of the fleet: one model, hardware set and software state."""

    label: str
    share: float = Field(gt=0.0)
    model: str = "hil-demo"
    tags: tuple[str, ...] = ()
    ecus: tuple[EcuModel, ...] = Field(min_length=1)
    failure: FailureRates | None = None
    """Overrides the fleet's failure rates (a bad production batch, say)."""


def _demo_ecus(bms_hardware: str = "HIL-BMS-HW01") -> tuple[EcuModel, ...]:
    return (
        EcuModel(name="ecm", hardware_id="HIL-ECM-HW01"),
        EcuModel(name="bms", hardware_id=bms_hardware),
        EcuModel(name="bcm", hardware_id="HIL-BCM-HW01"),
    )


DEFAULT_POPULATION = (
    PopulationEntry(label="demo", share=0.70, ecus=_demo_ecus()),
    # A production batch whose battery controller does not boot the new image.
    PopulationEntry(
        label="demo-batch-b",
        share=0.05,
        tags=("batch-b",),
        ecus=_demo_ecus(),
        failure=FailureRates(boot_by_ecu={"bms": 0.8}),
    ),
    # Another battery controller: the release does not support it.
    PopulationEntry(label="demo-bms-v2", share=0.25, ecus=_demo_ecus("HIL-BMS-HW02")),
)


class Connectivity(_Model):
    """When vehicles are online and how fast their cellular link is."""

    offline_mean_h: float = Field(default=10.0, gt=0.0, description="mean gap between trips")
    online_mean_min: float = Field(default=40.0, gt=0.0, description="mean trip (online) length")
    parked_online_min: float = Field(
        default=15.0, ge=0.0, description="the TCU stays online this long after a trip"
    )
    bandwidth_median_mbps: float = Field(default=8.0, gt=0.0)
    bandwidth_sigma: float = Field(default=0.8, ge=0.0, description="lognormal spread")
    dropouts_per_hour: float = Field(default=0.5, ge=0.0)


_COMPATIBLE: dict[str, tuple[str, ...]] = {
    "ecm": ("HIL-ECM-HW01",),
    "bms": ("HIL-BMS-HW01",),
    "bcm": ("HIL-BCM-HW01",),
}


class ReleaseParams(_Model):
    """The release the campaign rolls out."""

    version: str = "2.0.0"
    anti_rollback: int = Field(default=2, ge=1)
    image_kib: dict[str, int] = Field(default_factory=lambda: {"ecm": 512, "bms": 256, "bcm": 128})
    compatible: dict[str, tuple[str, ...]] = Field(default_factory=lambda: dict(_COMPATIBLE))

    @model_validator(mode="after")
    def _check(self) -> ReleaseParams:
        if set(self.image_kib) != set(self.compatible):
            raise ValueError("image_kib and compatible must name the same ECUs")
        if any(size <= 0 for size in self.image_kib.values()):
            raise ValueError("image sizes must be positive")
        return self


class Wave(_Model):
    """A wave: a count of vehicles or a percentage of the targets, and when it may start."""

    count: int | None = Field(default=None, gt=0)
    percent: float | None = Field(default=None, gt=0.0, le=100.0)
    start_after_h: float | None = Field(default=None, ge=0.0)
    """Not before this many hours after the campaign started (a timed phase)."""

    @model_validator(mode="after")
    def _one(self) -> Wave:
        if (self.count is None) == (self.percent is None):
            raise ValueError("give exactly one of count and percent")
        return self


class RateParams(_Model):
    """Release vehicles at a rate that grows (as AWS IoT Jobs' exponential rollout does)."""

    base_per_minute: int
    increment_factor: float = 1.0
    increase_every: int = 0
    """Grow the rate each time this many more vehicles were notified (or succeeded)."""
    increase_on: Literal["notified", "succeeded"] = "notified"
    maximum_per_minute: int | None = None


class AbortParams(_Model):
    """Abort the whole campaign when this share of the executed vehicles failed."""

    failure: Literal["failed", "rolled_back", "any"] = "any"
    threshold_pct: float
    min_executed: int


class CampaignParams(_Model):
    """The campaign as an operator would create it.

    Checked by the backend's own campaign rules when the parameters are read,
    so a campaign the engine would refuse is an error before the run starts.
    """

    waves: tuple[Wave, ...] = (Wave(percent=1), Wave(percent=5), Wave(percent=25))
    success_threshold_pct: float = Field(default=90.0, ge=0.0, le=100.0)
    error_threshold_pct: float = Field(default=3.0, ge=0.0, le=100.0)
    max_retries: int = Field(default=1, ge=0, le=100)
    rollout_rate: RateParams | None = None
    abort_criteria: tuple[AbortParams, ...] = ()
    filter_model: str = ""
    filter_tags: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _engine_accepts(self) -> CampaignParams:
        try:
            check_spec(self.spec("rel-1"))
        except InvalidArgument as exc:
            raise ValueError(str(exc)) from None
        return self

    def spec(self, release_id: str, name: str = "fleet") -> CampaignSpec:
        """Return the backend's campaign request for ``release_id``."""
        rate = self.rollout_rate
        return CampaignSpec(
            name=name,
            release_id=release_id,
            filter=VehicleFilter(model=self.filter_model, tags=self.filter_tags),
            waves=tuple(
                WaveSpec(
                    count=w.count,
                    percent=w.percent,
                    start_after_s=None if w.start_after_h is None else w.start_after_h * HOUR,
                )
                for w in self.waves
            ),
            success_threshold_pct=self.success_threshold_pct,
            error_threshold_pct=self.error_threshold_pct,
            max_retries=self.max_retries,
            rollout_rate=None
            if rate is None
            else RolloutRate(
                base_per_minute=rate.base_per_minute,
                increment_factor=rate.increment_factor,
                increase_every=rate.increase_every,
                increase_on=rate.increase_on,
                maximum_per_minute=rate.maximum_per_minute,
            ),
            abort_criteria=tuple(
                AbortCriterion(
                    failure=a.failure, threshold_pct=a.threshold_pct, min_executed=a.min_executed
                )
                for a in self.abort_criteria
            ),
        )


class FleetOptions(_Model):
    """Everything a modeled fleet is made of."""

    vehicles: int = Field(default=10_000, ge=1, le=5_000_000)
    population: tuple[PopulationEntry, ...] = Field(default=DEFAULT_POPULATION, min_length=1)
    connectivity: Connectivity = Connectivity()
    failure: FailureRates = FailureRates()
    release: ReleaseParams = ReleaseParams()
    bus_model: Path | None = None
    """A TOML file from ``hil scenario calibrate``; built-in figures when not given."""
    backend_tick_s: float = Field(default=60.0, gt=0.0, le=3600.0)
    """How often the backend applies its time-driven rules (wave start times, release rate)."""


# Every report makes one (vin, deployment_id, report_id, state, progress_pct,
# failure_step, failure_reason, ecu_progress, inventory, detail).
_new_report: Callable[
    [
        str,
        str,
        str,
        ActionState,
        int,
        str,
        str,
        tuple[dict[str, str], ...],
        tuple[EcuInfo, ...],
        str,
    ],
    DeploymentReport,
] = maker(DeploymentReport)


@dataclass(slots=True)
class _Group:
    """A population entry prepared for the hot path: plain numbers, shared tuples."""

    label: str
    model: str
    tags: tuple[str, ...]
    old: tuple[EcuInfo, ...]
    new: tuple[EcuInfo, ...]
    download_p: float
    flash_p: tuple[float, ...]
    boot_p: tuple[float, ...]
    image_bytes: int
    order: tuple[str, ...]
    """The release's ECUs in flashing order."""
    flash_s: tuple[float, ...]
    """Per ECU of the release, in release order (empty if the release does not fit)."""
    restore_s: tuple[float, ...]


@dataclass(slots=True)
class Car:
    """One modeled vehicle: what its ECUs run, and whether it is awake."""

    vin: str
    index: int
    group: int
    ecus: tuple[EcuInfo, ...]
    awake: bool = False
    wakeups: int = 0


@dataclass
class FleetStats:
    """Counts kept while the fleet runs."""

    # Plain dictionaries rather than Counters: a fleet counts every call,
    # and a dict subclass is slower to index.
    calls: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    load_per_minute: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    wakeups: int = 0
    vehicle_events: int = 0


@dataclass(frozen=True, slots=True)
class Tally:
    """A fleet compared with its campaign's actions and with the backend (``FleetWorld.tally``)."""

    wrong_vehicle: int
    """Vehicles not running what their action says (the new versions if it succeeded)."""
    wrong_backend: int
    """Vehicles whose inventory the backend has wrong."""
    outcomes: dict[tuple[int, ActionState | None], int]
    """Vehicles per (index in ``FleetWorld.groups``, action state; ``None``: not targeted)."""
    states: dict[str, ActionState]
    """Each target vehicle's action state, as compared."""


# Every world not yet freed (worlds hold reference cycles: only a collection frees them).
_worlds: weakref.WeakSet[FleetWorld] = weakref.WeakSet()


class FleetWorld:
    """The backend (real engine, memory store, SimPy clock) and a modeled fleet."""

    def __init__(
        self,
        run: Run,
        options: FleetOptions,
        *,
        rng: random.Random | None = None,
        fates_seed: int | None = None,
        name: str = "",
    ) -> None:
        """Prepare a world; ``build`` makes it.

        ``rng`` (the run's by default) draws the fleet and its connectivity.
        With ``fates_seed``, whether an attempt of a vehicle fails, and where,
        is drawn from that seed, the vehicle and the attempt alone: worlds
        made with one seed then fail the same vehicles the same way, however
        their campaigns are timed. ``name`` tells worlds of one run apart
        (each keeps its artifacts in its own folder).
        """
        self.run = run
        self.env = run.env
        self.rng: random.Random = rng if rng is not None else run.rng
        self._fates_seed = fates_seed
        self.options = options
        self.bus = BusModel.load(options.bus_model) if options.bus_model else BusModel()
        self.stats = FleetStats()
        env = self.env
        self.store = MemoryStore()
        self.backend = OtaBackend(
            self.store,
            ArtifactStore(
                run.directory / name / "artifacts" if name else run.directory / "artifacts"
            ),
            # Release signatures do not enter the log, so a fresh key keeps runs equal.
            release_key=Ed25519PrivateKey.generate(),
            image_trust_anchors=[dev_private_key().public_key()],
            # A C-level call that reads the attribute behind SimPy's ``now``
            # property: the engine reads the clock several times per report, and
            # the property would add a Python call to each.
            clock=functools.partial(getattr, env, "_now"),
        )
        self.engine = self.backend.engine
        self.cars: dict[str, Car] = {}
        self.groups: list[_Group] = []
        self.release_id = ""
        self.campaign_id = ""
        self.campaign_key = 0
        self._known_wave = -1
        self._known_state: CampaignState | None = None
        # Vehicles woken for actions the rollout rate released, and the last
        # such action's key: the rate releases in key order.
        self._woken_released = 0
        self._release_cursor = 0
        self._first_action_key = 0
        self.on_campaign_change: list[Callable[[Campaign], None]] = []
        self.life: Callable[[Car], ProcessGenerator] = self._vehicle
        """The process a woken vehicle runs (a fault model puts its own in)."""
        self.backend_up = True
        """Whether the backend runs: its timer skips its ticks while it does not."""
        c = options.connectivity
        self._offline_rate = 1.0 / (c.offline_mean_h * HOUR)
        self._online_rate = 1.0 / (c.online_mean_min * MINUTE)
        self._parked_s = c.parked_online_min * MINUTE
        self._bw_mu = math.log(c.bandwidth_median_mbps * 1e6 / 8.0)
        self._bw_sigma = c.bandwidth_sigma
        self._dropout_rate = c.dropouts_per_hour / HOUR

    # ------------------------------------------------------------------ build
    def build(self) -> None:
        """Upload the release's images, create the release, register the fleet."""
        # The collector is off while a modeled run runs (``scenarios.core.execute``),
        # and earlier runs in this process left their worlds to the next full
        # collection: collect them now, so that worlds do not pile up. Before
        # the fleet is made rather than after, so as not to scan its hundreds
        # of thousands of objects for nothing; and only if an earlier world is
        # still there, as a full collection scans every object of the process.
        if _worlds:
            gc.collect()
        _worlds.add(self)
        options = self.options
        release = options.release
        images = []
        ecu_order = list(release.image_kib)
        for ecu in ecu_order:
            data = build_image(
                payload(ecu, release.version, release.image_kib[ecu] * 1024),
                hardware_id=release.compatible[ecu][0],
                version=release.version,
                anti_rollback_counter=release.anti_rollback,
                private_key=dev_private_key(),
            )
            digest = hashlib.sha256(data).hexdigest()
            self.backend.receive_artifact(
                size_bytes=len(data), sha256=digest, filename=f"{ecu}.img", chunks=iter([data])
            )
            images.append((ecu, digest, release.compatible[ecu]))
        created = self.backend.create_release(name="fleet", version=release.version, images=images)
        self.release_id = created.release_id
        self.run.event("backend", "release", f"{created.release_id} {release.version}")
        sizes = {ecu: release.image_kib[ecu] * 1024 for ecu in ecu_order}
        for entry in options.population:
            rates = entry.failure or options.failure
            old = check_ecus(
                [EcuInfo(e.name, e.hardware_id, software_version=e.version) for e in entry.ecus],
                self.backend.limits,
            )
            by_name = {e.name: e for e in old}
            fits = all(
                name in by_name and by_name[name].hardware_id in release.compatible[name]
                for name in ecu_order
            )
            new = tuple(
                EcuInfo(
                    e.name,
                    e.hardware_id,
                    software_version=release.version if e.name in sizes else e.software_version,
                )
                for e in old
            )
            flash_s = tuple(self.bus.flash_s(sizes[n]) for n in ecu_order) if fits else ()
            self.groups.append(
                _Group(
                    label=entry.label,
                    model=entry.model,
                    tags=entry.tags,
                    old=old,
                    new=new,
                    download_p=rates.download,
                    flash_p=tuple(rates.flash_p(n) for n in ecu_order),
                    boot_p=tuple(rates.boot_p(n) for n in ecu_order),
                    image_bytes=sum(sizes.values()),
                    order=tuple(ecu_order),
                    flash_s=flash_s,
                    # A rollback re-activates the previous bank: a reset and a boot.
                    restore_s=tuple(self.bus.fixed_s + self.bus.boot_s for _ in flash_s),
                )
            )
        self._register()

    def _register(self) -> None:
        """Register every vehicle in one store transaction (validated per group above)."""
        count = self.options.vehicles
        shares = [entry.share for entry in self.options.population]
        total = sum(shares)
        weights = [share / total for share in shares]
        # Group of each vehicle drawn from the seed, so batches spread over the VINs.
        picks = self.rng.choices(range(len(weights)), weights=weights, k=count)
        now = float(self.env.now)
        groups = self.groups
        # Column by column, the objects made by ``map`` rather than in a loop:
        # a million of each, and a loop's own bytecode costs about as much as
        # making them.
        vins = list(map(fleet_vin, range(count)))
        old = [groups[index].old for index in picks]
        self.cars.update(zip(vins, map(Car, vins, range(count), picks, old), strict=True))
        # Positional (vin, model, tags, ecus, state, registered_at, last_seen_at).
        vehicles = list(
            map(
                Vehicle,
                vins,
                [groups[index].model for index in picks],
                [groups[index].tags for index in picks],
                old,
                itertools.repeat("registered"),
                itertools.repeat(now),
                itertools.repeat(now),
            )
        )
        self.backend.store.run(lambda tx: tx.put_vehicles(vehicles))
        per_group: Counter[str] = Counter()
        for index, number in Counter(picks).items():
            per_group[groups[index].label] += number
        self.run.event(
            "fleet",
            "registered",
            f"{count} vehicles: " + ", ".join(f"{k} {v}" for k, v in sorted(per_group.items())),
        )

    # -------------------------------------------------------------- campaign
    def start_campaign(self, params: CampaignParams, name: str = "fleet") -> Campaign:
        """Create and start the campaign; wake the first wave."""
        campaign = self.engine.create(params.spec(self.release_id, name))
        self.campaign_id = campaign.campaign_id
        self.campaign_key = campaign.key
        key = campaign.key
        (first,) = self.store.run(lambda tx: tx.list_actions(key, limit=1), write=False)
        self._first_action_key = first.key
        self.run.event(
            "operator",
            "campaign created",
            f"{campaign.campaign_id}: {campaign.target_count} targets in waves "
            f"{list(campaign.wave_sizes)}, {campaign.excluded_count} excluded",
        )
        started = self.engine.start(self.campaign_id)
        self._campaign_changed(started)
        if started.rollout_rate is not None or any(started.wave_start_after_s):
            self.env.process(self._backend_ticker())
        return started

    def _backend_ticker(self) -> ProcessGenerator:
        """Apply the backend's time-driven campaign rules every tick, until the campaign ends."""
        tick_s = self.options.backend_tick_s
        while True:
            yield self.env.timeout(tick_s)
            if not self.backend_up:
                continue
            self.engine.tick()
            campaign = self.campaign()
            self._campaign_changed(campaign)
            if campaign.state in (CampaignState.COMPLETED, CampaignState.ABORTED):
                return

    def status(self) -> CampaignStatus:
        """Return the campaign with its per-wave counts."""
        return self.engine.status(self.campaign_id)

    def campaign(self) -> Campaign:
        """Return the campaign as stored."""
        found = self.backend.store.run(lambda tx: tx.get_campaign(self.campaign_key), write=False)
        assert found is not None
        return found

    def pause(self, reason: str) -> None:
        """Pause the campaign as an operator."""
        self._campaign_changed(self.engine.pause(self.campaign_id, reason))

    def resume(self) -> None:
        """Resume the campaign and wake the vehicles it has work for."""
        resumed = self.engine.resume(self.campaign_id)
        self._campaign_changed(resumed, wake_pending=True)

    def backend_answers(self, retry_s: float) -> ProcessGenerator:
        """Wait until the backend is up, as an operator whose calls it refuses retries them."""
        if self.backend_up:
            return
        self.run.event(
            "operator", "refused", f"the backend does not answer; retrying every {retry_s:g} s"
        )
        while not self.backend_up:
            yield self.env.timeout(retry_s)

    def abort(self, reason: str) -> None:
        """Abort the campaign as an operator."""
        self._campaign_changed(self.engine.abort(self.campaign_id, reason))

    def _campaign_changed(self, campaign: Campaign, *, wake_pending: bool = False) -> None:
        """Wake the vehicles of newly started waves; tell watchers of a state change."""
        if campaign.state is not self._known_state:
            self._known_state = campaign.state
            for watcher in self.on_campaign_change:
                watcher(campaign)
        # The last wave whose actions were made pending (a delayed first wave
        # is current before it starts).
        started = campaign.current_wave - (1 if campaign.awaiting_start else 0)
        if wake_pending:
            self._known_wave = started
            self._wake_pending()
        elif started != self._known_wave:
            for wave in range(self._known_wave + 1, started + 1):
                self._wake_wave(campaign, wave)
            self._known_wave = started
        if campaign.released > self._woken_released:
            self._wake_released(campaign.released - self._woken_released)
            self._woken_released = campaign.released

    def _wake_released(self, count: int) -> None:
        """Wake the vehicles of the next ``count`` actions the rollout rate released."""
        key, after = self.campaign_key, self._release_cursor
        actions = self.store.run(
            lambda tx: tx.list_actions(key, after_key=after, limit=count), write=False
        )
        for action in actions:
            if action.state is _PENDING:
                self.wake(self.cars[action.vin])
        if actions:
            self._release_cursor = actions[-1].key

    def _wake_wave(self, campaign: Campaign, wave: int) -> None:
        """Wake the vehicles of a wave that just started.

        A campaign's actions are one key range in wave order, so the wave's
        are the ``size`` keys after its predecessors': a page of actions, not
        a scan of the campaign.
        """
        key = campaign.key
        size = campaign.wave_sizes[wave]
        after = self._first_action_key - 1 + sum(campaign.wave_sizes[:wave])
        actions = self.store.run(
            lambda tx: tx.list_actions(key, after_key=after, limit=size), write=False
        )
        assert all(a.wave == wave for a in actions), "a wave's actions are one key range"
        for action in actions:
            if action.state is _PENDING:
                self.wake(self.cars[action.vin])

    def _wake_pending(self) -> None:
        """Wake the vehicles of every pending action (after a resume)."""
        key = self.campaign_key

        def work(tx: Any) -> list[str]:
            return [
                a.vin for a in tx.list_actions(key, states=(ActionState.PENDING,), limit=1 << 62)
            ]

        vins = self.backend.store.run(work, write=False)
        for vin in vins:
            self.wake(self.cars[vin])

    def wake(self, car: Car) -> None:
        """Send ``car`` a wake-up message: it checks in at its next online window."""
        self.stats.wakeups += 1
        car.wakeups += 1
        if not car.awake:
            car.awake = True
            self.env.process(self.life(car))

    # ---------------------------------------------------------------- vehicle
    def _call(self, kind: str) -> None:
        self.stats.calls[kind] += 1
        self.stats.load_per_minute[int(self.env.now // MINUTE)] += 1

    def report(
        self,
        car: Car,
        deployment_id: str,
        tag: str,
        number: int,
        state: ActionState,
        *,
        step: str = "",
        reason: str = "",
        inventory: tuple[EcuInfo, ...] = (),
    ) -> ActionState | None:
        """Send a report; return the action's state after it, ``None`` if refused."""
        # ``_call``, inlined: three reports per vehicle.
        stats = self.stats
        stats.calls["report"] += 1
        stats.load_per_minute[int(self.env._now // MINUTE)] += 1
        try:
            # Positional: three reports per vehicle, and keywords cost more.
            outcome = self.engine.report(
                _new_report(
                    car.vin,
                    deployment_id,
                    f"{tag}/{number}",
                    state,
                    0,
                    step,
                    reason,
                    (),
                    inventory,
                    "",
                )
            )
        except BackendError:
            # Canceled or otherwise refused: the gateway stops working on it.
            return None
        if state in _OUTCOMES:
            # An outcome may have started a wave or paused the campaign.
            campaign = outcome.campaign
            if campaign.current_wave != self._known_wave or campaign.state is not self._known_state:
                self._campaign_changed(campaign)
        return outcome.action.state

    def _vehicle(self, car: Car) -> ProcessGenerator:
        """One vehicle's life while it has something to do."""
        env = self.env
        rng = self.rng
        group = self.groups[car.group]
        offline_rate = self._offline_rate
        online_rate = self._online_rate
        dropout_rate = self._dropout_rate
        # The clock is read as SimPy's attribute behind ``now`` here and in
        # ``report``: the property costs a Python call per read, eight per vehicle.
        # The wake-up is taken at the next online window.
        yield env.timeout(rng.expovariate(offline_rate))
        window_end = env._now + rng.expovariate(online_rate)
        stats = self.stats
        check_in = self.engine.check_in
        while True:
            # ``_call``, inlined; the engine is called directly, as for reports
            # (the fleet's own VINs need no request validation).
            stats.calls["check-in"] += 1
            stats.load_per_minute[int(env._now // MINUTE)] += 1
            offers = check_in(car.vin)
            if not offers:
                car.awake = False
                return
            action = offers[0].action
            fate = rng if self._fates_seed is None else self._fate(car, action.attempts)
            # Report ids stay unique across retries of the same deployment.
            deployment = action.deployment_id
            tag = f"{deployment}/{action.attempts}"
            number = 0
            # Download, resumed across online windows and drop-outs.
            number += 1
            if self.report(car, deployment, tag, number, _DOWNLOADING) is None:
                car.awake = False
                return
            remaining = float(group.image_bytes)
            bandwidth = rng.lognormvariate(self._bw_mu, self._bw_sigma)
            while remaining > 0:
                available = window_end - env._now
                if dropout_rate > 0:
                    available = min(available, rng.expovariate(dropout_rate))
                needed = remaining / bandwidth
                if needed <= available:
                    yield env.timeout(needed)
                    remaining = 0.0
                else:
                    if available > 0:
                        yield env.timeout(available)
                        remaining -= available * bandwidth
                    # Offline until the next window (a drop-out is short; a trip end is not).
                    if env._now >= window_end:
                        yield env.timeout(rng.expovariate(offline_rate))
                        window_end = env._now + rng.expovariate(online_rate)
                    else:
                        yield env.timeout(min(60.0, window_end - env._now))
                    bandwidth = rng.lognormvariate(self._bw_mu, self._bw_sigma)
            number += 1
            if fate.random() < group.download_p:
                after = self.report(
                    car,
                    deployment,
                    tag,
                    number,
                    ActionState.FAILED,
                    step="download",
                    reason="the download did not verify",
                )
            else:
                # Installation waits until the vehicle is parked: the end of this trip.
                if window_end > env._now:
                    yield env.timeout(window_end - env._now)
                after = self.report(car, deployment, tag, number, _INSTALLING)
                if after is not None:
                    # The release's ECUs flashed in order, here rather than in a
                    # generator of its own: each step of each vehicle would pass
                    # through a ``yield from``. ``fate`` draws the failures.
                    number += 1
                    flashed = 0
                    failed = ""  # how the ECU at ``flashed`` failed, if one did
                    for index, duration in enumerate(group.flash_s):
                        if fate.random() < group.flash_p[index]:
                            yield env.timeout(duration * fate.random())
                            failed = "flash"
                            break
                        yield env.timeout(duration)
                        if fate.random() < group.boot_p[index]:
                            failed = "boot"
                            break
                        flashed += 1
                    if not failed:
                        car.ecus = group.new
                        after = self.report(
                            car, deployment, tag, number, _SUCCEEDED, inventory=group.new
                        )
                    else:
                        if flashed:
                            # The ECUs already flashed go back to their previous bank.
                            yield env.timeout(sum(group.restore_s[:flashed]))
                        car.ecus = group.old
                        after = self.report(
                            car,
                            deployment,
                            tag,
                            number,
                            ActionState.ROLLED_BACK if flashed else ActionState.FAILED,
                            step=f"{group.order[flashed]}: {failed}",
                            reason="the transfer failed and the retries ran out"
                            if failed == "flash"
                            else "the new image did not boot",
                            inventory=group.old,
                        )
            if after is not _PENDING:
                car.awake = False
                return
            # A retry: the vehicle checks in again at its next online window.
            yield env.timeout(rng.expovariate(offline_rate))
            window_end = env._now + rng.expovariate(online_rate)

    def _fate(self, car: Car, attempt: int) -> random.Random:
        """Return the draws of ``car``'s attempt ``attempt`` when fates are fixed by a seed."""
        assert self._fates_seed is not None
        return random.Random(f"{self._fates_seed}/{car.index}/{attempt}")

    # ------------------------------------------------ for other vehicle models
    # A vehicle model that replaces ``life`` (the fault model does) draws through
    # these, from the same source and in the same order as ``_vehicle`` does.
    def count_call(self, kind: str) -> None:
        """Count a vehicle call the backend took (for the load figures)."""
        self._call(kind)

    def fate_of(self, car: Car, attempt: int) -> random.Random:
        """Return what draws ``car``'s attempt: the world's draws, or its fate (``fates_seed``)."""
        return self.rng if self._fates_seed is None else self._fate(car, attempt)

    def draw_offline_s(self) -> float:
        """Draw how long until a vehicle's next online window."""
        return self.rng.expovariate(self._offline_rate)

    def draw_online_s(self) -> float:
        """Draw how long an online window lasts."""
        return self.rng.expovariate(self._online_rate)

    @property
    def dropout_rate(self) -> float:
        """Cellular drop-outs per second while online (0: none)."""
        return self._dropout_rate

    def draw_dropout_s(self) -> float:
        """Draw how long until the next drop-out (needs a ``dropout_rate`` above 0)."""
        return self.rng.expovariate(self._dropout_rate)

    def draw_bandwidth_bytes_per_s(self) -> float:
        """Draw a cellular bandwidth, for one stretch of a download."""
        return self.rng.lognormvariate(self._bw_mu, self._bw_sigma)

    # ---------------------------------------------------------------- reading
    def backend_events(self) -> list[CampaignEvent]:
        """Return the campaign's backend events, in order (without their keys)."""
        return self.store.campaign_events(self.campaign_key)

    def log_backend_events(self, source: str = "backend") -> list[CampaignEvent]:
        """Append the campaign's whole backend history to the run's log; return it."""
        events = self.backend_events()
        log = self.run.log
        if log.keep:
            log.add_rows(source, ((e.at, e.kind, event_text(e)) for e in events))
        else:
            # Chunks, not a list of them all: a million vehicles log millions of events.
            for start in range(0, len(events), 4096):
                log.add_lines(event_lines(source, events[start : start + 4096]))
        return events

    def action_states(self) -> dict[str, ActionState]:
        """Return each target vehicle's action state."""
        key = self.campaign_key

        def work(tx: Any) -> dict[str, ActionState]:
            return {a.vin: a.state for a in tx.list_actions(key, limit=1 << 62)}

        return self.backend.store.run(work, write=False)

    def backend_vehicles(self) -> dict[str, Vehicle]:
        """Return every registered vehicle as the backend has it."""
        return self.backend.store.run(
            lambda tx: {v.vin: v for v in tx.find_vehicles(VehicleFilter())}, write=False
        )

    def disagreements(self) -> tuple[int, int]:
        """Return (vehicles not running what their action says, vehicles the backend has wrong).

        A vehicle whose action succeeded must run the new versions, any other
        the old ones; the backend's inventory must be what the vehicle runs.
        """
        tally = self.tally()
        return tally.wrong_vehicle, tally.wrong_backend

    def tally(self) -> Tally:
        """Compare every vehicle with its action and the backend; count their outcomes."""
        action_states = self.action_states()
        states = action_states.get
        groups = self.groups
        cars = self.cars
        succeeded = ActionState.SUCCEEDED

        def work(tx: Any) -> Tally:
            # One pass over the fleet, the backend's vehicles read one by one
            # rather than gathered in a table first: at a million vehicles,
            # each pass over them costs more than the comparisons made in it.
            vehicle = tx.get_vehicle
            wrong_vehicle = wrong_backend = 0
            counts: dict[tuple[int, ActionState | None], int] = {}
            for vin, car in cars.items():
                group = groups[car.group]
                state = states(vin)
                ecus = car.ecus
                if ecus != (group.new if state is succeeded else group.old):
                    wrong_vehicle += 1
                if vehicle(vin).ecus != ecus:
                    wrong_backend += 1
                counted = (car.group, state)
                counts[counted] = counts.get(counted, 0) + 1
            return Tally(wrong_vehicle, wrong_backend, counts, action_states)

        return self.backend.store.run(work, write=False)

    def peak_load(self) -> int:
        """Return the most vehicle calls the backend took in one minute."""
        return max(self.stats.load_per_minute.values(), default=0)

    def active_actions(self, status: CampaignStatus) -> int:
        """Return how many actions the vehicles are working on."""
        totals = status.totals()
        return sum(totals.get(state, 0) for state in ACTIVE_ACTION_STATES)


def event_text(event: CampaignEvent) -> str:
    """Return a backend event's VIN, action state and detail, as one log line's detail."""
    # Written out rather than joined from a generator: a million-vehicle
    # campaign has millions of events.
    state = event.action_state
    text = event.vin
    if state is not None:
        text = f"{text} {state.value}" if text else state.value
    if event.detail:
        text = f"{text} {event.detail}" if text else event.detail
    return text


_STATE_TEXT: dict[ActionState, str] = {state: state.value for state in ActionState}


def event_lines(source: str, events: Sequence[CampaignEvent]) -> list[str]:
    """Return the log lines of ``events`` from ``source``, as :class:`LogEntry` writes them.

    Each line is ``LogEntry(event.at, source, event.kind, event_text(event)).line()``,
    made in one step for the events of a vehicle's action (nearly all of them):
    a million-vehicle campaign logs millions of events at its end, when only
    the log's fingerprint is kept.
    """
    state_text = _STATE_TEXT
    return [
        (
            f"{e.at:.6f}\t{source}\t{e.kind}\t{e.vin} {state_text[e.action_state]} {e.detail}\n"
            if e.detail
            else f"{e.at:.6f}\t{source}\t{e.kind}\t{e.vin} {state_text[e.action_state]}\n"
        )
        if e.vin and e.action_state is not None
        else f"{e.at:.6f}\t{source}\t{e.kind}\t{event_text(e)}\n"
        for e in events
    ]


def fleet_vin(index: int) -> str:
    """Return the VIN of modeled vehicle ``index`` (valid: no I, O or Q)."""
    # ``zfill`` rather than a format spec, which is parsed on every call: a
    # fleet names a million vehicles. The same digits, a sign first if any.
    return "SMFLEET" + str(index).zfill(10)


__all__ = [
    "DEFAULT_POPULATION",
    "AbortParams",
    "CampaignParams",
    "Car",
    "Connectivity",
    "EcuModel",
    "FailureRates",
    "FleetOptions",
    "FleetStats",
    "FleetWorld",
    "PopulationEntry",
    "RateParams",
    "ReleaseParams",
    "Tally",
    "Wave",
    "event_lines",
    "event_text",
    "fleet_vin",
]
