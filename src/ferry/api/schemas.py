"""Pydantic models of every OMS v2 request and response (oms-api.md §1), and validation errors as OMS errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Final, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    StringConstraints,
    ValidationError,
    field_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ferry.api.errors import Codes, Messages, OmsError
from ferry.secrets import Secret
from ferry.storage.registry import as_folder

# ---------------------------------------------------------------------------------------------------------------
# Enums (§1.7). Matching is case-insensitive: group responses echo upper-case spellings that clients send back.
# ---------------------------------------------------------------------------------------------------------------


class OmsEnum(StrEnum):
    """A string enum that accepts any letter case and answers with the documented spelling."""

    @classmethod
    def _missing_(cls, value: object) -> Self | None:
        if isinstance(value, str):
            folded = value.casefold()
            for member in cls:
                if member.value.casefold() == folded:
                    return member
        return None


class TaskType(OmsEnum):
    OBJECT = "object"
    PREFIX = "prefix"
    LIST = "list"
    URL_LIST = "url_list"


class GroupTaskType(OmsEnum):
    PREFIX = "PREFIX"
    LIST = "LIST"
    URL_LIST = "URL_LIST"


class CloudType(OmsEnum):
    """Every cloud name the API uses; each request field accepts the subset documented for it."""

    AWS = "AWS"
    AZURE = "Azure"
    ALIYUN = "Aliyun"
    TENCENT = "Tencent"
    HUAWEICLOUD = "HuaweiCloud"
    QINGCLOUD = "QingCloud"
    KINGSOFTCLOUD = "KingsoftCloud"
    BAIDU = "Baidu"
    QINIU = "Qiniu"
    GOOGLE = "Google"
    URLSOURCE = "URLSource"
    UCLOUD = "UCloud"
    HEC = "HEC"


SYNC_CLOUDS: Final = frozenset(
    {
        CloudType.AWS,
        CloudType.AZURE,
        CloudType.ALIYUN,
        CloudType.TENCENT,
        CloudType.HUAWEICLOUD,
        CloudType.QINGCLOUD,
        CloudType.KINGSOFTCLOUD,
        CloudType.BAIDU,
        CloudType.QINIU,
        CloudType.UCLOUD,
    }
)
TASK_CLOUDS: Final = SYNC_CLOUDS | {CloudType.GOOGLE, CloudType.URLSOURCE}
HELPER_CLOUDS: Final = TASK_CLOUDS | {CloudType.HEC}
CDN_HELPER_CLOUDS: Final = HELPER_CLOUDS - {CloudType.GOOGLE}


class TaskStatus(IntEnum):
    WAITING = 1
    RUNNING = 2
    STOPPED = 3
    FAILED = 4
    SUCCEEDED = 5
    RETRYING = 6
    PAUSING = 7


class GroupStatus(IntEnum):
    WAITING = 0
    EXECUTING = 1
    MONITORING = 2
    PAUSED = 3
    CREATE_FAILED = 4
    MIGRATE_FAILED = 5
    COMPLETED = 6
    PAUSING = 7
    WAITING_DELETE = 8
    DELETED = 9


class SyncStatus(OmsEnum):
    SYNCHRONIZING = "SYNCHRONIZING"
    STOPPED = "STOPPED"


class SyncStatType(OmsEnum):
    REQUEST = "REQUEST"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    SKIP = "SKIP"
    SIZE = "SIZE"


class StatGranularity(OmsEnum):
    FIVE_MINUTES = "FIVE_MINUTES"
    ONE_HOUR = "ONE_HOUR"


class GroupType(OmsEnum):
    NORMAL_TASK = "NORMAL_TASK"
    SYNC_TASK = "SYNC_TASK"
    GROUP_TASK = "GROUP_TASK"


class CryptoType(OmsEnum):
    DEFAULT = "DEFAULT"
    KMS = "KMS"


class StoragePolicy(OmsEnum):
    STANDARD = "STANDARD"
    IA = "IA"
    ARCHIVE = "ARCHIVE"
    DEEP_ARCHIVE = "DEEP_ARCHIVE"
    SRC_STORAGE_MAPPING = "SRC_STORAGE_MAPPING"


class OverwriteMode(OmsEnum):
    NO_OVERWRITE = "NO_OVERWRITE"
    SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE = "SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE"
    CRC64_COMPARISON_OVERWRITE = "CRC64_COMPARISON_OVERWRITE"
    FULL_OVERWRITE = "FULL_OVERWRITE"


class ConsistencyCheck(OmsEnum):
    SIZE_LAST_MODIFIED = "size_last_modified"
    CRC64 = "crc64"
    NO_CHECK = "no_check"

    @classmethod
    def _missing_(cls, value: object) -> Self | None:
        # The SDK's CreateSyncTaskReq docstring spells no_check "transmission" (§1.4); accept both.
        if isinstance(value, str) and value.casefold() == "transmission":
            return cls.NO_CHECK
        return super()._missing_(value)


class CdnAuthType(OmsEnum):
    NONE = "NONE"
    QINIU_PRIVATE_AUTHENTICATION = "QINIU_PRIVATE_AUTHENTICATION"
    ALIYUN_OSS_A = "ALIYUN_OSS_A"
    ALIYUN_OSS_B = "ALIYUN_OSS_B"
    ALIYUN_OSS_C = "ALIYUN_OSS_C"
    KSYUN_PRIVATE_AUTHENTICATION = "KSYUN_PRIVATE_AUTHENTICATION"
    AZURE_SAS_TOKEN = "AZURE_SAS_TOKEN"
    TENCENT_COS_A = "TENCENT_COS_A"
    TENCENT_COS_B = "TENCENT_COS_B"
    TENCENT_COS_C = "TENCENT_COS_C"
    TENCENT_COS_D = "TENCENT_COS_D"


class CdnProtocol(OmsEnum):
    HTTP = "http"
    HTTPS = "https"


class TaskPriority(OmsEnum):
    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"


class ObsSystem(OmsEnum):
    BUCKET = "BUCKET"
    PFS = "PFS"


class SmnTrigger(OmsEnum):
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


class SmnLanguage(OmsEnum):
    ZH_CN = "zh-cn"
    EN_US = "en-us"


class VersionStatus(OmsEnum):
    CURRENT = "CURRENT"
    SUPPORTED = "SUPPORTED"
    DEPRECATED = "DEPRECATED"


class CloudTypeKind(OmsEnum):
    SRC = "src"
    DST = "dst"


# ---------------------------------------------------------------------------------------------------------------
# Field types with the documented limits.
# ---------------------------------------------------------------------------------------------------------------

INT64_MAX: Final = 2**63 - 1
TASK_DESCRIPTION_FORBIDDEN: Final = frozenset("^<>&\"'")
SYNC_DESCRIPTION_FORBIDDEN: Final = frozenset("<>()\"'&")
DESCRIPTION_CHARS_ERROR: Final = "description_chars"


def _no_chars(forbidden: frozenset[str]) -> AfterValidator:
    listed = "".join(sorted(forbidden))

    def check(value: str) -> str:
        if any(ch in forbidden for ch in value):
            raise PydanticCustomError(DESCRIPTION_CHARS_ERROR, "must not contain any of {chars}", {"chars": listed})
        return value

    return AfterValidator(check)


def _in_clouds(allowed: frozenset[CloudType]) -> AfterValidator:
    names = ", ".join(sorted(c.value for c in allowed))

    def check(value: CloudType) -> CloudType:
        if value not in allowed:
            raise PydanticCustomError("enum", "Input should be one of: {expected}", {"expected": names})
        return value

    return AfterValidator(check)


def _number_as_text(value: Any) -> Any:
    # A few string-typed fields (list_file_num, size) hold numbers; tolerate the number itself.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _epoch_ms(value: Any) -> Any:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return value


def _save_folder(value: str) -> str:
    # A save_prefix names a folder, as a `ferry migrate` destination prefix does: "all" writes all/<key>.
    folder = as_folder(value)
    if len(folder) > 1024:
        raise PydanticCustomError("string_too_long", "String should have at most 1024 characters with its '/'")
    return folder


AccessKey = Annotated[str, StringConstraints(max_length=100)]
SecretKey = Annotated[Secret, Field(max_length=100, json_schema_extra={"maxLength": 100})]
SecurityToken = Annotated[Secret, Field(max_length=16384, json_schema_extra={"maxLength": 16384})]
ConnectionString = Annotated[Secret, Field(max_length=2048, json_schema_extra={"maxLength": 2048})]
JsonAuthFile = Secret
CdnAuthKey = Annotated[Secret, Field(max_length=255, json_schema_extra={"maxLength": 255})]
KmsKeyId = Annotated[str, StringConstraints(min_length=36, max_length=36)]
Region = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Bucket = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
ObjectKey = Annotated[str, StringConstraints(max_length=1024)]
SavePrefix = Annotated[str, StringConstraints(max_length=1024), AfterValidator(_save_folder)]
AppId = Annotated[str, StringConstraints(max_length=100)]
TaskDescription = Annotated[str, StringConstraints(max_length=255), _no_chars(TASK_DESCRIPTION_FORBIDDEN)]
SyncDescription = Annotated[str, StringConstraints(max_length=255), _no_chars(SYNC_DESCRIPTION_FORBIDDEN)]
TaskCloud = Annotated[CloudType, _in_clouds(TASK_CLOUDS)]
SyncCloud = Annotated[CloudType, _in_clouds(SYNC_CLOUDS)]
HelperCloud = Annotated[CloudType, _in_clouds(HELPER_CLOUDS)]
CdnHelperCloud = Annotated[CloudType, _in_clouds(CDN_HELPER_CLOUDS)]
EpochSeconds = Annotated[int, Field(ge=0, le=INT64_MAX)]
EpochMillis = Annotated[int, BeforeValidator(_epoch_ms), Field(ge=0, le=INT64_MAX)]
TaskId = Annotated[int, Field(ge=1, le=INT64_MAX)]
GroupId = Annotated[str, StringConstraints(min_length=1, max_length=100)]
SyncTaskId = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Count = Annotated[int, Field(ge=0)]
ClockTime = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
MIN_BANDWIDTH: Final = 1024 * 1024
MAX_BANDWIDTH: Final = 200 * 1024 * 1024
MAX_BANDWIDTH_WINDOWS: Final = 5
MAX_SYNC_EVENT_KEYS: Final = 10


# ---------------------------------------------------------------------------------------------------------------
# Bases
# ---------------------------------------------------------------------------------------------------------------


class RequestModel(BaseModel):
    """A request body or query: unknown keys ignored (§0.2), inputs never echoed in error texts."""

    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True, populate_by_name=True)


def dump(model: BaseModel) -> Any:
    """The JSON value of a response model: real JSON types, None fields left out at every level."""
    return model.model_dump(mode="json", exclude_none=True)


class ResponseModel(BaseModel):
    """A response body: real JSON types, absent fields omitted (the SDK maps missing keys to None)."""

    model_config = ConfigDict(extra="ignore")

    def to_json(self) -> dict[str, Any]:
        return dump(self)  # type: ignore[no-any-return]


class EmptyResponse(ResponseModel):
    """The answer of the 16 operations whose response model has no fields: `{}`."""


def _combination(detail: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_combination", "{detail}", {"detail": detail})


def _require_kms(crypto: CryptoType | None, kms_key_id: str | None, where: str) -> None:
    if crypto is CryptoType.KMS and not kms_key_id:
        raise _combination(f"{where}kms_key_id is required when {where}crypto_type is KMS")


# ---------------------------------------------------------------------------------------------------------------
# Shared models (§1.8)
# ---------------------------------------------------------------------------------------------------------------


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


class BandwidthPolicyDto(RequestModel):
    end: ClockTime
    max_bandwidth: Annotated[int, Field(ge=MIN_BANDWIDTH, le=MAX_BANDWIDTH)]
    start: ClockTime

    def minutes(self) -> set[int]:
        """Minutes of the day the window covers: start inclusive, end exclusive, wrapping past midnight."""
        start, end = _minutes(self.start), _minutes(self.end)
        if start < end:
            return set(range(start, end))
        return set(range(start, 24 * 60)) | set(range(end))


def _check_windows(policies: list[BandwidthPolicyDto]) -> list[BandwidthPolicyDto]:
    taken: set[int] = set()
    for policy in policies:
        covered = policy.minutes()
        if taken & covered:
            raise _combination("bandwidth_policy time windows must not overlap")
        taken |= covered
    return policies


BandwidthPolicies = Annotated[
    list[BandwidthPolicyDto], Field(max_length=MAX_BANDWIDTH_WINDOWS), AfterValidator(_check_windows)
]


class SmnConfig(RequestModel):
    language: SmnLanguage | None = None
    topic_urn: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    trigger_conditions: Annotated[list[SmnTrigger], Field(min_length=1, max_length=2)]
    message_template_name: Annotated[str, StringConstraints(max_length=255)] | None = None


class SmnInfo(ResponseModel):
    notify_result: bool | None = None
    notify_error_message: str | None = None
    topic_name: str | None = None


class SourceCdnReq(RequestModel):
    authentication_key: CdnAuthKey | None = None
    authentication_type: CdnAuthType
    domain: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    protocol: CdnProtocol
    crypto_type: CryptoType = CryptoType.DEFAULT
    kms_key_id: KmsKeyId | None = None

    @model_validator(mode="after")
    def _kms(self) -> Self:
        _require_kms(self.crypto_type, self.kms_key_id, "source_cdn.")
        return self


class SourceCdnResp(ResponseModel):
    domain: str
    protocol: CdnProtocol
    authentication_type: CdnAuthType | None = None


class ListFile(RequestModel):
    list_file_key: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    obs_bucket: Bucket
    list_file_num: Annotated[str | None, BeforeValidator(_number_as_text)] = None


class ErrorReasonResp(ResponseModel):
    error_code: str | None = None
    error_msg: str | None = None


class FailedObjectRecordDto(ResponseModel):
    result: bool | None = None
    list_file_key: str | None = None
    error_code: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# API versions (§1.1)
# ---------------------------------------------------------------------------------------------------------------


class Link(ResponseModel):
    href: str | None = None
    rel: str | None = None


class Version(ResponseModel):
    id: str | None = None
    links: list[Link] | None = None
    status: VersionStatus | None = None
    updated: str | None = None


class ListApiVersionsResponse(ResponseModel):
    versions: list[Version] | None = None


class ShowApiInfoResponse(Version):
    """`GET /{version}`: the fields of one Version, flat."""


# ---------------------------------------------------------------------------------------------------------------
# Migration tasks (§1.2)
# ---------------------------------------------------------------------------------------------------------------


def _source_credentials(
    where: str, cloud: CloudType, ak: object, sk: object, connection_string: object, json_auth_file: object
) -> None:
    if ak and sk:
        return
    if cloud is CloudType.AZURE and connection_string:
        return
    if cloud is CloudType.GOOGLE and json_auth_file:
        return
    raise _combination(f"{where}ak and {where}sk are required unless the task is a URL list")


class SrcNodeReq(RequestModel):
    cloud_type: TaskCloud = CloudType.ALIYUN
    region: Region | None = None
    ak: AccessKey | None = None
    sk: SecretKey | None = None
    connection_string: ConnectionString | None = None
    json_auth_file: JsonAuthFile | None = None
    security_token: SecurityToken | None = None
    app_id: AppId | None = None
    bucket: Bucket | None = None
    object_key: Annotated[list[ObjectKey], Field(max_length=500)] | None = None
    list_file: ListFile | None = None
    crypto_type: CryptoType = CryptoType.DEFAULT
    kms_key_id: KmsKeyId | None = None


class DstNodeReq(RequestModel):
    ak: AccessKey
    sk: SecretKey
    security_token: SecurityToken | None = None
    bucket: Bucket
    save_prefix: SavePrefix | None = None
    region: Region
    crypto_type: CryptoType = CryptoType.DEFAULT
    kms_key_id: KmsKeyId | None = None


class CreateTaskReq(RequestModel):
    task_type: TaskType = TaskType.OBJECT
    src_node: SrcNodeReq
    dst_node: DstNodeReq
    description: TaskDescription | None = None
    migrate_since: EpochSeconds | None = None
    bandwidth_policy: BandwidthPolicies | None = None
    source_cdn: SourceCdnReq | None = None
    smn_config: SmnConfig | None = None
    enable_metadata_migration: bool = False
    enable_restore: bool = False
    enable_failed_object_recording: bool = True
    object_overwrite_mode: OverwriteMode = OverwriteMode.SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE
    dst_storage_policy: StoragePolicy = StoragePolicy.STANDARD
    consistency_check: ConsistencyCheck = ConsistencyCheck.SIZE_LAST_MODIFIED
    enable_requester_pays: bool | None = None
    task_priority: TaskPriority | None = None

    @model_validator(mode="after")
    def _combinations(self) -> Self:
        src = self.src_node
        if self.task_type is TaskType.URL_LIST:
            if "cloud_type" not in src.model_fields_set:
                src.cloud_type = CloudType.URLSOURCE
            if src.cloud_type is not CloudType.URLSOURCE:
                raise _combination("src_node.cloud_type must be URLSource when task_type is url_list")
        else:
            if src.cloud_type is CloudType.URLSOURCE:
                raise _combination("src_node.cloud_type URLSource needs task_type url_list")
            if not src.region or not src.bucket:
                raise _combination("src_node.region and src_node.bucket are required unless task_type is url_list")
            _source_credentials("src_node.", src.cloud_type, src.ak, src.sk, src.connection_string, src.json_auth_file)
        if self.task_type in (TaskType.LIST, TaskType.URL_LIST) and src.list_file is None:
            raise _combination("src_node.list_file is required when task_type is list or url_list")
        _require_kms(src.crypto_type, src.kms_key_id, "src_node.")
        _require_kms(self.dst_node.crypto_type, self.dst_node.kms_key_id, "dst_node.")
        return self


class CreateTaskResponse(ResponseModel):
    id: int | None = None
    task_name: str | None = None


class StartTaskReq(RequestModel):
    src_ak: AccessKey | None = None
    src_sk: SecretKey | None = None
    connection_string: ConnectionString | None = None
    src_crypto_type: CryptoType = CryptoType.DEFAULT
    src_kms_key_id: KmsKeyId | None = None
    json_auth_file: JsonAuthFile | None = None
    src_security_token: SecurityToken | None = None
    dst_ak: AccessKey
    dst_sk: SecretKey
    dst_crypto_type: CryptoType = CryptoType.DEFAULT
    dst_kms_key_id: KmsKeyId | None = None
    dst_security_token: SecurityToken | None = None
    source_cdn_authentication_key: CdnAuthKey | None = None
    source_cdn_crypto_type: CryptoType | None = None
    source_cdn_kms_key_id: KmsKeyId | None = None
    migrate_failed_object: bool = False

    @model_validator(mode="after")
    def _kms(self) -> Self:
        _require_kms(self.src_crypto_type, self.src_kms_key_id, "src_")
        _require_kms(self.dst_crypto_type, self.dst_kms_key_id, "dst_")
        _require_kms(self.source_cdn_crypto_type, self.source_cdn_kms_key_id, "source_cdn_")
        return self


class SrcNodeResp(ResponseModel):
    bucket: str | None = None
    cloud_type: CloudType | None = None
    region: str | None = None
    app_id: str | None = None
    object_key: list[str] | None = None
    list_file: ListFile | None = None


class DstNodeResp(ResponseModel):
    bucket: str | None = None
    region: str | None = None
    save_prefix: str | None = None


class TaskResp(ResponseModel):
    bandwidth_policy: list[BandwidthPolicyDto] | None = None
    complete_size: Count | None = None
    description: str | None = None
    dst_node: DstNodeResp | None = None
    enable_failed_object_recording: bool | None = None
    enable_metadata_migration: bool | None = None
    enable_restore: bool | None = None
    error_reason: ErrorReasonResp | None = None
    failed_num: Count | None = None
    failed_object_record: FailedObjectRecordDto | None = None
    group_id: str | None = None
    id: int | None = None
    is_query_over: bool | None = None
    left_time: int | None = None
    migrate_since: EpochMillis | None = None
    migrate_speed: Count | None = None
    name: str | None = None
    progress: Annotated[float, Field(ge=0, le=1)] | None = None
    real_size: Count | None = None
    skipped_num: Count | None = None
    src_node: SrcNodeResp | None = None
    start_time: EpochMillis | None = None
    status: TaskStatus | None = None
    successful_num: Count | None = None
    task_type: TaskType | None = None
    group_type: GroupType | None = None
    total_num: Count | None = None
    total_size: Count | None = None
    total_time: Count | None = None
    smn_info: SmnInfo | None = None
    source_cdn: SourceCdnResp | None = None
    success_record_error_reason: str | None = None
    skip_record_error_reason: str | None = None
    object_overwrite_mode: OverwriteMode | None = None
    dst_storage_policy: StoragePolicy | None = None
    consistency_check: ConsistencyCheck | None = None
    enable_requester_pays: bool | None = None
    obs_system: ObsSystem | None = None
    task_priority: TaskPriority | None = None


ShowTaskResponse = TaskResp


class ListTasksResponse(ResponseModel):
    tasks: list[TaskResp] | None = None
    count: Count | None = None


class ListTasksQuery(RequestModel):
    group_id: GroupId | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 10
    offset: Annotated[int, Field(ge=0, le=10000)] = 0
    # OMS documents 1-5 and 7 as filter values; 6 (retrying) is a status a task shows, so it filters too.
    status: TaskStatus | None = None
    task_name: TaskDescription | None = None


# ---------------------------------------------------------------------------------------------------------------
# Task groups (§1.3)
# ---------------------------------------------------------------------------------------------------------------


class TaskGroupSrcNode(RequestModel):
    ak: AccessKey | None = None
    sk: SecretKey | None = None
    connection_string: ConnectionString | None = None
    crypto_type: CryptoType = CryptoType.DEFAULT
    kms_key_id: KmsKeyId | None = None
    json_auth_file: JsonAuthFile | None = None
    app_id: AppId | None = None
    region: Region | None = None
    object_key: Annotated[list[ObjectKey], Field(max_length=500)] | None = None
    bucket: Bucket | None = None
    cloud_type: TaskCloud = CloudType.ALIYUN
    list_file: ListFile | None = None


class TaskGroupDstNode(RequestModel):
    ak: AccessKey
    sk: SecretKey
    crypto_type: CryptoType = CryptoType.DEFAULT
    kms_key_id: KmsKeyId | None = None
    region: Region
    bucket: Bucket
    cloud_type: HelperCloud = CloudType.HEC
    save_prefix: SavePrefix | None = None


class CreateTaskGroupReq(RequestModel):
    src_node: TaskGroupSrcNode
    description: TaskDescription | None = None
    dst_node: TaskGroupDstNode
    enable_metadata_migration: bool = False
    enable_failed_object_recording: bool = True
    enable_restore: bool = False
    task_type: GroupTaskType = GroupTaskType.PREFIX
    bandwidth_policy: BandwidthPolicies | None = None
    smn_config: SmnConfig | None = None
    source_cdn: SourceCdnReq | None = None
    migrate_since: EpochSeconds | None = None
    object_overwrite_mode: OverwriteMode = OverwriteMode.SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE
    dst_storage_policy: StoragePolicy = StoragePolicy.STANDARD
    consistency_check: ConsistencyCheck = ConsistencyCheck.SIZE_LAST_MODIFIED
    enable_requester_pays: bool | None = None

    @model_validator(mode="after")
    def _combinations(self) -> Self:
        src = self.src_node
        if self.task_type is GroupTaskType.URL_LIST:
            if "cloud_type" not in src.model_fields_set:
                src.cloud_type = CloudType.URLSOURCE
            if src.cloud_type is not CloudType.URLSOURCE:
                raise _combination("src_node.cloud_type must be URLSource when task_type is URL_LIST")
        else:
            if src.cloud_type is CloudType.URLSOURCE:
                raise _combination("src_node.cloud_type URLSource needs task_type URL_LIST")
            if not src.region or not src.bucket:
                raise _combination("src_node.region and src_node.bucket are required unless task_type is URL_LIST")
            _source_credentials("src_node.", src.cloud_type, src.ak, src.sk, src.connection_string, src.json_auth_file)
        if self.task_type in (GroupTaskType.LIST, GroupTaskType.URL_LIST) and src.list_file is None:
            raise _combination("src_node.list_file is required when task_type is LIST or URL_LIST")
        _require_kms(src.crypto_type, src.kms_key_id, "src_node.")
        _require_kms(self.dst_node.crypto_type, self.dst_node.kms_key_id, "dst_node.")
        return self


class CreateTaskGroupResponse(ResponseModel):
    group_id: str | None = None


class _Upper(ResponseModel):
    @field_serializer("cloud_type", check_fields=False)
    def _upper(self, value: CloudType | None) -> str | None:
        # Group responses spell clouds in upper case (ALIYUN, HUAWEICLOUD, URLSOURCE, …), §1.3.
        return value.value.upper() if value is not None else None


class TaskGroupSrcNodeResp(_Upper):
    bucket: str | None = None
    cloud_type: CloudType | None = None
    region: str | None = None
    app_id: str | None = None
    object_key: list[str] | None = None
    list_file: ListFile | None = None


class TaskGroupDstNodeResp(ResponseModel):
    bucket: str | None = None
    region: str | None = None
    save_prefix: str | None = None


class TaskGroupResp(ResponseModel):
    group_id: str | None = None
    status: GroupStatus | None = None
    error_reason: ErrorReasonResp | None = None
    src_node: TaskGroupSrcNodeResp | None = None
    description: str | None = None
    dst_node: TaskGroupDstNodeResp | None = None
    enable_metadata_migration: bool | None = None
    enable_failed_object_recording: bool | None = None
    enable_restore: bool | None = None
    task_type: GroupTaskType | None = None
    bandwidth_policy: list[BandwidthPolicyDto] | None = None
    smn_config: SmnInfo | None = None
    source_cdn: SourceCdnResp | None = None
    migrate_since: EpochMillis | None = None
    migrate_speed: Count | None = None
    total_time: Count | None = None
    start_time: EpochMillis | None = None
    total_task_num: Count | None = None
    create_task_num: Count | None = None
    failed_task_num: Count | None = None
    complete_task_num: Count | None = None
    paused_task_num: Count | None = None
    executing_task_num: Count | None = None
    waiting_task_num: Count | None = None
    total_num: Count | None = None
    create_complete_num: Count | None = None
    success_num: Count | None = None
    fail_num: Count | None = None
    skip_num: Count | None = None
    total_size: Count | None = None
    create_complete_size: Count | None = None
    complete_size: Count | None = None
    failed_object_record: FailedObjectRecordDto | None = None
    object_overwrite_mode: OverwriteMode | None = None
    dst_storage_policy: StoragePolicy | None = None
    consistency_check: ConsistencyCheck | None = None
    obs_system: ObsSystem | None = None
    enable_requester_pays: bool | None = None


ShowTaskGroupResponse = TaskGroupResp


class ListTaskGroupResponse(ResponseModel):
    count: Count | None = None
    taskgroups: list[TaskGroupResp] | None = None


class ListTaskGroupQuery(RequestModel):
    limit: Annotated[int, Field(ge=1, le=100)] = 10
    offset: Annotated[int, Field(ge=0, le=10000)] = 0
    status: GroupStatus | None = None


class _RestartCredentials(RequestModel):
    """Credentials re-supplied when a paused or failed group runs again."""

    src_ak: AccessKey | None = None
    src_sk: SecretKey | None = None
    src_crypto_type: CryptoType = CryptoType.DEFAULT
    src_kms_key_id: KmsKeyId | None = None
    connection_string: ConnectionString | None = None
    json_auth_file: JsonAuthFile | None = None
    dst_crypto_type: CryptoType = CryptoType.DEFAULT
    dst_kms_key_id: KmsKeyId | None = None
    source_cdn_authentication_key: CdnAuthKey | None = None
    source_cdn_crypto_type: CryptoType | None = None
    source_cdn_kms_key_id: KmsKeyId | None = None

    @model_validator(mode="after")
    def _kms(self) -> Self:
        _require_kms(self.src_crypto_type, self.src_kms_key_id, "src_")
        _require_kms(self.dst_crypto_type, self.dst_kms_key_id, "dst_")
        _require_kms(self.source_cdn_crypto_type, self.source_cdn_kms_key_id, "source_cdn_")
        return self


class StartTaskGroupReq(_RestartCredentials):
    dst_ak: AccessKey
    dst_sk: SecretKey


class RetryTaskGroupReq(_RestartCredentials):
    dst_ak: AccessKey | None = None
    dst_sk: SecretKey | None = None
    migrate_failed_object: bool = False


# ---------------------------------------------------------------------------------------------------------------
# Sync tasks (§1.4)
# ---------------------------------------------------------------------------------------------------------------


class CreateSyncTaskReq(RequestModel):
    src_cloud_type: SyncCloud = CloudType.ALIYUN
    src_region: Region
    src_bucket: Bucket
    src_ak: AccessKey
    src_sk: SecretKey
    src_crypto_type: CryptoType = CryptoType.DEFAULT
    src_kms_key_id: KmsKeyId | None = None
    dst_ak: AccessKey
    dst_sk: SecretKey
    dst_crypto_type: CryptoType = CryptoType.DEFAULT
    dst_kms_key_id: KmsKeyId | None = None
    dst_region: Region
    dst_bucket: Bucket
    description: SyncDescription | None = None
    enable_metadata_migration: bool = False
    enable_restore: bool = False
    dst_storage_policy: StoragePolicy = StoragePolicy.STANDARD
    app_id: AppId | None = None
    source_cdn: SourceCdnReq | None = None
    consistency_check: ConsistencyCheck = ConsistencyCheck.SIZE_LAST_MODIFIED

    @model_validator(mode="after")
    def _kms(self) -> Self:
        _require_kms(self.src_crypto_type, self.src_kms_key_id, "src_")
        _require_kms(self.dst_crypto_type, self.dst_kms_key_id, "dst_")
        return self


class CreateSyncTaskResponse(ResponseModel):
    sync_task_id: str | None = None


class _SyncTaskCommon(ResponseModel):
    sync_task_id: str | None = None
    src_cloud_type: CloudType | None = None
    src_region: str | None = None
    src_bucket: str | None = None
    create_time: EpochMillis | None = None
    last_start_time: EpochMillis | None = None
    dst_bucket: str | None = None
    dst_region: str | None = None
    description: str | None = None
    status: SyncStatus | None = None
    enable_metadata_migration: bool | None = None
    enable_restore: bool | None = None
    app_id: str | None = None
    error_reason: ErrorReasonResp | None = None  # Ferry's: why a STOPPED task was stopped by its failure


class SyncTaskInfo(_SyncTaskCommon):
    source_cdn: SourceCdnResp | None = None
    object_overwrite_mode: OverwriteMode | None = None
    dst_storage_policy: StoragePolicy | None = None
    consistency_check: ConsistencyCheck | None = None


class ShowSyncTaskResponse(_SyncTaskCommon):
    monthly_acceptance_request: Count | None = None
    monthly_success_object: Count | None = None
    monthly_failure_object: Count | None = None
    monthly_skip_object: Count | None = None
    monthly_size: Count | None = None
    object_overwrite_mode: OverwriteMode | None = None
    dst_storage_policy: StoragePolicy | None = None
    consistency_check: ConsistencyCheck | None = None


class ListSyncTasksResponse(ResponseModel):
    tasks: list[SyncTaskInfo] | None = None
    count: Count | None = None


class ListSyncTasksQuery(RequestModel):
    limit: Annotated[int, Field(ge=1, le=100)] = 10
    offset: Annotated[int, Field(ge=0, le=10000)] = 0
    status: SyncStatus | None = None


class ShowSyncTaskQuery(RequestModel):
    query_time: EpochMillis


class StartSyncTaskReq(RequestModel):
    src_ak: AccessKey
    src_sk: SecretKey
    src_crypto_type: CryptoType = CryptoType.DEFAULT
    src_kms_key_id: KmsKeyId | None = None
    dst_ak: AccessKey
    dst_sk: SecretKey
    dst_crypto_type: CryptoType = CryptoType.DEFAULT
    dst_kms_key_id: KmsKeyId | None = None
    source_cdn_authentication_key: CdnAuthKey | None = None
    source_cdn_crypto_type: CryptoType | None = None
    source_cdn_kms_key_id: KmsKeyId | None = None

    @model_validator(mode="after")
    def _kms(self) -> Self:
        _require_kms(self.src_crypto_type, self.src_kms_key_id, "src_")
        _require_kms(self.dst_crypto_type, self.dst_kms_key_id, "dst_")
        _require_kms(self.source_cdn_crypto_type, self.source_cdn_kms_key_id, "source_cdn_")
        return self


class SyncObjectReq(RequestModel):
    object_keys: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=16384)]],
        Field(min_length=1, max_length=MAX_SYNC_EVENT_KEYS),
    ]


def _stat_types(value: Any) -> Any:
    # FastAPI hands a list-typed query parameter over as the list of its occurrences, so the SDK's one
    # comma-separated `data_type=SUCCESS%2CFAILURE` arrives as ["SUCCESS,FAILURE"].
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if not isinstance(value, str):
        return value
    if not value or len(value) > 255:
        raise PydanticCustomError("invalid_data_type", "must be 1 to 255 characters")
    # Keep the caller's order (responses follow it) but drop repeats.
    return list(dict.fromkeys(part.strip() for part in value.split(",")))


class ListSyncTaskStatisticQuery(RequestModel):
    data_type: Annotated[list[SyncStatType], BeforeValidator(_stat_types), Field(min_length=1)]
    start_time: EpochMillis
    end_time: EpochMillis

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.end_time < self.start_time:
            raise _combination("end_time must not be earlier than start_time")
        return self


class StatisticData(ResponseModel):
    time_stamp: Count | None = None
    statistic_num: Count | None = None


class StatisticTypeData(ResponseModel):
    data_type: SyncStatType | None = None
    data: list[StatisticData] | None = None


class ListSyncTaskStatisticResponse(ResponseModel):
    sync_task_id: str | None = None
    statistic_time_type: StatGranularity | None = None
    statistic_datas: list[StatisticTypeData] | None = None


# ---------------------------------------------------------------------------------------------------------------
# Bucket / object-storage helpers (§1.5)
# ---------------------------------------------------------------------------------------------------------------


class ListBucketsReq(RequestModel):
    cloud_type: HelperCloud
    ak: AccessKey | None = None
    sk: SecretKey | None = None
    json_auth_file: JsonAuthFile | None = None
    connection_string: ConnectionString | None = None
    app_id: AppId | None = None


class ShowBucketListResponse(RootModel[list[str]]):
    """A bare JSON array of bucket names."""


def _folder_path(value: str) -> str:
    if value and not value.endswith("/"):
        raise PydanticCustomError("file_path", "must end with '/'")
    return value


class ShowBucketReq(RequestModel):
    cloud_type: HelperCloud
    file_path: Annotated[str, StringConstraints(max_length=1023), AfterValidator(_folder_path)]
    ak: AccessKey | None = None
    sk: SecretKey | None = None
    connection_string: ConnectionString | None = None
    json_auth_file: JsonAuthFile | None = None
    data_center: Region
    page_size: Annotated[int, Field(ge=1)]
    behind_filename: Annotated[str, StringConstraints(max_length=1024)]
    app_id: AppId | None = None
    bucket_name: Bucket


class ShowBucketRecord(ResponseModel):
    name: str | None = None
    size: Annotated[str | None, BeforeValidator(_number_as_text)] = None


class ShowBucketObjectsResponse(ResponseModel):
    next_page: bool | None = None
    next_marker: str | None = None
    records: list[ShowBucketRecord] | None = None


class ShowBucketRegionReq(RequestModel):
    cloud_type: HelperCloud
    ak: AccessKey | None = None
    sk: SecretKey | None = None
    json_auth_file: JsonAuthFile | None = None
    connection_string: ConnectionString | None = None
    app_id: AppId | None = None
    bucket_name: Bucket


class ShowBucketRegionResponse(ResponseModel):
    id: str | None = None
    name: str | None = None
    support: bool | None = None


class CheckPrefixReq(RequestModel):
    cloud_type: HelperCloud
    ak: AccessKey | None = None
    sk: SecretKey | None = None
    json_auth_file: JsonAuthFile | None = None
    connection_string: ConnectionString | None = None
    app_id: AppId | None = None
    bucket_name: Bucket
    file_name: Annotated[str, StringConstraints(max_length=1024)]
    data_center: Region
    security_token: SecurityToken | None = None


class CheckPrefixResponse(ResponseModel):
    exist: bool | None = None


class PrefixKeyInfo(RequestModel):
    keys: Annotated[list[Annotated[str, StringConstraints(max_length=2048)]], Field(max_length=100)]


class ShowCdnInfoReq(RequestModel):
    ak: AccessKey
    sk: SecretKey
    connection_string: ConnectionString | None = None
    cloud_type: CdnHelperCloud
    region: Region
    app_id: AppId | None = None
    bucket: Bucket
    prefix: PrefixKeyInfo | None = None
    source_cdn: SourceCdnReq


class CheckedKey(ResponseModel):
    key: str | None = None
    is_etag_matching: bool | None = None
    is_object_existing: bool | None = None


class ShowCdnInfoResponse(ResponseModel):
    is_same_cloud_type: bool | None = None
    is_download_available: bool | None = None
    checked_keys: list[CheckedKey] | None = None


class ShowCloudTypeQuery(RequestModel):
    type: CloudTypeKind


class ShowCloudTypeResponse(RootModel[list[CloudType]]):
    """A bare JSON array of cloud type names."""


class RegionInfo(ResponseModel):
    cloud_type: str | None = None
    value: str | None = None
    description: str | None = None


class ShowRegionInfoResp(ResponseModel):
    service_name: str | None = None
    region_list: list[RegionInfo] | None = None


class ShowRegionInfoResponse(RootModel[list[ShowRegionInfoResp]]):
    """A bare JSON array, one entry per cloud."""


class CheckUrlSourceListFileFormatReq(RequestModel):
    obs_bucket: Bucket
    list_file_key: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    ak: AccessKey
    sk: SecretKey
    region: Region


# ---------------------------------------------------------------------------------------------------------------
# Misc (§1.6)
# ---------------------------------------------------------------------------------------------------------------


class UpdateBandwidthPolicyReq(RequestModel):
    bandwidth_policy: BandwidthPolicies


class BatchUpdateTasksReq(RequestModel):
    group_id: GroupId | None = None
    ids: Annotated[list[TaskId], Field(min_length=1)] | None = None
    bandwidth_policy: BandwidthPolicies
    task_priority: TaskPriority | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.group_id is None) == (self.ids is None):
            raise _combination("exactly one of group_id and ids must be given")
        return self


# ---------------------------------------------------------------------------------------------------------------
# Validation errors -> OMS errors (§3.5)
# ---------------------------------------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)
_LOCATIONS: Final = frozenset({"body", "query", "path", "header", "cookie"})
_MAX_DETAILS: Final = 3


def _where(loc: Sequence[Any]) -> str:
    parts = list(loc)
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:] if len(parts) > 1 else parts
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "request"


def _describe(error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "json_invalid":
        return "is not valid JSON"
    if kind in ("too_long", "string_too_long"):
        limit = ctx.get("max_length")
        return f"is too long (at most {limit})" if limit is not None else "is too long"
    if kind in ("too_short", "string_too_short"):
        limit = ctx.get("min_length")
        return f"is too short (at least {limit})" if limit is not None else "is too short"
    # Everything else carries pydantic's or our own text, neither of which quotes the input.
    msg = str(error.get("msg", "is invalid"))
    return msg.removeprefix("Value error, ")


def oms_error_for_validation(errors: Sequence[Any]) -> OmsError:
    """Turn pydantic/FastAPI validation errors into the documented OMS error (always HTTP 400)."""
    items = [e for e in errors if isinstance(e, Mapping)]
    if any(e.get("type") == DESCRIPTION_CHARS_ERROR for e in items):
        return OmsError(400, Codes.DESCRIPTION_CHARS, Messages.DESCRIPTION_CHARS)
    if any(tuple(e.get("loc", ()))[:2] == ("path", "task_id") for e in items):
        return OmsError(400, Codes.INVALID_TASK_ID, Messages.INVALID_TASK_ID)
    details = "; ".join(f"{_where(e.get('loc', ()))}: {_describe(e)}" for e in items[:_MAX_DETAILS])
    if len(items) > _MAX_DETAILS:
        details += f"; and {len(items) - _MAX_DETAILS} more"
    return OmsError.invalid_parameter(details or None)


def parse_request(model: type[M], data: Any) -> M:
    """Validate `data` (a decoded JSON value or query mapping) as `model`, raising the mapped OmsError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise oms_error_for_validation(exc.errors(include_input=False)) from None
