from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ActionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_STATE_UNSPECIFIED: _ClassVar[ActionState]
    ACTION_STATE_SCHEDULED: _ClassVar[ActionState]
    ACTION_STATE_PENDING: _ClassVar[ActionState]
    ACTION_STATE_NOTIFIED: _ClassVar[ActionState]
    ACTION_STATE_DOWNLOADING: _ClassVar[ActionState]
    ACTION_STATE_INSTALLING: _ClassVar[ActionState]
    ACTION_STATE_SUCCEEDED: _ClassVar[ActionState]
    ACTION_STATE_FAILED: _ClassVar[ActionState]
    ACTION_STATE_ROLLED_BACK: _ClassVar[ActionState]
    ACTION_STATE_CANCELED: _ClassVar[ActionState]

class CampaignState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAMPAIGN_STATE_UNSPECIFIED: _ClassVar[CampaignState]
    CAMPAIGN_STATE_DRAFT: _ClassVar[CampaignState]
    CAMPAIGN_STATE_RUNNING: _ClassVar[CampaignState]
    CAMPAIGN_STATE_PAUSED: _ClassVar[CampaignState]
    CAMPAIGN_STATE_COMPLETED: _ClassVar[CampaignState]
    CAMPAIGN_STATE_ABORTED: _ClassVar[CampaignState]
ACTION_STATE_UNSPECIFIED: ActionState
ACTION_STATE_SCHEDULED: ActionState
ACTION_STATE_PENDING: ActionState
ACTION_STATE_NOTIFIED: ActionState
ACTION_STATE_DOWNLOADING: ActionState
ACTION_STATE_INSTALLING: ActionState
ACTION_STATE_SUCCEEDED: ActionState
ACTION_STATE_FAILED: ActionState
ACTION_STATE_ROLLED_BACK: ActionState
ACTION_STATE_CANCELED: ActionState
CAMPAIGN_STATE_UNSPECIFIED: CampaignState
CAMPAIGN_STATE_DRAFT: CampaignState
CAMPAIGN_STATE_RUNNING: CampaignState
CAMPAIGN_STATE_PAUSED: CampaignState
CAMPAIGN_STATE_COMPLETED: CampaignState
CAMPAIGN_STATE_ABORTED: CampaignState

class EcuInfo(_message.Message):
    __slots__ = ("name", "hardware_id", "part_number", "software_version", "serial_number", "active_bank", "anti_rollback")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_ID_FIELD_NUMBER: _ClassVar[int]
    PART_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERIAL_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_BANK_FIELD_NUMBER: _ClassVar[int]
    ANTI_ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    name: str
    hardware_id: str
    part_number: str
    software_version: str
    serial_number: str
    active_bank: int
    anti_rollback: int
    def __init__(self, name: _Optional[str] = ..., hardware_id: _Optional[str] = ..., part_number: _Optional[str] = ..., software_version: _Optional[str] = ..., serial_number: _Optional[str] = ..., active_bank: _Optional[int] = ..., anti_rollback: _Optional[int] = ...) -> None: ...

class VehicleFilter(_message.Message):
    __slots__ = ("model", "tags", "vins", "ecu_name", "hardware_id", "software_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    VINS_FIELD_NUMBER: _ClassVar[int]
    ECU_NAME_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_ID_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    vins: _containers.RepeatedScalarFieldContainer[str]
    ecu_name: str
    hardware_id: str
    software_version: str
    def __init__(self, model: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., vins: _Optional[_Iterable[str]] = ..., ecu_name: _Optional[str] = ..., hardware_id: _Optional[str] = ..., software_version: _Optional[str] = ...) -> None: ...

class StateCount(_message.Message):
    __slots__ = ("state", "count")
    STATE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    state: ActionState
    count: int
    def __init__(self, state: _Optional[_Union[ActionState, str]] = ..., count: _Optional[int] = ...) -> None: ...
