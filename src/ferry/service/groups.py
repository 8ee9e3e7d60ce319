"""Task groups (OMS §1.3, §3.3): create, list, show, start, stop, retry, update and delete.

A group splits a big source into migration tasks and runs them through the task runner. The split is done by
the group runner (`ferry.runner.groups`): it streams the source listing and, every `SplitSettings` worth of
objects, writes that chunk's keys as an object-list file under `oms/taskgroup/<group id>/` in the destination
bucket (as Huawei's OMS does, §3.3) and creates a `list` task (`url_list` for URL_LIST groups) over it. Memory
stays one chunk, whatever the bucket's size, and a crashed split resumes from its last chunk.

Status and counters roll up from the tasks at read time (one aggregate query), so they never drift:

    stored 0 waiting -> 1 creating tasks (splitter) -> 2 monitoring -> 6 completed | 5 migration failed
    stored 1 -> 4 task creation failed (listing or list-file write failed, or no objects: TRF.0012)
    stop: 0/1/2 -> 7 pausing -> 3 paused (when the splitter and every task have stopped)
    start: 3 -> 1 (split unfinished) or 2, paused tasks started with the re-supplied keys
    retry: 4 -> 1 (split resumes); 5 -> 2 with every failed task restarted (all, or only its failed objects)
    delete: 0/3/4/5/6 -> 8 (tasks deleted) -> 9 once its list files are removed (then invisible)

The runner persists what the roll-up shows (5, 6, 3) within a poll; reads never wait for it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ferry import oms as s
from ferry.db.group_repo import (
    G_COMPLETED,
    G_CREATE_FAILED,
    G_DELETING,
    G_EXECUTING,
    G_MIGRATE_FAILED,
    G_MONITORING,
    G_PAUSED,
    G_PAUSING,
    G_WAITING,
    GroupRepo,
    GroupRow,
    TaskStats,
    effective_status,
)
from ferry.db.task_repo import FAILED, PAUSED, PAUSING, RETRYING, RUNNING, SUCCEEDED, WAITING
from ferry.oms import Codes, Messages
from ferry.runner.groups import GroupPorts, SplitSettings, TaskQuotaFull, list_file_key
from ferry.service import endpoints, smn, tasks
from ferry.service.tasks import TaskContext, TaskError, TaskLimits, check_smn, smn_resp
from ferry.storage.profiles import get_profile


def _noop() -> None:
    return None


@dataclass(frozen=True)
class GroupContext:
    """What group operations need: the task context (database, secret box, overrides, task runner doorbell),
    how to split, the group runner's doorbell, and the quota of groups (created per 24 h, waiting)."""

    tasks: TaskContext
    split: SplitSettings = field(default_factory=SplitSettings.from_env)
    notify: Callable[[], None] = _noop
    limits: TaskLimits = field(default_factory=TaskLimits)

    @property
    def repo(self) -> GroupRepo:
        return GroupRepo(self.tasks.engine)

    def __repr__(self) -> str:
        return f"GroupContext(split={self.split!r})"


def _not_found() -> TaskError:
    # One answer for "no such group" and "another project's group".
    return TaskError(404, Codes.NOT_FOUND, f"{Messages.NOT_FOUND} Enter a valid task group ID.")


# -- create --------------------------------------------------------------------------------------------------


def _endpoint(ctx: GroupContext, cloud: str, region: str) -> endpoints.Endpoint:
    table = {k.lower(): v for k, v in ctx.tasks.overrides.items()} if ctx.tasks.overrides is not None else None
    return endpoints.resolve(cloud, region, table)


def create_task_group(ctx: GroupContext, project_id: str, req: s.CreateTaskGroupReq) -> s.CreateTaskGroupResponse:
    """Persist a group (waiting) and wake the group runner, which splits it into tasks."""
    reason = tasks.unsupported(req)
    if reason:
        raise TaskError.invalid(reason)
    cdn = tasks.source_cdn_spec(req)
    check_smn(req.smn_config, project_id)
    src, dst = req.src_node, req.dst_node
    dst_ep = tasks.resolve_endpoint(ctx.tasks, s.CloudType.HUAWEICLOUD.value, dst.region, destination=True)
    tasks.check_bucket(dst_ep.profile, dst.bucket, "dst_node.bucket")
    if not req.url_list:
        assert src.region is not None and src.bucket is not None  # CreateTaskGroupReq checked bucket sources
        tasks.check_source_keys(src.cloud_type.value, src.ak, src.sk, src.json_auth_file, "src_node.",
                                connection_string=src.connection_string)
        src_ep = tasks.resolve_endpoint(ctx.tasks, src.cloud_type.value, src.region, destination=False)
        src_bucket = get_profile(src_ep.profile).bucket_name(src.bucket, src.app_id)
        tasks.check_bucket(src_ep.profile, src_bucket, "src_node.bucket")
        tasks.check_store_opens(src_ep, src_bucket, src)
    if src.list_file is not None:
        tasks.check_bucket(dst_ep.profile, src.list_file.obs_bucket, "src_node.list_file.obs_bucket")
    now = time.time()
    tasks.check_quota(ctx.repo, ctx.limits, project_id, now, waiting_status=G_WAITING, what="task groups")
    group_id = str(uuid.uuid4())
    ctx.repo.insert({
        "id": group_id, "project_id": project_id, "status": G_WAITING, "description": req.description or "",
        "task_type": req.task_type.value,
        "src_spec": {"cloud_type": src.cloud_type.value, "region": src.region, "bucket": src.bucket,
                     "app_id": src.app_id, "object_key": list(src.object_key) if src.object_key is not None else None,
                     "list_file": src.list_file.model_dump(exclude_none=True) if src.list_file else None,
                     "cdn": cdn},
        "dst_spec": {"bucket": dst.bucket, "region": dst.region, "save_prefix": dst.save_prefix or "",
                     "kms_key_id": tasks.dst_kms_key(dst.crypto_type, dst.kms_key_id)},
        "options": tasks.migration_options(req),
        "bandwidth_policy": [p.model_dump() for p in req.bandwidth_policy or []],
        "secrets": ctx.tasks.box.seal({"src_ak": src.ak, "src_sk": src.sk, "src_json_auth": src.json_auth_file,
                                        "src_connection_string": src.connection_string,
                                        "dst_ak": dst.ak, "dst_sk": dst.sk,
                                        "cdn_key": req.source_cdn.authentication_key if req.source_cdn else None}),
        "split_state": {"index": 0, "after": None, "skip": 0, "chunk": 0, "done": False},
        "objects": 0, "bytes": 0, "task_count": 0, "created_at": now, "updated_at": now,
    })
    ctx.notify()
    return s.CreateTaskGroupResponse(group_id=group_id)


def chunk_task_request(row: GroupRow, keys: dict[str, str], chunk: int) -> s.CreateTaskReq:
    """The CreateTaskReq of one chunk: a `list` (or, for URL sources, `url_list`) task over the chunk's list
    file, with the group's options."""
    src, dst, opts = row.src_spec, row.dst_spec, row.options
    url_list = row.task_type == s.GroupTaskType.URL_LIST.value
    return s.CreateTaskReq.model_validate({
        "task_type": (s.TaskType.URL_LIST if url_list else s.TaskType.LIST).value,
        "src_node": {"cloud_type": src["cloud_type"], "region": src.get("region"), "bucket": src.get("bucket"),
                     "app_id": src.get("app_id"), "ak": keys.get("src_ak"), "sk": keys.get("src_sk"),
                     "json_auth_file": keys.get("src_json_auth"),
                     "connection_string": keys.get("src_connection_string"),
                     "list_file": {"obs_bucket": dst["bucket"], "list_file_key": list_file_key(row.id, chunk)}},
        "dst_node": {"ak": keys.get("dst_ak"), "sk": keys.get("dst_sk"), "bucket": dst["bucket"],
                     "region": dst["region"], "save_prefix": dst.get("save_prefix") or None,
                     **({"crypto_type": "KMS", "kms_key_id": dst["kms_key_id"]} if dst.get("kms_key_id") else {})},
        "description": f"Part {chunk + 1} of task group {row.id}",
        "migrate_since": opts.get("migrate_since"),
        "bandwidth_policy": row.bandwidth_policy,
        "enable_metadata_migration": bool(opts.get("enable_metadata_migration")),
        "enable_restore": bool(opts.get("enable_restore")),
        "enable_failed_object_recording": bool(opts.get("enable_failed_object_recording")),
        "object_overwrite_mode": opts["object_overwrite_mode"],
        "dst_storage_policy": opts["dst_storage_policy"],
        "consistency_check": opts["consistency_check"],
        "enable_requester_pays": opts.get("enable_requester_pays"),
        "ferry_reread_size_only": bool(opts.get("ferry_reread_size_only")),
        "source_cdn": {**src["cdn"], "authentication_key": keys.get("cdn_key")} if src.get("cdn") else None,
    })


def create_chunk_task(ctx: GroupContext, row: GroupRow, keys: dict[str, str], chunk: int, name: str) -> None:
    """The group runner's `create_task`: the task of one chunk, as a client's CreateTaskReq would make it (the
    same checks and quota); TaskQuotaFull when the project's task quota is full."""
    try:
        tasks.create_task(ctx.tasks, row.project_id, chunk_task_request(row, keys, chunk), group_id=row.id,
                          group_type=s.GroupType.GROUP_TASK, name=name)
    except TaskError as exc:
        if exc.oms_code == Codes.QUOTA:
            raise TaskQuotaFull() from None
        raise


def _endpoint_spec(ctx: GroupContext, cloud: str, region: str) -> dict[str, Any]:
    ep = _endpoint(ctx, cloud, region)
    return {"endpoint": ep.url, "profile": ep.profile, "from_override": ep.from_override}


def runner_ports(ctx: GroupContext) -> GroupPorts:
    """What the group runner calls back into: this module's task creation and stops, endpoint resolution, the
    task runner's doorbell and SMN (the one place the runner is wired to the services)."""
    return GroupPorts(
        engine=ctx.tasks.engine,
        box=ctx.tasks.box,
        split=ctx.split,
        source_endpoint=lambda cloud, region: _endpoint_spec(ctx, cloud, region),
        destination_endpoint=lambda region: _endpoint_spec(ctx, s.CloudType.HUAWEICLOUD.value, region),
        create_task=lambda row, keys, chunk, name: create_chunk_task(ctx, row, keys, chunk, name),
        stop_tasks=lambda project_id, group_id: stop_group_tasks(ctx, project_id, group_id),
        wake_tasks=ctx.tasks.notify,
        publish_end=smn.publish_end,
    )


# -- read ----------------------------------------------------------------------------------------------------


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def group_resp(row: GroupRow, stats: TaskStats, now: float | None = None) -> s.TaskGroupResp:
    """The OMS view of a group: no secret, ms timestamps, counters summed over its tasks."""
    now = time.time() if now is None else now
    status = effective_status(row, stats)
    src, dst, opts = row.src_spec, row.dst_spec, row.options
    end = row.finished_at if row.finished_at and status in (G_COMPLETED, G_MIGRATE_FAILED, G_CREATE_FAILED) \
        else now
    since = opts.get("migrate_since")
    smn_info = smn_resp(opts.get("smn_config"), row.smn_result) \
        if status in (G_COMPLETED, G_MIGRATE_FAILED, G_CREATE_FAILED) else None
    failed_record = None
    if opts.get("enable_failed_object_recording"):
        failed_record = s.FailedObjectRecordDto(result=stats.fail_num > 0 and status == G_MIGRATE_FAILED)
    return s.TaskGroupResp(
        group_id=row.id,
        status=s.GroupStatus(status),
        error_reason=s.ErrorReasonResp(error_code=row.error_code, error_msg=row.error_msg or "")
        if row.error_code else None,
        src_node=s.TaskGroupSrcNodeResp(
            bucket=src.get("bucket"), cloud_type=s.CloudType(src["cloud_type"]), region=src.get("region"),
            app_id=src.get("app_id"), object_key=src.get("object_key"),
            list_file=s.ListFile.model_validate(src["list_file"]) if src.get("list_file") else None),
        description=row.description,
        dst_node=s.TaskGroupDstNodeResp(bucket=dst["bucket"], region=dst["region"],
                                        save_prefix=dst.get("save_prefix", "")),
        enable_metadata_migration=bool(opts.get("enable_metadata_migration")),
        enable_failed_object_recording=bool(opts.get("enable_failed_object_recording")),
        enable_restore=bool(opts.get("enable_restore")),
        task_type=s.GroupTaskType(row.task_type),
        bandwidth_policy=[s.BandwidthPolicyDto.model_validate(p) for p in row.bandwidth_policy],
        smn_config=smn_info,
        source_cdn=tasks.source_cdn_resp(src.get("cdn")),
        migrate_since=int(since) * 1000 if since else 0,
        migrate_speed=stats.speed,
        total_time=int(max(0.0, end - row.started_at) * 1000) if row.started_at else 0,
        start_time=_ms(row.started_at) or 0,
        # While the split runs, the total is what has been created so far; it is final once the split is done.
        total_task_num=row.task_count,
        create_task_num=row.task_count,
        failed_task_num=stats.count(FAILED),
        complete_task_num=stats.count(SUCCEEDED),
        paused_task_num=stats.count(PAUSED),
        executing_task_num=stats.count(RUNNING, RETRYING, PAUSING),
        waiting_task_num=stats.count(WAITING),
        total_num=row.objects,
        create_complete_num=row.objects,
        success_num=stats.success_num,
        fail_num=stats.fail_num,
        skip_num=stats.skip_num,
        restoring_num=stats.restoring_num,
        total_size=row.bytes,
        create_complete_size=row.bytes,
        complete_size=stats.complete_size,
        failed_object_record=failed_record,
        object_overwrite_mode=s.OverwriteMode(opts["object_overwrite_mode"]),
        dst_storage_policy=s.StoragePolicy(opts["dst_storage_policy"]),
        consistency_check=s.ConsistencyCheck(opts["consistency_check"]),
        obs_system=s.ObsSystem.BUCKET,
        enable_requester_pays=opts.get("enable_requester_pays"),
    )


def _get(ctx: GroupContext, project_id: str, group_id: str) -> GroupRow:
    row = ctx.repo.get(group_id, project_id)
    if row is None:
        raise _not_found()
    return row


def _stats(ctx: GroupContext, row: GroupRow) -> TaskStats:
    return ctx.repo.task_stats(row.project_id, [row.id])[row.id]


def show_task_group(ctx: GroupContext, project_id: str, group_id: str) -> s.TaskGroupResp:
    row = _get(ctx, project_id, group_id)
    return group_resp(row, _stats(ctx, row))


def list_task_group(ctx: GroupContext, project_id: str, query: s.ListTaskGroupQuery) -> s.ListTaskGroupResponse:
    """A page of groups, newest first. The status filter applies to the stored status, which the group runner
    brings in line with the roll-up within a poll."""
    rows, count = ctx.repo.page(project_id, status=int(query.status) if query.status is not None else None,
                                limit=query.limit, offset=query.offset)
    stats = ctx.repo.task_stats(project_id, [r.id for r in rows])
    now = time.time()
    return s.ListTaskGroupResponse(count=count, taskgroups=[group_resp(r, stats[r.id], now) for r in rows])


# -- lifecycle -----------------------------------------------------------------------------------------------


def _conflict(message: str) -> TaskError:
    return TaskError.conflict(message)


def _transition_checked(ctx: GroupContext, project_id: str, group_id: str,
                        check: Callable[[GroupRow, TaskStats], None], changes: dict[str, Any]) -> None:
    """Apply `changes` if `check` (which raises when the client's view forbids it) passes on the stored status.

    The runner may settle the stored status (waiting -> executing, pausing -> paused) between our read and our
    write without changing what the client asked for, so a lost compare-and-swap is judged again on a fresh read.
    """
    for _ in range(3):
        row = _get(ctx, project_id, group_id)
        check(row, _stats(ctx, row))
        if ctx.repo.transition(group_id, (row.status,), changes, project_id=project_id):
            return
    raise _conflict("The task group status changed meanwhile; show it and retry.")


def stop_task_group(ctx: GroupContext, project_id: str, group_id: str) -> None:
    """Pause: the split stops at its next chunk, every waiting task pauses, every running one is asked to."""
    def check(row: GroupRow, stats: TaskStats) -> None:
        if effective_status(row, stats) not in (G_WAITING, G_EXECUTING, G_MONITORING):
            raise _conflict("Only a task group that is creating or monitoring tasks can be stopped.")

    _transition_checked(ctx, project_id, group_id, check, {"status": G_PAUSING})
    stop_group_tasks(ctx, project_id, group_id)
    ctx.notify()


def stop_group_tasks(ctx: GroupContext, project_id: str, group_id: str) -> None:
    """Ask every unfinished task of the group to pause (the runner also repeats this while it pauses)."""
    for task_id in ctx.repo.task_ids(project_id, group_id, (WAITING, RUNNING, RETRYING)):
        try:
            tasks.stop_task(ctx.tasks, project_id, task_id)
        except TaskError:
            continue  # it finished or paused meanwhile


def _keys(row: GroupRow, req: s.StartTaskGroupReq | s.RetryTaskGroupReq) -> dict[str, Any]:
    # URL sources need no source keys (their list file is read with the destination's); an Azure source may
    # come back with its connection string instead.
    if row.task_type != s.GroupTaskType.URL_LIST.value:
        tasks.check_source_keys(row.src_spec["cloud_type"], req.src_ak, req.src_sk, req.json_auth_file, "",
                                connection_string=req.connection_string)
    if not (req.dst_ak and req.dst_sk):
        raise TaskError.invalid("dst_ak and dst_sk are required for this task group.")
    return {"src_ak": req.src_ak, "src_sk": req.src_sk, "src_json_auth": req.json_auth_file,
            "src_connection_string": req.connection_string, "dst_ak": req.dst_ak, "dst_sk": req.dst_sk,
            "cdn_key": tasks.restart_cdn_key(row.src_spec.get("cdn"), req.source_cdn_authentication_key)}


def _start_req(keys: dict[str, Any], migrate_failed_object: bool = False) -> s.StartTaskReq:
    return s.StartTaskReq(src_ak=keys.get("src_ak"), src_sk=keys.get("src_sk"),
                          json_auth_file=keys.get("src_json_auth"),
                          connection_string=keys.get("src_connection_string"), dst_ak=keys["dst_ak"],
                          dst_sk=keys["dst_sk"], migrate_failed_object=migrate_failed_object,
                          source_cdn_authentication_key=keys.get("cdn_key"))


def _restart_tasks(ctx: GroupContext, project_id: str, group_id: str, statuses: tuple[int, ...],
                   req: s.StartTaskReq) -> None:
    for task_id in ctx.repo.task_ids(project_id, group_id, statuses):
        try:
            tasks.start_task(ctx.tasks, project_id, task_id, req)
        except TaskError:
            continue  # its status changed meanwhile; the roll-up shows where it is


def start_task_group(ctx: GroupContext, project_id: str, group_id: str, req: s.StartTaskGroupReq) -> None:
    """Resume a paused group with re-supplied keys: an unfinished split goes on, paused tasks start again."""
    row = _get(ctx, project_id, group_id)
    tasks.check_restart_kms(row.dst_spec.get("kms_key_id"), req.dst_crypto_type, req.dst_kms_key_id)
    keys = _keys(row, req)
    if effective_status(row, _stats(ctx, row)) != G_PAUSED:
        raise _conflict("Only a paused task group can be started.")
    next_status = G_MONITORING if row.split_state.get("done") else G_EXECUTING
    if not ctx.repo.transition(group_id, (G_PAUSED, G_PAUSING), {
            "status": next_status, "secrets": ctx.tasks.box.seal(keys), "retry_at": None, "smn_result": None},
            project_id=project_id):
        raise _conflict("The task group status changed meanwhile; show it and retry.")
    _restart_tasks(ctx, project_id, group_id, (PAUSED,), _start_req(keys))
    ctx.notify()


def retry_task_group(ctx: GroupContext, project_id: str, group_id: str, req: s.RetryTaskGroupReq) -> None:
    """Restart a failed group: a failed split resumes from its checkpoint; a failed migration restarts every
    failed task, fully (finished objects are skipped) or, with migrate_failed_object, just its failed objects."""
    row = _get(ctx, project_id, group_id)
    tasks.check_restart_kms(row.dst_spec.get("kms_key_id"), req.dst_crypto_type, req.dst_kms_key_id)
    keys = _keys(row, req)
    status = effective_status(row, _stats(ctx, row))
    if status == G_CREATE_FAILED:
        if not ctx.repo.transition(group_id, (G_CREATE_FAILED,), {
                "status": G_EXECUTING, "secrets": ctx.tasks.box.seal(keys), "error_code": None, "error_msg": None,
                "retry_at": None, "finished_at": None, "smn_result": None}, project_id=project_id):
            raise _conflict("The task group status changed meanwhile; show it and retry.")
        ctx.notify()
        return
    if status != G_MIGRATE_FAILED:
        raise _conflict("Only a failed task group can be retried.")
    if not ctx.repo.transition(group_id, (G_MONITORING, G_MIGRATE_FAILED), {
            "status": G_MONITORING, "secrets": ctx.tasks.box.seal(keys), "finished_at": None, "smn_result": None},
            project_id=project_id):
        raise _conflict("The task group status changed meanwhile; show it and retry.")
    _restart_tasks(ctx, project_id, group_id, (FAILED,), _start_req(keys, req.migrate_failed_object))
    ctx.notify()


def update_task_group(ctx: GroupContext, project_id: str, group_id: str, req: s.UpdateBandwidthPolicyReq) -> None:
    """Replace the bandwidth policy of the group (for tasks still to be created) and of its unfinished tasks."""
    row = _get(ctx, project_id, group_id)
    if effective_status(row, _stats(ctx, row)) in (G_COMPLETED, G_DELETING):
        raise _conflict("The bandwidth policy of a finished task group cannot be changed.")
    policy = [p.model_dump() for p in req.bandwidth_policy]
    # Any unfinished status: the runner may move the stored one (7 -> 3, 2 -> 5) between the read and this write.
    unfinished = (G_WAITING, G_EXECUTING, G_MONITORING, G_PAUSED, G_CREATE_FAILED, G_MIGRATE_FAILED, G_PAUSING)
    if not ctx.repo.transition(group_id, unfinished, {"bandwidth_policy": policy}, project_id=project_id):
        raise _conflict("The task group status changed meanwhile; show it and retry.")
    if ctx.repo.task_ids(project_id, group_id):
        tasks.batch_update_tasks(ctx.tasks, project_id,
                                 s.BatchUpdateTasksReq(group_id=group_id, bandwidth_policy=req.bandwidth_policy))


def delete_task_group(ctx: GroupContext, project_id: str, group_id: str) -> None:
    """Delete a group that is not running, with its tasks; the runner then removes its list files."""
    def check(row: GroupRow, stats: TaskStats) -> None:
        if effective_status(row, stats) not in (G_WAITING, G_PAUSED, G_CREATE_FAILED, G_MIGRATE_FAILED,
                                                G_COMPLETED) or stats.count(RUNNING, RETRYING, PAUSING):
            raise _conflict("A running task group cannot be deleted. Stop it first, then delete it.")

    _transition_checked(ctx, project_id, group_id, check, {"status": G_DELETING, "retry_at": None})
    for task_id in ctx.repo.task_ids(project_id, group_id):
        try:
            tasks.delete_task(ctx.tasks, project_id, task_id)
        except TaskError:
            continue  # already gone
    ctx.notify()
