import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from backend_stub.api import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArtifactHeader(_message.Message):
    __slots__ = ("size_bytes", "sha256", "filename")
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    size_bytes: int
    sha256: str
    filename: str
    def __init__(self, size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., filename: _Optional[str] = ...) -> None: ...

class UploadArtifactRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ArtifactHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[ArtifactHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("sha256", "size_bytes", "hardware_id", "version", "anti_rollback", "signing_key_id", "created_at", "already_existed", "filename")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ANTI_ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ALREADY_EXISTED_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    hardware_id: str
    version: str
    anti_rollback: int
    signing_key_id: str
    created_at: _timestamp_pb2.Timestamp
    already_existed: bool
    filename: str
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., hardware_id: _Optional[str] = ..., version: _Optional[str] = ..., anti_rollback: _Optional[int] = ..., signing_key_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., already_existed: _Optional[bool] = ..., filename: _Optional[str] = ...) -> None: ...

class GetArtifactRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class ListArtifactsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListArtifactsResponse(_message.Message):
    __slots__ = ("artifacts", "next_page_token")
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    artifacts: _containers.RepeatedCompositeFieldContainer[Artifact]
    next_page_token: str
    def __init__(self, artifacts: _Optional[_Iterable[_Union[Artifact, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ReleaseImage(_message.Message):
    __slots__ = ("ecu", "sha256", "compatible_hardware_ids", "hardware_id", "version", "anti_rollback", "size_bytes")
    ECU_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    COMPATIBLE_HARDWARE_IDS_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ANTI_ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ecu: str
    sha256: str
    compatible_hardware_ids: _containers.RepeatedScalarFieldContainer[str]
    hardware_id: str
    version: str
    anti_rollback: int
    size_bytes: int
    def __init__(self, ecu: _Optional[str] = ..., sha256: _Optional[str] = ..., compatible_hardware_ids: _Optional[_Iterable[str]] = ..., hardware_id: _Optional[str] = ..., version: _Optional[str] = ..., anti_rollback: _Optional[int] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class CreateReleaseRequest(_message.Message):
    __slots__ = ("name", "version", "images", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    images: _containers.RepeatedCompositeFieldContainer[ReleaseImage]
    request_id: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., images: _Optional[_Iterable[_Union[ReleaseImage, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ("release_id", "name", "version", "images", "metadata", "signature", "signing_key_id", "created_at")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    name: str
    version: str
    images: _containers.RepeatedCompositeFieldContainer[ReleaseImage]
    metadata: bytes
    signature: bytes
    signing_key_id: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, release_id: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., images: _Optional[_Iterable[_Union[ReleaseImage, _Mapping]]] = ..., metadata: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., signing_key_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetReleaseRequest(_message.Message):
    __slots__ = ("release_id",)
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    def __init__(self, release_id: _Optional[str] = ...) -> None: ...

class ListReleasesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListReleasesResponse(_message.Message):
    __slots__ = ("releases", "next_page_token")
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    releases: _containers.RepeatedCompositeFieldContainer[Release]
    next_page_token: str
    def __init__(self, releases: _Optional[_Iterable[_Union[Release, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("vin", "deployment_id")
    VIN_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    vin: str
    deployment_id: str
    def __init__(self, vin: _Optional[str] = ..., deployment_id: _Optional[str] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("deployment_id", "campaign_id", "vin", "state", "release", "attempt")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    VIN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    campaign_id: str
    vin: str
    state: _common_pb2.ActionState
    release: Release
    attempt: int
    def __init__(self, deployment_id: _Optional[str] = ..., campaign_id: _Optional[str] = ..., vin: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.ActionState, str]] = ..., release: _Optional[_Union[Release, _Mapping]] = ..., attempt: _Optional[int] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("sha256", "offset", "vin", "chunk_size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    VIN_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    offset: int
    vin: str
    chunk_size: int
    def __init__(self, sha256: _Optional[str] = ..., offset: _Optional[int] = ..., vin: _Optional[str] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class DownloadChunk(_message.Message):
    __slots__ = ("offset", "data", "size_bytes")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    size_bytes: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., size_bytes: _Optional[int] = ...) -> None: ...
