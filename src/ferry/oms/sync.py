"""Sync tasks (oms-api.md §1.4): a bucket kept in step with another, object by object as events arrive."""

from __future__ import annotations

from typing import Annotated, Any, Final, Self

from pydantic import BeforeValidator, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from ferry.oms.common import (
    AccessKey,
    AppId,
    Bucket,
    CloudType,
    ConsistencyCheck,
    Count,
    CryptoType,
    EpochMillis,
    ErrorReasonResp,
    KmsKeyId,
    OmsEnum,
    OverwriteMode,
    PageLimit,
    PageOffset,
    Region,
    RequestModel,
    ResponseModel,
    RestartReq,
    SecretKey,
    SourceCdnReq,
    SourceCdnResp,
    StoragePolicy,
    SyncCloud,
    SyncDescription,
    combination,
    require_kms,
)

MAX_SYNC_EVENT_KEYS: Final = 10


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
        require_kms(self.src_crypto_type, self.src_kms_key_id, "src_")
        require_kms(self.dst_crypto_type, self.dst_kms_key_id, "dst_")
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
    limit: PageLimit = 10
    offset: PageOffset = 0
    status: SyncStatus | None = None


class ShowSyncTaskQuery(RequestModel):
    query_time: EpochMillis


class StartSyncTaskReq(RestartReq):
    src_ak: AccessKey
    src_sk: SecretKey
    dst_ak: AccessKey
    dst_sk: SecretKey


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
            raise combination("end_time must not be earlier than start_time", "end_time")
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
