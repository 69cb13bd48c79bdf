import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from backend_stub.api import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RateIncreaseOn(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RATE_INCREASE_ON_UNSPECIFIED: _ClassVar[RateIncreaseOn]
    RATE_INCREASE_ON_NOTIFIED: _ClassVar[RateIncreaseOn]
    RATE_INCREASE_ON_SUCCEEDED: _ClassVar[RateIncreaseOn]

class AbortFailure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ABORT_FAILURE_UNSPECIFIED: _ClassVar[AbortFailure]
    ABORT_FAILURE_FAILED: _ClassVar[AbortFailure]
    ABORT_FAILURE_ROLLED_BACK: _ClassVar[AbortFailure]
    ABORT_FAILURE_ANY: _ClassVar[AbortFailure]
RATE_INCREASE_ON_UNSPECIFIED: RateIncreaseOn
RATE_INCREASE_ON_NOTIFIED: RateIncreaseOn
RATE_INCREASE_ON_SUCCEEDED: RateIncreaseOn
ABORT_FAILURE_UNSPECIFIED: AbortFailure
ABORT_FAILURE_FAILED: AbortFailure
ABORT_FAILURE_ROLLED_BACK: AbortFailure
ABORT_FAILURE_ANY: AbortFailure

class WaveSpec(_message.Message):
    __slots__ = ("count", "percent", "start_after_s")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    count: int
    percent: float
    start_after_s: float
    def __init__(self, count: _Optional[int] = ..., percent: _Optional[float] = ..., start_after_s: _Optional[float] = ...) -> None: ...

class RolloutRate(_message.Message):
    __slots__ = ("base_per_minute", "increment_factor", "increase_every", "increase_on", "maximum_per_minute")
    BASE_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    INCREMENT_FACTOR_FIELD_NUMBER: _ClassVar[int]
    INCREASE_EVERY_FIELD_NUMBER: _ClassVar[int]
    INCREASE_ON_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    base_per_minute: int
    increment_factor: float
    increase_every: int
    increase_on: RateIncreaseOn
    maximum_per_minute: int
    def __init__(self, base_per_minute: _Optional[int] = ..., increment_factor: _Optional[float] = ..., increase_every: _Optional[int] = ..., increase_on: _Optional[_Union[RateIncreaseOn, str]] = ..., maximum_per_minute: _Optional[int] = ...) -> None: ...

class AbortCriterion(_message.Message):
    __slots__ = ("failure", "threshold_pct", "min_executed")
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_PCT_FIELD_NUMBER: _ClassVar[int]
    MIN_EXECUTED_FIELD_NUMBER: _ClassVar[int]
    failure: AbortFailure
    threshold_pct: float
    min_executed: int
    def __init__(self, failure: _Optional[_Union[AbortFailure, str]] = ..., threshold_pct: _Optional[float] = ..., min_executed: _Optional[int] = ...) -> None: ...

class CreateCampaignRequest(_message.Message):
    __slots__ = ("name", "release_id", "filter", "waves", "success_threshold_pct", "error_threshold_pct", "max_retries", "action_timeout_s", "force", "request_id", "rollout_rate", "abort_criteria")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    WAVES_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_THRESHOLD_PCT_FIELD_NUMBER: _ClassVar[int]
    ERROR_THRESHOLD_PCT_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    ACTION_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_RATE_FIELD_NUMBER: _ClassVar[int]
    ABORT_CRITERIA_FIELD_NUMBER: _ClassVar[int]
    name: str
    release_id: str
    filter: _common_pb2.VehicleFilter
    waves: _containers.RepeatedCompositeFieldContainer[WaveSpec]
    success_threshold_pct: float
    error_threshold_pct: float
    max_retries: int
    action_timeout_s: int
    force: bool
    request_id: str
    rollout_rate: RolloutRate
    abort_criteria: _containers.RepeatedCompositeFieldContainer[AbortCriterion]
    def __init__(self, name: _Optional[str] = ..., release_id: _Optional[str] = ..., filter: _Optional[_Union[_common_pb2.VehicleFilter, _Mapping]] = ..., waves: _Optional[_Iterable[_Union[WaveSpec, _Mapping]]] = ..., success_threshold_pct: _Optional[float] = ..., error_threshold_pct: _Optional[float] = ..., max_retries: _Optional[int] = ..., action_timeout_s: _Optional[int] = ..., force: _Optional[bool] = ..., request_id: _Optional[str] = ..., rollout_rate: _Optional[_Union[RolloutRate, _Mapping]] = ..., abort_criteria: _Optional[_Iterable[_Union[AbortCriterion, _Mapping]]] = ...) -> None: ...

class CampaignRequest(_message.Message):
    __slots__ = ("campaign_id", "reason")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    reason: str
    def __init__(self, campaign_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class WaveStatus(_message.Message):
    __slots__ = ("index", "size", "counts", "started", "start_after_s", "starts_at")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    STARTS_AT_FIELD_NUMBER: _ClassVar[int]
    index: int
    size: int
    counts: _containers.RepeatedCompositeFieldContainer[_common_pb2.StateCount]
    started: bool
    start_after_s: float
    starts_at: _timestamp_pb2.Timestamp
    def __init__(self, index: _Optional[int] = ..., size: _Optional[int] = ..., counts: _Optional[_Iterable[_Union[_common_pb2.StateCount, _Mapping]]] = ..., started: _Optional[bool] = ..., start_after_s: _Optional[float] = ..., starts_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Campaign(_message.Message):
    __slots__ = ("campaign_id", "name", "release_id", "state", "pause_reason", "current_wave", "waves", "counts", "success_threshold_pct", "error_threshold_pct", "max_retries", "action_timeout_s", "target_count", "excluded_count", "filter", "created_at", "updated_at", "rollout_rate", "abort_criteria", "rate_per_minute", "released", "started_at")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAUSE_REASON_FIELD_NUMBER: _ClassVar[int]
    CURRENT_WAVE_FIELD_NUMBER: _ClassVar[int]
    WAVES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_THRESHOLD_PCT_FIELD_NUMBER: _ClassVar[int]
    ERROR_THRESHOLD_PCT_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    ACTION_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    TARGET_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_COUNT_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_RATE_FIELD_NUMBER: _ClassVar[int]
    ABORT_CRITERIA_FIELD_NUMBER: _ClassVar[int]
    RATE_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    name: str
    release_id: str
    state: _common_pb2.CampaignState
    pause_reason: str
    current_wave: int
    waves: _containers.RepeatedCompositeFieldContainer[WaveStatus]
    counts: _containers.RepeatedCompositeFieldContainer[_common_pb2.StateCount]
    success_threshold_pct: float
    error_threshold_pct: float
    max_retries: int
    action_timeout_s: int
    target_count: int
    excluded_count: int
    filter: _common_pb2.VehicleFilter
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    rollout_rate: RolloutRate
    abort_criteria: _containers.RepeatedCompositeFieldContainer[AbortCriterion]
    rate_per_minute: float
    released: int
    started_at: _timestamp_pb2.Timestamp
    def __init__(self, campaign_id: _Optional[str] = ..., name: _Optional[str] = ..., release_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.CampaignState, str]] = ..., pause_reason: _Optional[str] = ..., current_wave: _Optional[int] = ..., waves: _Optional[_Iterable[_Union[WaveStatus, _Mapping]]] = ..., counts: _Optional[_Iterable[_Union[_common_pb2.StateCount, _Mapping]]] = ..., success_threshold_pct: _Optional[float] = ..., error_threshold_pct: _Optional[float] = ..., max_retries: _Optional[int] = ..., action_timeout_s: _Optional[int] = ..., target_count: _Optional[int] = ..., excluded_count: _Optional[int] = ..., filter: _Optional[_Union[_common_pb2.VehicleFilter, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rollout_rate: _Optional[_Union[RolloutRate, _Mapping]] = ..., abort_criteria: _Optional[_Iterable[_Union[AbortCriterion, _Mapping]]] = ..., rate_per_minute: _Optional[float] = ..., released: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListCampaignsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCampaignsResponse(_message.Message):
    __slots__ = ("campaigns", "next_page_token")
    CAMPAIGNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    campaigns: _containers.RepeatedCompositeFieldContainer[Campaign]
    next_page_token: str
    def __init__(self, campaigns: _Optional[_Iterable[_Union[Campaign, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("deployment_id", "campaign_id", "vin", "wave", "state", "attempts", "progress_pct", "failure_step", "failure_reason", "updated_at")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    VIN_FIELD_NUMBER: _ClassVar[int]
    WAVE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_PCT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_STEP_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    campaign_id: str
    vin: str
    wave: int
    state: _common_pb2.ActionState
    attempts: int
    progress_pct: int
    failure_step: str
    failure_reason: str
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, deployment_id: _Optional[str] = ..., campaign_id: _Optional[str] = ..., vin: _Optional[str] = ..., wave: _Optional[int] = ..., state: _Optional[_Union[_common_pb2.ActionState, str]] = ..., attempts: _Optional[int] = ..., progress_pct: _Optional[int] = ..., failure_step: _Optional[str] = ..., failure_reason: _Optional[str] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListActionsRequest(_message.Message):
    __slots__ = ("campaign_id", "states", "page_size", "page_token")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    states: _containers.RepeatedScalarFieldContainer[_common_pb2.ActionState]
    page_size: int
    page_token: str
    def __init__(self, campaign_id: _Optional[str] = ..., states: _Optional[_Iterable[_Union[_common_pb2.ActionState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListActionsResponse(_message.Message):
    __slots__ = ("actions", "next_page_token")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedCompositeFieldContainer[Action]
    next_page_token: str
    def __init__(self, actions: _Optional[_Iterable[_Union[Action, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchCampaignRequest(_message.Message):
    __slots__ = ("campaign_id", "after_event_id")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    after_event_id: int
    def __init__(self, campaign_id: _Optional[str] = ..., after_event_id: _Optional[int] = ...) -> None: ...

class CampaignEvent(_message.Message):
    __slots__ = ("event_id", "campaign_id", "at", "kind", "vin", "action_state", "campaign_state", "detail")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VIN_FIELD_NUMBER: _ClassVar[int]
    ACTION_STATE_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    campaign_id: str
    at: _timestamp_pb2.Timestamp
    kind: str
    vin: str
    action_state: _common_pb2.ActionState
    campaign_state: _common_pb2.CampaignState
    detail: str
    def __init__(self, event_id: _Optional[int] = ..., campaign_id: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[str] = ..., vin: _Optional[str] = ..., action_state: _Optional[_Union[_common_pb2.ActionState, str]] = ..., campaign_state: _Optional[_Union[_common_pb2.CampaignState, str]] = ..., detail: _Optional[str] = ...) -> None: ...
