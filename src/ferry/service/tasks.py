"""Migration tasks (OMS §1.2, §1.6): create, list, show, start, stop, delete, bandwidth and batch updates.

Plain functions over a TaskContext, called by the API routes, the CLI and tests alike. The OMS request and
response models of `ferry.oms` are their vocabulary (pure pydantic data). What runs a task is the
runner (`ferry.runner.migration`): these functions only change rows and wake it.

Status transitions: create -> 1 waiting; runner claims -> 2 running -> 5 succeeded | 4 failed (with a reason)
| 6 retrying (an unexpected error; retried with backoff); stop: 2 -> 7 pausing -> 3 paused (the runner
finishes the pause), 1/6 -> 3 at once; start: 3/4 -> 1 with the keys re-supplied; delete: 1/3/4/5 only.
"""

from __future__ import annotations

import hashlib
import secrets as pysecrets
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Protocol

from sqlalchemy import Engine

from ferry import oms as s
from ferry.db.task_repo import (
    FAILED,
    PAUSED,
    PAUSING,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    WAITING,
    TaskRepo,
    TaskRow,
)
from ferry.errors import FerryError, UsageError
from ferry.oms import Codes, Messages
from ferry.secrets import Secret, SecretBox, reveal
from ferry.service import endpoints, smn
from ferry.service.buckets import CdnSource, HelperError, check_source_cdn
from ferry.settings import records_dir
from ferry.storage.cdn_signing import KEYED_TYPES
from ferry.storage.gcs_auth import ServiceAccount
from ferry.storage.profiles import get_profile
from ferry.storage.stores import StoreAt, StoreKeys, open_at
from ferry.storage.url_source import host_port

DAY: Final = 24 * 3600
PRIORITIES: Final = {s.TaskPriority.HIGH: 3, s.TaskPriority.MEDIUM: 2, s.TaskPriority.LOW: 1}
PRIORITY_NAMES: Final = {v: k for k, v in PRIORITIES.items()}
DELETABLE: Final = (WAITING, PAUSED, FAILED, SUCCEEDED)
STARTABLE: Final = (PAUSED, FAILED)


class TaskError(FerryError):
    """A task operation refused by the OMS rules: the HTTP status and OMS code to answer with."""

    code = "FERRY.0409"

    def __init__(self, status: int, oms_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.oms_code = oms_code

    @classmethod
    def invalid(cls, message: str) -> TaskError:
        return cls(400, Codes.INVALID_PARAMETER, f"Invalid parameter settings. {message}")

    @classmethod
    def not_found(cls) -> TaskError:
        # One answer for "no such task" and "another project's task": ids reveal nothing across projects.
        return cls(404, Codes.INVALID_TASK_ID, Messages.INVALID_TASK_ID)

    @classmethod
    def conflict(cls, message: str) -> TaskError:
        return cls(409, Codes.STATUS_CONFLICT, message)


@dataclass(frozen=True)
class TaskLimits:
    """Documented OMS quotas (§3.2): 1,500 tasks created per project per 24 h, at most 1,500 waiting.
    Task groups have a quota of this kind too (OMS documents none for them; the same numbers by default)."""

    created_per_day: int = 1500
    waiting: int = 1500


class QuotaCounts(Protocol):
    """What a quota is checked against: the rows a project created since a time (deleted ones included, so
    deleting does not give the day's quota back) and those in a status (not deleted)."""

    def count_created_since(self, project_id: str, since: float) -> int: ...

    def count_status(self, project_id: str, status: int) -> int: ...


def _noop() -> None:
    return None


@dataclass(frozen=True)
class TaskContext:
    """What task operations need: the database, the key that seals task credentials, where records go,
    the quotas, the endpoint overrides (None: read FERRY_ENDPOINT_OVERRIDES) and the runner's doorbell."""

    engine: Engine
    box: SecretBox
    data_dir: Path
    limits: TaskLimits = field(default_factory=TaskLimits)
    overrides: Mapping[str, str] | None = None
    notify: Callable[[], None] = _noop

    @property
    def repo(self) -> TaskRepo:
        return TaskRepo(self.engine)

    def __repr__(self) -> str:
        return f"TaskContext(data_dir={str(self.data_dir)!r})"


# -- create ------------------------------------------------------------------------------------------------

def resolve_endpoint(ctx: TaskContext, cloud: str, region: str, *, destination: bool) -> endpoints.Endpoint:
    """Where a task or group reads or writes; OMS.0060 for a destination region Ferry cannot reach."""
    table = {k.lower(): v for k, v in ctx.overrides.items()} if ctx.overrides is not None else None
    try:
        return endpoints.resolve_known(cloud, region, table)
    except UsageError as exc:
        if destination:
            raise TaskError(400, Codes.REGION_UNSUPPORTED,
                            "Migration to the current region is not supported.") from None
        raise TaskError.invalid(exc.message) from None


def _endpoint_spec(ep: endpoints.Endpoint) -> dict[str, Any]:
    return {"endpoint": ep.url, "profile": ep.profile, "from_override": ep.from_override}


def check_bucket(profile: str, bucket: str, where: str) -> None:
    """Refuse (OMS.0001) a bucket name the cloud does not allow; `where` names the request field."""
    try:
        get_profile(profile).check_bucket(bucket)
    except UsageError as exc:
        raise TaskError.invalid(f"{where}: {exc.message}") from None


def check_store_opens(ep: endpoints.Endpoint, bucket: str, src: s.SourceNode) -> None:
    """Refuse (OMS.0001) source keys that cannot open a store not spoken as S3, found without a request: a
    malformed connection string, or one whose endpoint is not the cloud's. The message never quotes a key."""
    if get_profile(ep.profile).backend == "s3":
        return
    keys = StoreKeys(src.ak, src.sk.reveal() if src.sk else None,
                     connection_string=src.connection_string.reveal() if src.connection_string else None,
                     json_auth=src.json_auth_file.reveal() if src.json_auth_file else None)
    try:
        open_at(StoreAt(ep.profile, ep.url, ep.region, bucket, "", ep.from_override), keys)
    except UsageError as exc:
        raise TaskError.invalid(f"src_node: {exc.message}") from None


def unsupported(req: s.MigrationReq) -> str | None:
    """Why Ferry cannot run this otherwise valid task or group request yet, or None."""
    src = req.src_node
    if not req.url_list and src.cloud_type.value.lower() not in endpoints.CLOUD_PROFILES:
        return f"source cloud {src.cloud_type.value} is not supported by this server yet"
    return None


# SHA-256 digests of service-account key files whose RSA key passed the full check (never the keys).
_VALIDATED_KEYS: set[bytes] = set()
_VALIDATED_LOCK = threading.Lock()


def check_source_keys(cloud_type: str, ak: str | None, sk: Secret | None, json_auth_file: Secret | None,
                      where: str, *, connection_string: Secret | None = None) -> None:
    """A Google source authenticates with a service-account key file, checked here once (what is wrong with it
    is said, nothing of it quoted); an Azure source with an account name and key or a connection string; every
    other source with an AK/SK pair. URL lists need neither."""
    if cloud_type.lower() == "google":
        if not json_auth_file:
            raise TaskError.invalid(f"{where}json_auth_file (a service-account key file) is required for Google.")
        text = reveal(json_auth_file)
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        try:
            # The RSA consistency check costs ~0.1 s of CPU: a group's restart checks one key for every task.
            ServiceAccount.parse(text, where=f"{where}json_auth_file", validate=digest not in _VALIDATED_KEYS)
        except UsageError as exc:
            raise TaskError.invalid(exc.message) from None
        with _VALIDATED_LOCK:
            if len(_VALIDATED_KEYS) >= 256:
                _VALIDATED_KEYS.clear()
            _VALIDATED_KEYS.add(digest)
    elif not (ak and sk) and not connection_string:
        raise TaskError.invalid(f"{where}ak and {where}sk are required for this source.")


def source_cdn_spec(req: s.MigrationReq) -> dict[str, str] | None:
    """The stored (non-secret) part of a request's `source_cdn`, checked: OMS.1032 when its type signs with an
    authentication_key and none is given; a URL list has no bucket to check the CDN's bytes against."""
    cdn = req.source_cdn
    if cdn is None:
        return None
    if req.url_list:
        raise TaskError.invalid("source_cdn needs a bucket source, not a URL list")
    try:
        check_source_cdn(CdnSource(cdn.domain, cdn.protocol, cdn.authentication_type, cdn.authentication_key))
    except HelperError as exc:
        raise TaskError(400, exc.oms_code, exc.message) from None
    return {"domain": cdn.domain.strip(), "protocol": cdn.protocol.value,
            "authentication_type": cdn.authentication_type.value}


def restart_cdn_key(cdn: dict[str, str] | None, key: Secret | None) -> Secret | None:
    """The CDN key a restart re-supplies (stored keys are dropped when a task pauses): OMS.1032 when the
    task's type signs with one and the request gives none."""
    if cdn and cdn.get("authentication_type") in KEYED_TYPES and not (key and key.reveal().strip()):
        raise TaskError(400, Codes.CDN_KEY, "source_cdn_authentication_key is required to start this task "
                                            f"({cdn['authentication_type']}).")
    return key if cdn else None


def source_cdn_resp(cdn: dict[str, str] | None) -> s.SourceCdnResp | None:
    """What the API shows of a stored `source_cdn`: never its key."""
    return s.SourceCdnResp.model_validate(cdn) if cdn else None


def dst_kms_key(crypto_type: s.CryptoType, kms_key_id: str | None) -> str | None:
    """The KMS key destination writes are encrypted under (SSE-KMS), or None for the bucket's default.

    A source's KMS setting needs nothing: S3-compatible stores decrypt SSE-KMS objects on read for a caller
    allowed to use the key."""
    return kms_key_id if crypto_type is s.CryptoType.KMS else None


def check_restart_kms(stored: str | None, crypto_type: s.CryptoType, kms_key_id: str | None) -> None:
    """A restart re-supplies keys, not encryption: naming another KMS key than the task's is refused, since
    one task writing under two keys would be hard to audit. DEFAULT (the SDK's absent value) keeps the task's."""
    asked = dst_kms_key(crypto_type, kms_key_id)
    if asked is not None and asked != stored:
        raise TaskError.invalid("dst_kms_key_id differs from the KMS key the task was created with; a task keeps "
                                "its destination encryption (create a new task to change it)")


def _task_name(now: float) -> str:
    return f"task_{datetime.fromtimestamp(now).strftime('%Y%m%d%H%M%S')}_{pysecrets.token_hex(2)}"


def check_quota(counts: QuotaCounts, limits: TaskLimits, project_id: str, now: float, *, waiting_status: int,
                what: str = "tasks") -> None:
    """Refuse (OMS.0077) one more of `what` when the project created its day's worth or has too many waiting."""
    if counts.count_created_since(project_id, now - DAY) >= limits.created_per_day:
        raise TaskError(400, Codes.QUOTA,
                        f"The number of {what} you created exceeds the limit ({limits.created_per_day} in 24 "
                        "hours). Retry later or contact technical support.")
    if counts.count_status(project_id, waiting_status) >= limits.waiting:
        raise TaskError(400, Codes.QUOTA,
                        f"The number of waiting {what} exceeds the limit ({limits.waiting}). Wait for them "
                        "to start or delete some, then retry.")


def _check_quota(ctx: TaskContext, project_id: str, now: float) -> None:
    repo = ctx.repo
    repo.purge_tombstones(now - DAY)
    check_quota(repo, ctx.limits, project_id, now, waiting_status=WAITING)


def check_smn(config: s.SmnConfig | None, project_id: str) -> None:
    """Refuse a topic URN that names no SMN topic, or a topic of another project (Ferry publishes with the
    operator's keys, which may reach it), at creation rather than when the task ends."""
    if config is None:
        return
    try:
        smn.project_topic(config.topic_urn, project_id)
    except UsageError as exc:
        raise TaskError(400, Codes.SMN_TOPIC, f"The SMN topic is invalid: {exc.message}") from None


def smn_resp(config: dict[str, Any] | None, result: dict[str, Any] | None) -> s.SmnInfo | None:
    """What the API reports of a finished run's notification; None when the task asked for none."""
    if not config:
        return None
    outcome = smn.Outcome.from_json(result) or smn.Outcome(False)  # None: finished, publish not done yet
    return s.SmnInfo(notify_result=outcome.sent, notify_error_message=outcome.error,
                     topic_name=smn.topic_name(config))


def migration_options(req: s.MigrationReq) -> dict[str, Any]:
    """The stored options of a task or a task group: what both requests carry besides nodes and policies."""
    return {
        "enable_metadata_migration": req.enable_metadata_migration,
        "enable_restore": req.enable_restore,
        "enable_failed_object_recording": req.enable_failed_object_recording,
        "object_overwrite_mode": req.object_overwrite_mode.value,
        "dst_storage_policy": req.dst_storage_policy.value,
        "consistency_check": req.consistency_check.value,
        "enable_requester_pays": req.enable_requester_pays,
        "ferry_reread_size_only": req.ferry_reread_size_only,
        "migrate_since": req.migrate_since,
        "smn_config": req.smn_config.model_dump(mode="json", exclude_none=True) if req.smn_config else None,
    }


def create_task(
    ctx: TaskContext,
    project_id: str,
    req: s.CreateTaskReq,
    *,
    group_id: str | None = None,
    group_type: s.GroupType = s.GroupType.NORMAL_TASK,
    name: str | None = None,
) -> s.CreateTaskResponse:
    """Persist a task (waiting) and wake the runner; task groups pass their `group_id`/`group_type`."""
    reason = unsupported(req)
    if reason:
        raise TaskError.invalid(reason)
    cdn = source_cdn_spec(req)
    check_smn(req.smn_config, project_id)
    src, dst = req.src_node, req.dst_node
    dst_ep = resolve_endpoint(ctx, s.CloudType.HUAWEICLOUD.value, dst.region, destination=True)
    check_bucket(dst_ep.profile, dst.bucket, "dst_node.bucket")
    src_spec: dict[str, Any] = {
        "cloud_type": src.cloud_type.value, "region": src.region, "bucket": src.bucket, "app_id": src.app_id,
        "object_key": list(src.object_key) if src.object_key is not None else None,
        "list_file": src.list_file.model_dump(exclude_none=True) if src.list_file else None,
        "cdn": cdn,
    }
    if req.url_list:
        # URLs of the list may point at non-public addresses only where the operator allowed it.
        table = dict(ctx.overrides) if ctx.overrides is not None else endpoints.load_overrides()
        src_spec["allowed_hosts"] = sorted({host_port(url) for key, url in table.items()
                                            if key.lower().startswith("urlsource/")})
    else:
        assert src.region is not None and src.bucket is not None  # CreateTaskReq checked bucket sources
        check_source_keys(src.cloud_type.value, src.ak, src.sk, src.json_auth_file, "src_node.",
                          connection_string=src.connection_string)
        src_ep = resolve_endpoint(ctx, src.cloud_type.value, src.region, destination=False)
        src_bucket = get_profile(src_ep.profile).bucket_name(src.bucket, src.app_id)
        check_bucket(src_ep.profile, src_bucket, "src_node.bucket")
        check_store_opens(src_ep, src_bucket, src)
        src_spec.update(real_bucket=src_bucket, **_endpoint_spec(src_ep))
    if src.list_file is not None:
        # OMS keeps list files in an OBS bucket of the destination region, read with the destination keys.
        check_bucket(dst_ep.profile, src.list_file.obs_bucket, "src_node.list_file.obs_bucket")
        src_spec["list_endpoint"] = _endpoint_spec(dst_ep)
    dst_spec = {"bucket": dst.bucket, "region": dst.region, "save_prefix": dst.save_prefix or "",
                "kms_key_id": dst_kms_key(dst.crypto_type, dst.kms_key_id), **_endpoint_spec(dst_ep)}
    secret_values = {
        "src_ak": src.ak, "src_sk": src.sk, "src_security_token": src.security_token,
        "src_json_auth": src.json_auth_file,
        "src_connection_string": src.connection_string,
        "dst_ak": dst.ak, "dst_sk": dst.sk, "dst_security_token": dst.security_token,
        "cdn_key": req.source_cdn.authentication_key if req.source_cdn else None,
    }
    now = time.time()
    _check_quota(ctx, project_id, now)
    task_name = name or _task_name(now)
    priority = PRIORITIES[req.task_priority or s.TaskPriority.MEDIUM]
    task_id = ctx.repo.insert({
        "project_id": project_id, "group_id": group_id, "group_type": group_type.value, "name": task_name,
        "description": req.description or "", "task_type": req.task_type.value, "status": WAITING,
        "priority": priority, "src_spec": src_spec, "dst_spec": dst_spec, "options": migration_options(req),
        "bandwidth_policy": [p.model_dump() for p in req.bandwidth_policy or []],
        "secrets": ctx.box.seal(secret_values), "job_id": None, "run_mode": "full",
        "created_at": now, "updated_at": now, "elapsed": 0.0,
    })
    ctx.notify()
    return s.CreateTaskResponse(id=task_id, task_name=task_name)


# -- read --------------------------------------------------------------------------------------------------


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def task_resp(row: TaskRow, now: float | None = None) -> s.TaskResp:
    """The OMS view of a stored task: no secret, ms timestamps, `migrate_since` in ms (0 when unset)."""
    now = time.time() if now is None else now
    src, dst, opts = row.src_spec, row.dst_spec, row.options
    running = row.status in (RUNNING, PAUSING) and row.run_started_at is not None
    # The run under way counts from its wall-clock start; a clock stepped back since must not make it negative.
    total_time = row.elapsed + (max(now - row.run_started_at, 0.0) if running and row.run_started_at else 0.0)
    records = row.records or {}
    failed_record = None
    if opts.get("enable_failed_object_recording"):
        failed_record = s.FailedObjectRecordDto(
            result=row.fail_num > 0 and row.status == FAILED,
            list_file_key=smn.shown_record_path(records.get("failed")),
            error_code=records.get("failed_error"),
        )
    smn_info = smn_resp(opts.get("smn_config"), row.smn_result) if row.status in (FAILED, SUCCEEDED) else None
    since = opts.get("migrate_since")
    list_file = s.ListFile.model_validate(src["list_file"]) if src.get("list_file") else None
    return s.TaskResp(
        bandwidth_policy=[s.BandwidthPolicyDto.model_validate(p) for p in row.bandwidth_policy],
        complete_size=row.complete_size,
        description=row.description,
        dst_node=s.DstNodeResp(bucket=dst["bucket"], region=dst["region"], save_prefix=dst.get("save_prefix", "")),
        enable_failed_object_recording=bool(opts.get("enable_failed_object_recording")),
        enable_metadata_migration=bool(opts.get("enable_metadata_migration")),
        enable_restore=bool(opts.get("enable_restore")),
        error_reason=s.ErrorReasonResp(error_code=row.error_code, error_msg=row.error_msg or "")
        if row.error_code else None,
        failed_num=row.fail_num,
        failed_object_record=failed_record,
        group_id=row.group_id,
        id=row.id,
        is_query_over=bool(row.is_query_over),
        left_time=row.left_time if row.left_time is not None else (0 if row.status == SUCCEEDED else None),
        migrate_since=int(since) * 1000 if since else 0,
        migrate_speed=row.speed if row.status == RUNNING else 0,
        name=row.name,
        progress=1.0 if row.status == SUCCEEDED else min(max(row.progress, 0.0), 1.0),
        real_size=row.real_size,
        restoring_num=row.restoring_num,
        skipped_num=row.skip_num,
        src_node=s.SrcNodeResp(bucket=src.get("bucket"), cloud_type=s.CloudType(src["cloud_type"]),
                               region=src.get("region"), app_id=src.get("app_id"), object_key=src.get("object_key"),
                               list_file=list_file),
        start_time=_ms(row.started_at) or 0,
        status=s.TaskStatus(row.status),
        successful_num=row.success_num,
        task_type=s.TaskType(row.task_type),
        group_type=s.GroupType(row.group_type),
        total_num=row.total_num,
        total_size=row.total_size,
        total_time=int(total_time * 1000),
        smn_info=smn_info,
        success_record_error_reason=records.get("success_error", ""),
        skip_record_error_reason=records.get("skip_error", ""),
        object_overwrite_mode=s.OverwriteMode(opts["object_overwrite_mode"]),
        dst_storage_policy=s.StoragePolicy(opts["dst_storage_policy"]),
        consistency_check=s.ConsistencyCheck(opts["consistency_check"]),
        enable_requester_pays=opts.get("enable_requester_pays"),
        obs_system=s.ObsSystem.BUCKET,
        task_priority=PRIORITY_NAMES.get(row.priority, s.TaskPriority.MEDIUM),
        ferry_size_only_num=row.size_only_num,
        ferry_reread_size_only=bool(opts.get("ferry_reread_size_only")),


        source_cdn=source_cdn_resp(src.get("cdn")),
    )


def _get(ctx: TaskContext, project_id: str, task_id: int) -> TaskRow:
    row = ctx.repo.get(task_id, project_id)
    if row is None:
        raise TaskError.not_found()
    return row


def show_task(ctx: TaskContext, project_id: str, task_id: int) -> s.TaskResp:
    return task_resp(_get(ctx, project_id, task_id))


def list_tasks(ctx: TaskContext, project_id: str, query: s.ListTasksQuery) -> s.ListTasksResponse:
    rows, count = ctx.repo.page(
        project_id, group_id=query.group_id, status=int(query.status) if query.status is not None else None,
        name=query.task_name, limit=query.limit, offset=query.offset,
    )
    now = time.time()
    return s.ListTasksResponse(tasks=[task_resp(r, now) for r in rows], count=count)


# -- lifecycle ---------------------------------------------------------------------------------------------


def start_task(ctx: TaskContext, project_id: str, task_id: int, req: s.StartTaskReq) -> None:
    """Restart a paused or failed task with re-supplied keys: a paused one resumes where it stopped, a failed
    one lists again (finished objects are skipped), or retries just its failed objects."""
    row = _get(ctx, project_id, task_id)
    if row.status not in STARTABLE:
        raise TaskError.conflict("Only paused or failed tasks can be started.")
    if row.task_type != s.TaskType.URL_LIST.value:
        check_source_keys(row.src_spec["cloud_type"], req.src_ak, req.src_sk, req.json_auth_file, "",
                          connection_string=req.connection_string)
    check_restart_kms(row.dst_spec.get("kms_key_id"), req.dst_crypto_type, req.dst_kms_key_id)
    cdn_key = restart_cdn_key(row.src_spec.get("cdn"), req.source_cdn_authentication_key)
    if req.migrate_failed_object:
        mode = "failed_only"
    elif row.status == PAUSED and row.run_mode == "resume":
        mode = "resume"
    else:
        mode = "full"
    blob = ctx.box.seal({
        "src_ak": req.src_ak, "src_sk": req.src_sk, "src_security_token": req.src_security_token,
        "src_json_auth": req.json_auth_file,
        "src_connection_string": req.connection_string,
        "dst_ak": req.dst_ak, "dst_sk": req.dst_sk, "dst_security_token": req.dst_security_token,
        "cdn_key": cdn_key,
    })
    changed = ctx.repo.transition(task_id, project_id, (row.status,), {
        "status": WAITING, "secrets": blob, "run_mode": mode, "error_code": None, "error_msg": None,
        "attempts": 0, "retry_at": None, "finished_at": None,
    })
    if not changed:
        raise TaskError.conflict("The task status changed meanwhile; show the task and retry.")
    ctx.notify()


def stop_task(ctx: TaskContext, project_id: str, task_id: int) -> None:
    """Pause: a running task goes to 7 pausing (the runner completes it to 3); a queued one to 3 at once."""
    _get(ctx, project_id, task_id)
    repo = ctx.repo
    # Twice: a runner may claim a waiting task between the two conditional updates.
    for _ in range(2):
        if repo.transition(task_id, project_id, (RUNNING,), {"status": PAUSING}):
            ctx.notify()
            return
        if repo.transition(task_id, project_id, (WAITING, RETRYING),
                           {"status": PAUSED, "secrets": None, "retry_at": None, "speed": 0, "left_time": None}):
            return
    raise TaskError.conflict("Only running or waiting tasks can be stopped.")


def delete_task(ctx: TaskContext, project_id: str, task_id: int) -> None:
    row = _get(ctx, project_id, task_id)
    if row.status not in DELETABLE:
        raise TaskError.conflict("A running task cannot be deleted. Stop it first, then delete it.")
    if ctx.repo.soft_delete(task_id, project_id, DELETABLE) is None:
        raise TaskError.conflict("A running task cannot be deleted. Stop it first, then delete it.")
    shutil.rmtree(records_dir(ctx.data_dir, project_id, task_id), ignore_errors=True)


def _policy_json(policies: list[s.BandwidthPolicyDto]) -> list[dict[str, Any]]:
    return [p.model_dump() for p in policies]


def update_bandwidth_policy(ctx: TaskContext, project_id: str, task_id: int,
                            req: s.UpdateBandwidthPolicyReq) -> None:
    """Replace the rate-limit windows of an unfinished task; a running task picks them up within seconds."""
    _get(ctx, project_id, task_id)
    unfinished = (WAITING, RUNNING, PAUSED, FAILED, RETRYING, PAUSING)
    if not ctx.repo.transition(task_id, project_id, unfinished,
                               {"bandwidth_policy": _policy_json(req.bandwidth_policy)}):
        raise TaskError.conflict("The bandwidth policy of a finished task cannot be changed.")


def batch_update_tasks(ctx: TaskContext, project_id: str, req: s.BatchUpdateTasksReq) -> None:
    """Set the bandwidth policy (and priority) of the tasks of a group or of listed ids.

    Every listed id must be a task of the project (else nothing changes). The policy goes to every unfinished
    task; the priority only to waiting, paused or failed ones, as documented — the others keep theirs.
    """
    repo = ctx.repo
    if req.ids is not None:
        ids = list(dict.fromkeys(req.ids))
        for task_id in ids:
            if repo.get(task_id, project_id) is None:
                raise TaskError.not_found()
    else:
        assert req.group_id is not None
        ids = repo.ids_in_group(project_id, req.group_id)
        if not ids:
            raise TaskError(404, Codes.NOT_FOUND, f"{Messages.NOT_FOUND} The task group has no tasks.")
    unfinished = (WAITING, RUNNING, PAUSED, FAILED, RETRYING, PAUSING)
    repo.update_many(ids, project_id, unfinished, {"bandwidth_policy": _policy_json(req.bandwidth_policy)})
    if req.task_priority is not None:
        repo.update_many(ids, project_id, (WAITING, PAUSED, FAILED), {"priority": PRIORITIES[req.task_priority]})
