"""The backend's domain objects: plain dataclasses, no gRPC and no SQL.

Ids are strings with a kind prefix (``cmp-12``, ``rel-3``, ``dep-40``) over
integer keys that the store allocates, so that runs in virtual time with the
same seed give the same ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Literal, TypeVar, dataclass_transform

from backend_stub.errors import InvalidArgument, NotFound


class ActionState(StrEnum):
    """State of one vehicle's update action in a campaign."""

    # Hash as the plain string: equal to it anyway, and Enum's own hash is a
    # Python-level call on every set and dict lookup of the campaign engine.
    __hash__ = str.__hash__

    SCHEDULED = "scheduled"
    PENDING = "pending"
    NOTIFIED = "notified"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    CANCELED = "canceled"


TERMINAL_ACTION_STATES = frozenset(
    {ActionState.SUCCEEDED, ActionState.FAILED, ActionState.ROLLED_BACK, ActionState.CANCELED}
)
FAILURE_STATES = frozenset({ActionState.FAILED, ActionState.ROLLED_BACK})
# States in which the vehicle owns the action (it has been told about it).
ACTIVE_ACTION_STATES = frozenset(
    {ActionState.NOTIFIED, ActionState.DOWNLOADING, ActionState.INSTALLING}
)
# States in which a check-in has something to say to the vehicle.
UNFINISHED_STATES = frozenset({ActionState.PENDING, *ACTIVE_ACTION_STATES})
# What a vehicle may report.
REPORTABLE_STATES = frozenset(
    {
        ActionState.DOWNLOADING,
        ActionState.INSTALLING,
        ActionState.SUCCEEDED,
        ActionState.FAILED,
        ActionState.ROLLED_BACK,
    }
)

# Every legal change of an action's state. A report that repeats the current
# non-terminal state is progress, not a transition.
ACTION_TRANSITIONS: dict[ActionState, frozenset[ActionState]] = {
    ActionState.SCHEDULED: frozenset({ActionState.PENDING, ActionState.CANCELED}),
    ActionState.PENDING: frozenset({ActionState.NOTIFIED, ActionState.CANCELED}),
    ActionState.NOTIFIED: frozenset(
        {
            ActionState.DOWNLOADING,
            ActionState.INSTALLING,
            ActionState.SUCCEEDED,
            ActionState.FAILED,
            ActionState.ROLLED_BACK,
            ActionState.CANCELED,
        }
    ),
    ActionState.DOWNLOADING: frozenset(
        {
            ActionState.INSTALLING,
            ActionState.SUCCEEDED,
            ActionState.FAILED,
            ActionState.ROLLED_BACK,
            ActionState.CANCELED,
        }
    ),
    # An installation in progress cannot be canceled from the cloud: the vehicle finishes it.
    ActionState.INSTALLING: frozenset(
        {ActionState.SUCCEEDED, ActionState.FAILED, ActionState.ROLLED_BACK}
    ),
    # A failure with retries left goes back to pending.
    ActionState.FAILED: frozenset({ActionState.PENDING}),
    ActionState.ROLLED_BACK: frozenset({ActionState.PENDING}),
    ActionState.SUCCEEDED: frozenset(),
    ActionState.CANCELED: frozenset(),
}
CANCELABLE_STATES = frozenset(
    s for s, targets in ACTION_TRANSITIONS.items() if ActionState.CANCELED in targets
)


class CampaignState(StrEnum):
    """State of a campaign."""

    __hash__ = str.__hash__  # as ActionState

    DRAFT = "draft"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"


TERMINAL_CAMPAIGN_STATES = frozenset({CampaignState.COMPLETED, CampaignState.ABORTED})
CAMPAIGN_TRANSITIONS: dict[CampaignState, frozenset[CampaignState]] = {
    CampaignState.DRAFT: frozenset({CampaignState.RUNNING, CampaignState.ABORTED}),
    CampaignState.RUNNING: frozenset(
        {CampaignState.PAUSED, CampaignState.COMPLETED, CampaignState.ABORTED}
    ),
    CampaignState.PAUSED: frozenset({CampaignState.RUNNING, CampaignState.ABORTED}),
    CampaignState.COMPLETED: frozenset(),
    CampaignState.ABORTED: frozenset(),
}


def format_id(kind: str, key: int) -> str:
    """Return the public id of object ``key`` of ``kind`` (``cmp``, ``rel``, ``dep``)."""
    return f"{kind}-{key}"


def parse_id(kind: str, text: str, what: str) -> int:
    """Return the integer key of a public id; :class:`InvalidArgument` if malformed."""
    if not text:
        raise InvalidArgument(f"{what} is required")
    if not isinstance(text, str):  # a Python caller's mistake; gRPC always sends a string
        raise InvalidArgument(f"{what} {text!r} is not an id of the form {kind}-N")
    prefix, _, number = text.partition("-")
    # ``isdigit`` alone accepts digits ``int`` refuses (superscripts) and others it
    # reads (other scripts' decimals): an id is ASCII digits only.
    if prefix != kind or not (number.isascii() and number.isdigit()) or len(number) > 18:
        raise InvalidArgument(f"{what} {text!r} is not an id of the form {kind}-N")
    return int(number)


def lookup_id(kind: str, text: str, what: str) -> int:
    """Like :func:`parse_id`, but a malformed id is simply unknown (:class:`NotFound`)."""
    # The well-formed case first, without a call: every vehicle report looks one up.
    try:
        prefix, _, number = text.partition("-")
    except AttributeError:  # not a string: ``parse_id`` says what is wrong with it
        pass
    else:
        if prefix == kind and number.isascii() and number.isdigit() and len(number) <= 18:
            return int(number)
    try:
        return parse_id(kind, text, what)
    except InvalidArgument as exc:
        raise NotFound(str(exc)) from exc


_T = TypeVar("_T")
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[_T]) -> type[_T]:
    """Make ``cls`` a slotted dataclass that type checkers treat as frozen.

    At run time the class is not frozen: a frozen dataclass sets each field
    through ``object.__setattr__`` in ``__init__``, five times the cost of a
    plain one, and the campaign engine creates and copies several of these
    per vehicle report. Immutability is kept where it is cheap to keep, by
    mypy (an assignment to a field does not type-check); instances hash by
    their fields, as frozen ones do.
    """
    return dataclass(slots=True, unsafe_hash=True)(cls)


def field_names(cls: type) -> tuple[str, ...]:
    """Return the field names of a dataclass, in order (cached)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def as_fields(obj: object) -> dict[str, Any]:
    """Return a dataclass instance's fields as a dictionary (shallow, unlike ``asdict``)."""
    return {name: getattr(obj, name) for name in field_names(type(obj))}


def copy_with(obj: _T, changes: dict[str, Any]) -> _T:
    """Return a copy of a :func:`record` instance with ``changes`` applied.

    ``dataclasses.replace`` re-runs ``__init__`` through keyword arguments; a
    copier generated per class fills the slots directly, each from ``changes``
    or from ``obj``, at a fraction of the cost, which matters on paths a fleet
    of a million vehicles takes several times each. An unknown field raises
    ``AttributeError``, as setting it on the slotted class would.
    """
    cls = type(obj)
    copier = _COPIERS.get(cls)
    if copier is None:
        copier = _COPIERS[cls] = _make_copier(cls)
    result: _T = copier(obj, changes)
    return result


_COPIERS: dict[type, Any] = {}
_new_object = object.__new__


def maker(cls: type[_T]) -> Callable[..., _T]:
    """Return a function that makes a :func:`record` ``cls`` from all its fields, in order.

    For the few records made once or more per vehicle report: the function
    fills the slots itself, without the call of ``__init__`` that a
    constructor makes (about a third less). It takes every field, defaults
    included; callers give its type with the fields' types, for the checker.
    """
    names = field_names(cls)
    lines = [f"def make({', '.join(names)}):", "    new = new_object(cls)"]
    lines += [f"    new.{name} = {name}" for name in names]
    lines += ["    return new"]
    namespace: dict[str, Any] = {"new_object": _new_object, "cls": cls}
    exec("\n".join(lines), namespace)
    made: Callable[..., _T] = namespace["make"]
    return made


def _make_copier(cls: type) -> Any:
    names = field_names(cls)
    lines = [
        "def copier(obj, changes):",
        "    if not changes.keys() <= known:",
        "        unknown = sorted(set(changes) - known)",
        "        raise AttributeError(f'{cls.__name__} has no field(s) {unknown}')",
        "    new = new_object(cls)",
    ]
    lines += [
        f"    new.{name} = changes[{name!r}] if {name!r} in changes else obj.{name}"
        for name in names
    ]
    lines += ["    return new"]
    namespace: dict[str, Any] = {"new_object": _new_object, "cls": cls, "known": set(names)}
    exec("\n".join(lines), namespace)
    return namespace["copier"]


@record
class EcuInfo:
    """One ECU of a vehicle as its gateway read it."""

    name: str
    hardware_id: str = ""
    part_number: str = ""
    software_version: str = ""
    serial_number: str = ""
    active_bank: int = 0
    anti_rollback: int = 0


@record
class VehicleFilter:
    """Selects vehicles; every field that is set must match."""

    model: str = ""
    tags: tuple[str, ...] = ()
    vins: tuple[str, ...] = ()
    ecu_name: str = ""
    hardware_id: str = ""
    software_version: str = ""

    def matches(self, vehicle: Vehicle) -> bool:
        """Whether ``vehicle`` passes this filter."""
        if self.model and vehicle.model != self.model:
            return False
        if self.vins and vehicle.vin not in self.vins:
            return False
        if self.tags and not set(self.tags) <= set(vehicle.tags):
            return False
        if self.ecu_name or self.hardware_id or self.software_version:
            return any(self._ecu_matches(ecu) for ecu in vehicle.ecus)
        return True

    def _ecu_matches(self, ecu: EcuInfo) -> bool:
        return (
            (not self.ecu_name or ecu.name == self.ecu_name)
            and (not self.hardware_id or ecu.hardware_id == self.hardware_id)
            and (not self.software_version or ecu.software_version == self.software_version)
        )

    def check(self) -> VehicleFilter:
        """Return self, or raise :class:`InvalidArgument` for an inconsistent filter."""
        if self.software_version and not (self.ecu_name or self.hardware_id):
            raise InvalidArgument(
                "filter.software_version needs filter.ecu_name or filter.hardware_id "
                "(which ECU's version?)"
            )
        return self


@record
class Vehicle:
    """A registered vehicle."""

    vin: str
    model: str = ""
    tags: tuple[str, ...] = ()
    ecus: tuple[EcuInfo, ...] = ()
    state: str = ""
    registered_at: float = 0.0
    last_seen_at: float = 0.0
    checkins: int = 0
    telemetry: dict[str, float] = field(default_factory=dict)

    def touched(self, at: float, state: str | None, ecus: Sequence[EcuInfo] | None) -> Vehicle:
        """Return a copy as a check-in leaves it: seen at ``at``, one check-in more.

        ``state`` and ``ecus`` replace the vehicle's own unless ``None``. The
        slots are filled here, as :meth:`Action.advanced` does: every check-in
        of a fleet makes one.
        """
        new: Any = _new_object(Vehicle)
        new.vin = self.vin
        new.model = self.model
        new.tags = self.tags
        new.ecus = self.ecus if ecus is None else tuple(ecus)
        new.state = self.state if state is None else state
        new.registered_at = self.registered_at
        new.last_seen_at = at
        new.checkins = self.checkins + 1
        new.telemetry = self.telemetry
        made: Vehicle = new
        return made


@record
class Artifact:
    """A stored signed image, identified by the SHA-256 of its bytes."""

    sha256: str
    size_bytes: int
    hardware_id: str
    version: str
    anti_rollback: int
    signing_key_id: str
    created_at: float
    filename: str = ""


@record
class ReleaseImage:
    """One image of a release."""

    ecu: str
    sha256: str
    size_bytes: int
    hardware_id: str
    compatible_hardware_ids: tuple[str, ...]
    version: str
    anti_rollback: int


@record
class Release:
    """A signed set of images, one per ECU, in flashing order."""

    key: int
    name: str
    version: str
    images: tuple[ReleaseImage, ...]
    metadata: bytes
    signature: bytes
    signing_key_id: str
    created_at: float
    request_id: str = ""

    @property
    def release_id(self) -> str:
        """The public id."""
        return format_id("rel", self.key)


@record
class Campaign:
    """A staged rollout of a release."""

    key: int
    name: str
    release_key: int
    state: CampaignState
    filter: VehicleFilter
    wave_sizes: tuple[int, ...]
    success_threshold_pct: float
    error_threshold_pct: float
    max_retries: int
    action_timeout_s: int
    target_count: int
    excluded_count: int
    created_at: float
    updated_at: float
    current_wave: int = 0
    pause_reason: str = ""
    # Waves whose failures an operator accepted by resuming after an automatic pause.
    accepted_waves: tuple[int, ...] = ()
    # The current pause was made by a threshold rule (not by an operator).
    auto_paused: bool = False
    request_id: str = ""
    # When ``start`` ran (``None`` for a draft); the wave time gates count from it.
    started_at: float | None = None
    # Per wave, seconds after ``started_at`` before which it may not start (0: no gate).
    # Empty for campaigns made before timed waves existed: no wave has a gate.
    wave_start_after_s: tuple[float, ...] = ()
    # The campaign runs but ``current_wave`` (wave 0) waits for its start time.
    awaiting_start: bool = False
    rollout_rate: RolloutRate | None = None
    abort_criteria: tuple[AbortCriterion, ...] = ()
    # Rollout-rate bookkeeping: the current rate, how many actions it released
    # so far, the notified (or succeeded) count at the last increase, the
    # fraction of an action owed from earlier ticks, and when it last ran.
    rate_per_minute: float = 0.0
    released: int = 0
    rate_mark: int = 0
    release_credit: float = 0.0
    released_at: float | None = None

    @property
    def campaign_id(self) -> str:
        """The public id."""
        return format_id("cmp", self.key)

    @property
    def release_id(self) -> str:
        """The public id of the release."""
        return format_id("rel", self.release_key)

    def with_changes(self, **changes: Any) -> Campaign:
        """Return a copy with ``changes`` applied."""
        return copy_with(self, changes)


@record
class Action:
    """One vehicle's update action in a campaign (a deployment, as the vehicle sees it)."""

    key: int
    campaign_key: int
    vin: str
    wave: int
    state: ActionState
    updated_at: float
    attempts: int = 0
    progress_pct: int = 0
    failure_step: str = ""
    failure_reason: str = ""

    @property
    def deployment_id(self) -> str:
        """The public id (what the vehicle calls a deployment)."""
        return format_id("dep", self.key)

    @property
    def campaign_id(self) -> str:
        """The public id of the campaign."""
        return format_id("cmp", self.campaign_key)

    def with_changes(self, **changes: Any) -> Action:
        """Return a copy with ``changes`` applied."""
        return copy_with(self, changes)

    def advanced(
        self,
        state: ActionState,
        updated_at: float,
        attempts: int,
        progress_pct: int,
        failure_step: str,
        failure_reason: str,
    ) -> Action:
        """Return a copy with every field its life changes given, in field order.

        The campaign engine's hot path: a fleet moves its actions millions of
        times. The slots are filled here, as :func:`copy_with`'s copiers do,
        without the call of ``__init__`` (a quarter of the cost).
        """
        new: Any = _new_object(Action)
        new.key = self.key
        new.campaign_key = self.campaign_key
        new.vin = self.vin
        new.wave = self.wave
        new.state = state
        new.updated_at = updated_at
        new.attempts = attempts
        new.progress_pct = progress_pct
        new.failure_step = failure_step
        new.failure_reason = failure_reason
        made: Action = new
        return made


@record
class CampaignEvent:
    """One entry of a campaign's history."""

    key: int
    campaign_key: int
    at: float
    kind: str
    vin: str = ""
    action_state: ActionState | None = None
    campaign_state: CampaignState | None = None
    detail: str = ""


@record
class WaveSpec:
    """A wave's size (a count of vehicles or a percentage of the targets) and time gate.

    ``start_after_s``: the wave may not start before the campaign's start plus
    this many seconds, even when its predecessor has passed (``None``: no gate).
    """

    count: int | None = None
    percent: float | None = None
    start_after_s: float | None = None


RateTrigger = Literal["notified", "succeeded"]
RATE_TRIGGERS: tuple[RateTrigger, ...] = ("notified", "succeeded")
MAX_RATE_PER_MINUTE = 100_000


@record
class RolloutRate:
    """Release a started wave's vehicles at a rate that grows (AWS IoT Jobs' exponential rollout).

    Every ``increase_every`` vehicles notified (or succeeded, per
    ``increase_on``) multiply the rate by ``increment_factor``, up to
    ``maximum_per_minute`` (``None``: :data:`MAX_RATE_PER_MINUTE`).
    ``increase_every`` 0 keeps the base rate.
    """

    base_per_minute: int
    increment_factor: float = 1.0
    increase_every: int = 0
    increase_on: RateTrigger = "notified"
    maximum_per_minute: int | None = None


AbortFailure = Literal["failed", "rolled_back", "any"]
ABORT_FAILURES: tuple[AbortFailure, ...] = ("failed", "rolled_back", "any")


@record
class AbortCriterion:
    """Abort the campaign when this share of its executed vehicles failed (AWS IoT Jobs).

    Executed vehicles are those that succeeded, failed or rolled back with no
    retry left, over all waves; ``failure`` names which of them count as
    failures (``any``: failed or rolled back). The criterion applies once at
    least ``min_executed`` vehicles have executed.
    """

    failure: AbortFailure
    threshold_pct: float
    min_executed: int


DEFAULT_SUCCESS_THRESHOLD_PCT = 95.0
DEFAULT_ERROR_THRESHOLD_PCT = 10.0


@record
class CampaignSpec:
    """What an operator asks for when creating a campaign."""

    name: str
    release_id: str
    filter: VehicleFilter = VehicleFilter()
    waves: tuple[WaveSpec, ...] = ()
    success_threshold_pct: float = DEFAULT_SUCCESS_THRESHOLD_PCT
    error_threshold_pct: float = DEFAULT_ERROR_THRESHOLD_PCT
    max_retries: int = 0
    action_timeout_s: int = 0
    force: bool = False
    request_id: str = ""
    rollout_rate: RolloutRate | None = None
    abort_criteria: tuple[AbortCriterion, ...] = ()


@record
class DeploymentReport:
    """A vehicle's report on one of its deployments."""

    vin: str
    deployment_id: str
    report_id: str
    state: ActionState
    progress_pct: int = 0
    failure_step: str = ""
    failure_reason: str = ""
    ecu_progress: tuple[dict[str, str], ...] = ()
    inventory: tuple[EcuInfo, ...] = ()
    detail: str = ""
