import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from backend_stub.api import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterVehicleRequest(_message.Message):
    __slots__ = ("vin", "model", "tags", "ecus")
    VIN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    ECUS_FIELD_NUMBER: _ClassVar[int]
    vin: str
    model: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    ecus: _containers.RepeatedCompositeFieldContainer[_common_pb2.EcuInfo]
    def __init__(self, vin: _Optional[str] = ..., model: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., ecus: _Optional[_Iterable[_Union[_common_pb2.EcuInfo, _Mapping]]] = ...) -> None: ...

class Vehicle(_message.Message):
    __slots__ = ("vin", "model", "tags", "ecus", "state", "registered_at", "last_seen_at", "checkins", "telemetry")
    class TelemetryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VIN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    ECUS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    CHECKINS_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    vin: str
    model: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    ecus: _containers.RepeatedCompositeFieldContainer[_common_pb2.EcuInfo]
    state: str
    registered_at: _timestamp_pb2.Timestamp
    last_seen_at: _timestamp_pb2.Timestamp
    checkins: int
    telemetry: _containers.ScalarMap[str, float]
    def __init__(self, vin: _Optional[str] = ..., model: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., ecus: _Optional[_Iterable[_Union[_common_pb2.EcuInfo, _Mapping]]] = ..., state: _Optional[str] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., checkins: _Optional[int] = ..., telemetry: _Optional[_Mapping[str, float]] = ...) -> None: ...

class CheckInRequest(_message.Message):
    __slots__ = ("vin", "state", "ecus")
    VIN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ECUS_FIELD_NUMBER: _ClassVar[int]
    vin: str
    state: str
    ecus: _containers.RepeatedCompositeFieldContainer[_common_pb2.EcuInfo]
    def __init__(self, vin: _Optional[str] = ..., state: _Optional[str] = ..., ecus: _Optional[_Iterable[_Union[_common_pb2.EcuInfo, _Mapping]]] = ...) -> None: ...

class DeploymentNotice(_message.Message):
    __slots__ = ("deployment_id", "campaign_id", "release_id", "state")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    campaign_id: str
    release_id: str
    state: _common_pb2.ActionState
    def __init__(self, deployment_id: _Optional[str] = ..., campaign_id: _Optional[str] = ..., release_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.ActionState, str]] = ...) -> None: ...

class CheckInResponse(_message.Message):
    __slots__ = ("deployments", "next_checkin_s")
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CHECKIN_S_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[DeploymentNotice]
    next_checkin_s: int
    def __init__(self, deployments: _Optional[_Iterable[_Union[DeploymentNotice, _Mapping]]] = ..., next_checkin_s: _Optional[int] = ...) -> None: ...

class ReportTelemetryRequest(_message.Message):
    __slots__ = ("vin", "values", "sampled_at")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VIN_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_AT_FIELD_NUMBER: _ClassVar[int]
    vin: str
    values: _containers.ScalarMap[str, float]
    sampled_at: _timestamp_pb2.Timestamp
    def __init__(self, vin: _Optional[str] = ..., values: _Optional[_Mapping[str, float]] = ..., sampled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReportTelemetryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EcuProgress(_message.Message):
    __slots__ = ("ecu", "state", "step", "reason", "from_version", "to_version")
    ECU_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    ecu: str
    state: str
    step: str
    reason: str
    from_version: str
    to_version: str
    def __init__(self, ecu: _Optional[str] = ..., state: _Optional[str] = ..., step: _Optional[str] = ..., reason: _Optional[str] = ..., from_version: _Optional[str] = ..., to_version: _Optional[str] = ...) -> None: ...

class ReportDeploymentRequest(_message.Message):
    __slots__ = ("vin", "deployment_id", "report_id", "state", "progress_pct", "ecus", "failure_step", "failure_reason", "inventory", "detail")
    VIN_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_PCT_FIELD_NUMBER: _ClassVar[int]
    ECUS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_STEP_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    vin: str
    deployment_id: str
    report_id: str
    state: _common_pb2.ActionState
    progress_pct: int
    ecus: _containers.RepeatedCompositeFieldContainer[EcuProgress]
    failure_step: str
    failure_reason: str
    inventory: _containers.RepeatedCompositeFieldContainer[_common_pb2.EcuInfo]
    detail: str
    def __init__(self, vin: _Optional[str] = ..., deployment_id: _Optional[str] = ..., report_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.ActionState, str]] = ..., progress_pct: _Optional[int] = ..., ecus: _Optional[_Iterable[_Union[EcuProgress, _Mapping]]] = ..., failure_step: _Optional[str] = ..., failure_reason: _Optional[str] = ..., inventory: _Optional[_Iterable[_Union[_common_pb2.EcuInfo, _Mapping]]] = ..., detail: _Optional[str] = ...) -> None: ...

class ReportDeploymentResponse(_message.Message):
    __slots__ = ("state", "duplicate")
    STATE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    state: _common_pb2.ActionState
    duplicate: bool
    def __init__(self, state: _Optional[_Union[_common_pb2.ActionState, str]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class GetVehicleRequest(_message.Message):
    __slots__ = ("vin",)
    VIN_FIELD_NUMBER: _ClassVar[int]
    vin: str
    def __init__(self, vin: _Optional[str] = ...) -> None: ...

class ListVehiclesRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: _common_pb2.VehicleFilter
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Union[_common_pb2.VehicleFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListVehiclesResponse(_message.Message):
    __slots__ = ("vehicles", "next_page_token")
    VEHICLES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    vehicles: _containers.RepeatedCompositeFieldContainer[Vehicle]
    next_page_token: str
    def __init__(self, vehicles: _Optional[_Iterable[_Union[Vehicle, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
