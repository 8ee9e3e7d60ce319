"""Migration tasks (oms-api.md §1.2) and their batch and bandwidth updates (§1.6)."""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Final, Self

from pydantic import Field, model_validator

from ferry.oms.common import (
    AccessKey,
    BandwidthPolicies,
    BandwidthPolicyDto,
    ConnectionString,
    ConsistencyCheck,
    Count,
    DestinationNode,
    DstNodeResp,
    EpochMillis,
    ErrorReasonResp,
    FailedObjectRecordDto,
    GroupId,
    JsonAuthFile,
    MigrationReq,
    ObsSystem,
    OmsEnum,
    OverwriteMode,
    PageLimit,
    PageOffset,
    RequestModel,
    ResponseModel,
    RestartReq,
    SecretKey,
    SecurityToken,
    SmnInfo,
    SourceCdnResp,
    SourceNode,
    SrcNodeResp,
    StoragePolicy,
    TaskDescription,
    TaskId,
    TaskPriority,
    combination,
)


class TaskType(OmsEnum):
    OBJECT = "object"
    PREFIX = "prefix"
    LIST = "list"
    URL_LIST = "url_list"


# Task types whose progress counts objects rather than bytes (OMS FAQ: list tasks progress by count).
COUNT_PROGRESS: Final = frozenset({TaskType.LIST, TaskType.URL_LIST})


class TaskStatus(IntEnum):
    WAITING = 1
    RUNNING = 2
    STOPPED = 3
    FAILED = 4
    SUCCEEDED = 5
    RETRYING = 6
    PAUSING = 7


class GroupType(OmsEnum):
    NORMAL_TASK = "NORMAL_TASK"
    SYNC_TASK = "SYNC_TASK"
    GROUP_TASK = "GROUP_TASK"


class SrcNodeReq(SourceNode):
    security_token: SecurityToken | None = None


class DstNodeReq(DestinationNode):
    security_token: SecurityToken | None = None


class CreateTaskReq(MigrationReq):
    task_type: TaskType = TaskType.OBJECT
    src_node: SrcNodeReq
    dst_node: DstNodeReq
    task_priority: TaskPriority | None = None


class CreateTaskResponse(ResponseModel):
    id: int | None = None
    task_name: str | None = None


class StartTaskReq(RestartReq):
    src_ak: AccessKey | None = None
    src_sk: SecretKey | None = None
    connection_string: ConnectionString | None = None
    json_auth_file: JsonAuthFile | None = None
    src_security_token: SecurityToken | None = None
    dst_ak: AccessKey
    dst_sk: SecretKey
    dst_security_token: SecurityToken | None = None
    migrate_failed_object: bool = False


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
    # Ferry's extension: objects waiting for the restore of an archived source object (enable_restore).
    restoring_num: Count | None = None
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
    # Ferry extensions: of successful_num, the objects verified by their size only (their source gave no
    # checksum of its content), and whether such objects are read again from both stores and compared.
    ferry_size_only_num: Count | None = None
    ferry_reread_size_only: bool | None = None


ShowTaskResponse = TaskResp


class ListTasksResponse(ResponseModel):
    tasks: list[TaskResp] | None = None
    count: Count | None = None


class ListTasksQuery(RequestModel):
    group_id: GroupId | None = None
    limit: PageLimit = 10
    offset: PageOffset = 0
    # OMS documents 1-5 and 7 as filter values; 6 (retrying) is a status a task shows, so it filters too.
    status: TaskStatus | None = None
    task_name: TaskDescription | None = None


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
            raise combination("exactly one of group_id and ids must be given", "group_id", "ids")
        return self
