"""What every OMS area shares (oms-api.md §1.7, §1.8): enums, clouds, limits, field types, base models, and the
source/destination nodes of migration tasks and task groups."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ferry.engine.compare import Choice, ConsistencyCheck, OverwriteMode
from ferry.oms.errors import DESCRIPTION_CHARS_ERROR, FIELDS_CONTEXT
from ferry.secrets import Secret
from ferry.storage.registry import as_folder

__all__ = ["ConsistencyCheck", "OverwriteMode"]  # the engine's, re-exported: requests validate into them

# ---------------------------------------------------------------------------------------------------------------
# Enums (§1.7). Matching is case-insensitive: group responses echo upper-case spellings that clients send back.
# ---------------------------------------------------------------------------------------------------------------


class OmsEnum(Choice):
    """A string enum that accepts any letter case and answers with the documented spelling."""


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


# The source list is CLOUD_TYPE_TASK of oms-api.md §1.7, in the SDK's order.
SOURCE_CLOUDS: Final[tuple[CloudType, ...]] = (
    CloudType.AWS,
    CloudType.AZURE,
    CloudType.ALIYUN,
    CloudType.TENCENT,
    CloudType.HUAWEICLOUD,
    CloudType.QINGCLOUD,
    CloudType.KINGSOFTCLOUD,
    CloudType.BAIDU,
    CloudType.QINIU,
    CloudType.GOOGLE,
    CloudType.URLSOURCE,
    CloudType.UCLOUD,
)
# Huawei's OMS only writes into OBS; Ferry writes to any object store it has a backend for, so the
# destinations are the object-storage clouds (CLOUD_TYPE_SYNC): not Google or plain HTTP sources.
DESTINATION_CLOUDS: Final[tuple[CloudType, ...]] = (CloudType.HUAWEICLOUD, *(
    c for c in SOURCE_CLOUDS if c not in (CloudType.HUAWEICLOUD, CloudType.GOOGLE, CloudType.URLSOURCE)))
SYNC_CLOUDS: Final = frozenset(DESTINATION_CLOUDS)
TASK_CLOUDS: Final = frozenset(SOURCE_CLOUDS)
HELPER_CLOUDS: Final = TASK_CLOUDS | {CloudType.HEC}
CDN_HELPER_CLOUDS: Final = HELPER_CLOUDS - {CloudType.GOOGLE}


class CryptoType(OmsEnum):
    DEFAULT = "DEFAULT"
    KMS = "KMS"


class StoragePolicy(OmsEnum):
    STANDARD = "STANDARD"
    IA = "IA"
    ARCHIVE = "ARCHIVE"
    DEEP_ARCHIVE = "DEEP_ARCHIVE"
    SRC_STORAGE_MAPPING = "SRC_STORAGE_MAPPING"


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


# ---------------------------------------------------------------------------------------------------------------
# Field types with the documented limits.
# ---------------------------------------------------------------------------------------------------------------

INT64_MAX: Final = 2**63 - 1
# 9999-12-31T23:59:59.999Z: beyond it a time is no calendar date (datetime ends there), only a fuzzer's number.
EPOCH_MILLIS_MAX: Final = 253_402_300_799_999
TASK_DESCRIPTION_FORBIDDEN: Final = frozenset("^<>&\"'")
SYNC_DESCRIPTION_FORBIDDEN: Final = frozenset("<>()\"'&")
# OMS list files (TRF.0014, TRF.0018) and object keys.
LIST_FILE_MAX_BYTES: Final = 100 * 1024 * 1024
LIST_FILE_MAX_LINE: Final = 65535
MAX_KEY_BYTES: Final = 1024


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


def number_as_text(value: Any) -> Any:
    """A BeforeValidator of string fields that hold numbers."""
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
EpochMillis = Annotated[int, BeforeValidator(_epoch_ms), Field(ge=0, le=EPOCH_MILLIS_MAX)]
TaskId = Annotated[int, Field(ge=1, le=INT64_MAX)]
GroupId = Annotated[str, StringConstraints(min_length=1, max_length=100)]
SyncTaskId = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Count = Annotated[int, Field(ge=0)]
PageLimit = Annotated[int, Field(ge=1, le=100)]
PageOffset = Annotated[int, Field(ge=0, le=10000)]
ClockTime = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
MIN_BANDWIDTH: Final = 1024 * 1024
MAX_BANDWIDTH: Final = 200 * 1024 * 1024
MAX_BANDWIDTH_WINDOWS: Final = 5


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


def combination(detail: str, *fields: str) -> PydanticCustomError:
    """A rule tying fields together was broken; `fields` (relative to the model checking the rule) are the
    ones a form shows the error next to."""
    return PydanticCustomError("invalid_combination", "{detail}", {"detail": detail, FIELDS_CONTEXT: ",".join(fields)})


def require_kms(crypto: CryptoType | None, kms_key_id: str | None, where: str, *, named: str | None = None) -> None:
    """`where` prefixes the fields within the model checking the rule; `named` (default: `where`) is how the
    message names them."""
    if crypto is CryptoType.KMS and not kms_key_id:
        said = where if named is None else named
        raise combination(f"{said}kms_key_id is required when {said}crypto_type is KMS", f"{where}kms_key_id")

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
            raise combination("bandwidth_policy time windows must not overlap")  # on the field: no names
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
        require_kms(self.crypto_type, self.kms_key_id, "", named="source_cdn.")
        return self


class SourceCdnResp(ResponseModel):
    domain: str
    protocol: CdnProtocol
    authentication_type: CdnAuthType | None = None


class ListFile(RequestModel):
    list_file_key: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    obs_bucket: Bucket
    list_file_num: Annotated[str | None, BeforeValidator(number_as_text)] = None


class ErrorReasonResp(ResponseModel):
    error_code: str | None = None
    error_msg: str | None = None


class FailedObjectRecordDto(ResponseModel):
    result: bool | None = None
    list_file_key: str | None = None
    error_code: str | None = None


class RestartReq(RequestModel):
    """The encryption settings re-supplied, with the keys, when a task, a task group or a sync task starts again."""

    src_crypto_type: CryptoType = CryptoType.DEFAULT
    src_kms_key_id: KmsKeyId | None = None
    dst_crypto_type: CryptoType = CryptoType.DEFAULT
    dst_kms_key_id: KmsKeyId | None = None
    source_cdn_authentication_key: CdnAuthKey | None = None
    source_cdn_crypto_type: CryptoType | None = None
    source_cdn_kms_key_id: KmsKeyId | None = None

    @model_validator(mode="after")
    def _kms(self) -> Self:
        require_kms(self.src_crypto_type, self.src_kms_key_id, "src_")
        require_kms(self.dst_crypto_type, self.dst_kms_key_id, "dst_")
        require_kms(self.source_cdn_crypto_type, self.source_cdn_kms_key_id, "source_cdn_")
        return self


# ---------------------------------------------------------------------------------------------------------------
# Migration tasks and task groups (§1.2, §1.3): the nodes and the rules both requests share
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
    raise combination(f"{where}ak and {where}sk are required unless the task is a URL list",
                      *(f"{where}{name}" for name, value in (("ak", ak), ("sk", sk)) if not value))


class SourceNode(RequestModel):
    """Where a migration reads: a bucket of a cloud, or for URL lists only the list file."""

    cloud_type: TaskCloud = CloudType.ALIYUN
    region: Region | None = None
    ak: AccessKey | None = None
    sk: SecretKey | None = None
    connection_string: ConnectionString | None = None
    json_auth_file: JsonAuthFile | None = None
    app_id: AppId | None = None
    bucket: Bucket | None = None
    object_key: Annotated[list[ObjectKey], Field(max_length=500)] | None = None
    list_file: ListFile | None = None
    crypto_type: CryptoType = CryptoType.DEFAULT
    kms_key_id: KmsKeyId | None = None


class DestinationNode(RequestModel):
    """Where a migration writes."""

    ak: AccessKey
    sk: SecretKey
    bucket: Bucket
    save_prefix: SavePrefix | None = None
    region: Region
    crypto_type: CryptoType = CryptoType.DEFAULT
    kms_key_id: KmsKeyId | None = None


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


class MigrationReq(RequestModel):
    """The body create_task and create_task_group share, and the rules that tie its fields together."""

    if TYPE_CHECKING:  # each request declares it, with its own spelling of the task types
        task_type: OmsEnum
    src_node: SourceNode
    dst_node: DestinationNode
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
    # A Ferry extension: objects whose source gives no checksum of their content (checked by their size only)
    # are read again from the source and the destination after the copy, and compared.
    ferry_reread_size_only: bool = False

    @property
    def url_list(self) -> bool:
        """A URL-list request: its source is the list file's URLs, not a bucket."""
        return self.task_type is type(self.task_type)("url_list")

    @model_validator(mode="after")
    def _combinations(self) -> Self:
        src = self.src_node
        kinds = type(self.task_type)
        url_list, listed = kinds("url_list"), kinds("list")
        if self.url_list:
            if "cloud_type" not in src.model_fields_set:
                src.cloud_type = CloudType.URLSOURCE
            if src.cloud_type is not CloudType.URLSOURCE:
                raise combination(f"src_node.cloud_type must be URLSource when task_type is {url_list}",
                                  "src_node.cloud_type")
        else:
            if src.cloud_type is CloudType.URLSOURCE:
                raise combination(f"src_node.cloud_type URLSource needs task_type {url_list}", "src_node.cloud_type")
            if not src.region or not src.bucket:
                raise combination(f"src_node.region and src_node.bucket are required unless task_type is {url_list}",
                                  *(f"src_node.{name}" for name in ("region", "bucket") if not getattr(src, name)))
            _source_credentials("src_node.", src.cloud_type, src.ak, src.sk, src.connection_string, src.json_auth_file)
        if self.task_type in (listed, url_list) and src.list_file is None:
            raise combination(f"src_node.list_file is required when task_type is {listed} or {url_list}",
                              "src_node.list_file.list_file_key", "src_node.list_file.obs_bucket")
        require_kms(src.crypto_type, src.kms_key_id, "src_node.")
        require_kms(self.dst_node.crypto_type, self.dst_node.kms_key_id, "dst_node.")
        return self
