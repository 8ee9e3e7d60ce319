"""Task groups (oms-api.md §1.3): a big source split into migration tasks."""

from __future__ import annotations

from enum import IntEnum

from pydantic import field_serializer

from ferry.oms.common import (
    AccessKey,
    BandwidthPolicyDto,
    CloudType,
    ConnectionString,
    ConsistencyCheck,
    Count,
    DestinationNode,
    DstNodeResp,
    EpochMillis,
    ErrorReasonResp,
    FailedObjectRecordDto,
    HelperCloud,
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
    SmnInfo,
    SourceCdnResp,
    SourceNode,
    SrcNodeResp,
    StoragePolicy,
)


class GroupTaskType(OmsEnum):
    PREFIX = "PREFIX"
    LIST = "LIST"
    URL_LIST = "URL_LIST"


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


class TaskGroupSrcNode(SourceNode):
    """A task group's source: the same fields as a task's, without a security token."""


class TaskGroupDstNode(DestinationNode):
    cloud_type: HelperCloud = CloudType.HEC


class CreateTaskGroupReq(MigrationReq):
    task_type: GroupTaskType = GroupTaskType.PREFIX
    src_node: TaskGroupSrcNode
    dst_node: TaskGroupDstNode


class CreateTaskGroupResponse(ResponseModel):
    group_id: str | None = None


class TaskGroupSrcNodeResp(SrcNodeResp):
    @field_serializer("cloud_type")
    def _upper(self, value: CloudType | None) -> str | None:
        # Group responses spell clouds in upper case (ALIYUN, HUAWEICLOUD, URLSOURCE, …), §1.3.
        return value.value.upper() if value is not None else None


class TaskGroupDstNodeResp(DstNodeResp):
    """A task group's destination, as a task's."""


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
    # Ferry's extension: objects of the group's tasks waiting for a restore (enable_restore).
    restoring_num: Count | None = None
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
    limit: PageLimit = 10
    offset: PageOffset = 0
    status: GroupStatus | None = None


class _RestartCredentials(RestartReq):
    """Credentials re-supplied when a paused or failed group runs again."""

    src_ak: AccessKey | None = None
    src_sk: SecretKey | None = None
    connection_string: ConnectionString | None = None
    json_auth_file: JsonAuthFile | None = None


class StartTaskGroupReq(_RestartCredentials):
    dst_ak: AccessKey
    dst_sk: SecretKey


class RetryTaskGroupReq(_RestartCredentials):
    dst_ak: AccessKey | None = None
    dst_sk: SecretKey | None = None
    migrate_failed_object: bool = False
