"""Sync tasks (OMS §1.4) as plain functions: lifecycle, durable events, statistics, bucket notifications.

The API routes and the tests call these with values the request models (`ferry.oms`) already validated.
What only a service can check lives here (the quota of 5 tasks per project, clouds and regions Ferry can
reach, bucket naming rules, event keys as URL-decoded), and so does everything that touches credentials:
they are encrypted with the SecretBox before they reach the database and decrypted only by
`open_task_backends`, which the sync workers are given.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import hashlib
import json
import queue
import secrets as token_source
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final
from urllib.parse import unquote, unquote_plus

from sqlalchemy import Engine

from ferry.db.sync_models import STAT_BUCKET_SECONDS
from ferry.db.sync_repo import (
    STOPPED,
    SYNCHRONIZING,
    KeyProblem,
    StatTotals,
    SyncRepo,
    SyncTaskRow,
    SyncTaskSpec,
)
from ferry.errors import NotFoundError, UsageError
from ferry.oms import (
    MAX_KEY_BYTES,
    CdnAuthType,
    CdnProtocol,
    Codes,
    CreateSyncTaskReq,
    CryptoType,
    StartSyncTaskReq,
    StatGranularity,
    SyncStatType,
    SyncStatus,
)
from ferry.runner.sync import SyncBackground, SyncSettings, SyncWaker, SyncWorkers
from ferry.secrets import Secret, SecretBox, reveal
from ferry.service import buckets
from ferry.service.buckets import CloudAccess, HelperSettings
from ferry.service.endpoints import resolve, resolve_known
from ferry.service.quotas import EventLimits, RateLimitedError, RateLimiter
from ferry.settings import MetricsSettings
from ferry.storage.base import Backend
from ferry.storage.cdn_source import open_through_cdn
from ferry.storage.profiles import get_profile
from ferry.storage.stores import StoreAt, StoreKeys, open_at

MAX_SYNC_TASKS: Final = 5
MAX_NOTIFICATION_RECORDS: Final = 1000
# Statistics windows: 5-minute points up to a day, hourly beyond, and never more than the documented 1000.
FIVE_MINUTES: Final = 300
ONE_HOUR: Final = 3600
DAY: Final = 86400
MAX_POINTS: Final = 1000
# Epoch values below this are seconds, above it milliseconds: 1e11 ms is March 1973, 1e11 s the year 5138.
_MS_THRESHOLD: Final = 100_000_000_000


class QuotaExceededError(UsageError):
    """The project already has the maximum number of sync tasks: answered 400 with the quota code, as OMS does."""

    code = "FERRY.0429"
    status = 400
    oms_code = Codes.QUOTA


class TaskStateError(UsageError):
    """The operation does not apply to the task in its current status (start a running task, say)."""

    code = "FERRY.0409"


@dataclass(frozen=True, slots=True)
class SyncCredentials:
    """What a sync task reads and writes with; repr shows no part of it."""

    src_ak: str = field(repr=False)
    src_sk: Secret = field(repr=False)
    dst_ak: str = field(repr=False)
    dst_sk: Secret = field(repr=False)
    cdn_key: Secret | None = field(default=None, repr=False)

    def seal(self, box: SecretBox) -> str:
        """One SecretBox token holding all of them (the access keys too: they name the account)."""
        raw = {"src_ak": self.src_ak, "src_sk": reveal(self.src_sk), "dst_ak": self.dst_ak,
               "dst_sk": reveal(self.dst_sk)}
        if self.cdn_key is not None:
            raw["cdn_key"] = reveal(self.cdn_key)
        return box.encrypt(json.dumps(raw))

    @classmethod
    def unseal(cls, box: SecretBox, token: str) -> SyncCredentials:
        raw = json.loads(box.decrypt(token))
        cdn = raw.get("cdn_key")
        return cls(raw["src_ak"], Secret(raw["src_sk"]), raw["dst_ak"], Secret(raw["dst_sk"]),
                   Secret(cdn) if cdn is not None else None)


@dataclass(frozen=True, slots=True)
class StatisticSeries:
    """Each series is (bucket start in epoch ms, value) points."""

    granularity: StatGranularity
    series: tuple[tuple[SyncStatType, tuple[tuple[int, int], ...]], ...]


@dataclass(frozen=True, slots=True)
class NotificationResult:
    accepted: int
    ignored: int


def _no_wake() -> None:
    return None


@dataclass(frozen=True)
class SyncContext:
    """What the sync service functions need: the database, the secret box, a way to wake the workers, and
    the caps on what callers may queue (by default from the environment, see `ferry.service.quotas`).

    `wake` is called (from any thread) after events are committed, so an idle worker starts at once instead
    of at its next poll. `clock` gives epoch seconds.
    """

    engine: Engine
    box: SecretBox
    wake: Callable[[], None] = _no_wake
    clock: Callable[[], float] = time.time
    limits: EventLimits = field(default_factory=EventLimits.from_env)
    # Where creation checks the keys and buckets: the operator's endpoint table, read on each call.
    access: HelperSettings = field(default_factory=HelperSettings)
    repo: SyncRepo = field(init=False)
    committer: EventCommitter = field(init=False)
    notify_rate: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "repo", SyncRepo(self.engine))
        object.__setattr__(self, "committer", EventCommitter(self))
        object.__setattr__(self, "notify_rate", RateLimiter(self.limits.notify_rate, self.limits.notify_burst))


# Embedded mode runs one process; the database enforces the quota for PostgreSQL, this lock for threads.
_create_lock = threading.Lock()


# -- checks the request models cannot make -------------------------------------------------------------------

def _check_credentials(creds: SyncCredentials) -> None:
    for name, value in (("src_ak", creds.src_ak), ("src_sk", creds.src_sk), ("dst_ak", creds.dst_ak),
                        ("dst_sk", creds.dst_sk)):
        if not value:
            raise UsageError(f"{name} is required")


def _check_cdn(spec: SyncTaskSpec, creds: SyncCredentials) -> None:
    """A `source_cdn` as create_task checks it: OMS.1032 (HelperError) when its type signs with a key and
    none is given, at creation and at every start (the key is re-supplied with the others)."""
    if spec.cdn_domain and spec.cdn_protocol:
        buckets.check_source_cdn(buckets.CdnSource(spec.cdn_domain, CdnProtocol(spec.cdn_protocol),
                                                   CdnAuthType(spec.cdn_authentication_type or "NONE"),
                                                   creds.cdn_key))


def check_reachable(spec: SyncTaskSpec) -> None:
    """Ferry must be able to reach both buckets: resolving now turns an unsupported cloud or a region with no
    endpoint into a clear error at creation instead of failures later."""
    for cloud_type, region, bucket, app_id in ((spec.src_cloud_type, spec.src_region, spec.src_bucket, spec.app_id),
                                               (spec.dst_cloud_type, spec.dst_region, spec.dst_bucket, None)):
        endpoint = resolve_known(cloud_type, region)
        profile = get_profile(endpoint.profile)
        profile.check_bucket(profile.bucket_name(bucket, app_id))


def decode_event_key(raw: str, where: str, *, plus_is_space: bool = False) -> str:
    """The object key an event names: URL-decoded, non-empty, valid UTF-8, at most 1024 bytes.

    OMS events are percent-encoded (`+` is a plus sign); S3 notifications use form encoding, where `+` is
    a space, hence `plus_is_space`.
    """
    if not isinstance(raw, str) or not raw:
        raise UsageError(f"{where} is empty")
    try:
        key = (unquote_plus if plus_is_space else unquote)(raw, errors="strict")
        size = len(key.encode("utf-8"))
    except UnicodeError:
        raise UsageError(f"{where} is not valid URL-encoded UTF-8") from None
    if not key:
        raise UsageError(f"{where} is empty")
    if size > MAX_KEY_BYTES:
        raise UsageError(f"{where} is {size} bytes once decoded; object keys have at most {MAX_KEY_BYTES}")
    return key


def to_epoch_seconds(value: int) -> float:
    """A request time as epoch seconds: milliseconds as documented, or seconds, told apart by magnitude."""
    if value < 0:
        raise UsageError("times must not be negative")
    return value / 1000.0 if value >= _MS_THRESHOLD else float(value)


# -- requests -----------------------------------------------------------------------------------------------

def request_spec(body: CreateSyncTaskReq) -> tuple[SyncTaskSpec, SyncCredentials]:
    """A validated create_sync_task request as the task's spec and its credentials (kept apart: only the
    credentials are sealed)."""
    cdn = body.source_cdn
    spec = SyncTaskSpec(
        src_cloud_type=body.src_cloud_type.value, src_region=body.src_region, src_bucket=body.src_bucket,
        dst_region=body.dst_region, dst_bucket=body.dst_bucket, description=body.description,
        enable_metadata_migration=body.enable_metadata_migration, enable_restore=body.enable_restore,
        dst_storage_policy=body.dst_storage_policy.value, app_id=body.app_id,
        consistency_check=body.consistency_check.value,
        src_crypto_type=body.src_crypto_type.value, src_kms_key_id=body.src_kms_key_id,
        dst_crypto_type=body.dst_crypto_type.value, dst_kms_key_id=body.dst_kms_key_id,
        cdn_domain=cdn.domain if cdn else None, cdn_protocol=cdn.protocol.value if cdn else None,
        cdn_authentication_type=cdn.authentication_type.value if cdn else None,
        cdn_crypto_type=cdn.crypto_type.value if cdn else None, cdn_kms_key_id=cdn.kms_key_id if cdn else None,
    )
    creds = SyncCredentials(body.src_ak, body.src_sk, body.dst_ak, body.dst_sk,
                            cdn.authentication_key if cdn else None)
    return spec, creds


def start_request(body: StartSyncTaskReq) -> tuple[SyncCredentials, str | None]:
    """A validated start_sync_task request as the re-supplied credentials and the destination KMS key it names."""
    creds = SyncCredentials(body.src_ak, body.src_sk, body.dst_ak, body.dst_sk, body.source_cdn_authentication_key)
    return creds, body.dst_kms_key_id if body.dst_crypto_type is CryptoType.KMS else None


# -- lifecycle ----------------------------------------------------------------------------------------------

def _task(ctx: SyncContext, project_id: str, task_id: str) -> SyncTaskRow:
    row = ctx.repo.get_task(task_id, project_id)
    if row is None:
        # Another project's task is "not found" too: ids do not tell who else exists.
        raise NotFoundError("no such sync task")
    return row


async def check_access(ctx: SyncContext, spec: SyncTaskSpec, creds: SyncCredentials) -> None:
    """List one object of each bucket with the task's keys, as OMS checks them at creation: bad keys, a
    missing bucket or a missing permission is refused now (HelperError with the OMS code the bucket helpers
    answer: OMS.0151/0155 source, OMS.0057/0058 destination...) rather than failing every event later."""
    src = CloudAccess(spec.src_cloud_type, creds.src_ak, creds.src_sk, spec.app_id)
    dst = CloudAccess(spec.dst_cloud_type, creds.dst_ak, creds.dst_sk, destination=True)
    await buckets.check_prefix(src, spec.src_region, spec.src_bucket, "", ctx.access)
    await buckets.check_prefix(dst, spec.dst_region, spec.dst_bucket, "", ctx.access)


def _quota_exceeded() -> QuotaExceededError:
    return QuotaExceededError(f"The number of sync tasks exceeds the limit ({MAX_SYNC_TASKS} per project). "
                              "Delete one first.")


def _check_room(ctx: SyncContext, project_id: str) -> None:
    if ctx.repo.count_tasks(project_id) >= MAX_SYNC_TASKS:
        raise _quota_exceeded()


def _insert_task(ctx: SyncContext, project_id: str, spec: SyncTaskSpec, creds: SyncCredentials) -> str:
    sealed = creds.seal(ctx.box)
    task_id = str(uuid.uuid4())
    with _create_lock:
        if not ctx.repo.create_task(task_id, project_id, spec, sealed, ctx.clock(), MAX_SYNC_TASKS):
            raise _quota_exceeded()
    ctx.wake()
    return task_id


async def create_sync_task(ctx: SyncContext, project_id: str, spec: SyncTaskSpec, creds: SyncCredentials) -> str:
    """Create a task in SYNCHRONIZING once its keys and buckets proved to work; its first reconciliation
    (the initial full copy) starts at once."""
    check_reachable(spec)
    _check_credentials(creds)
    _check_cdn(spec, creds)
    # A full project is told so before the stores are asked (the insert checks the quota again, atomically).
    await asyncio.to_thread(_check_room, ctx, project_id)
    await check_access(ctx, spec, creds)
    return await asyncio.to_thread(_insert_task, ctx, project_id, spec, creds)


def list_sync_tasks(
    ctx: SyncContext, project_id: str, *, limit: int = 10, offset: int = 0, status: SyncStatus | None = None
) -> tuple[list[SyncTaskRow], int]:
    return ctx.repo.list_tasks(project_id, None if status is None else status.value, limit, offset)


def month_window(epoch_seconds: float) -> tuple[int, int]:
    """[start, end) epoch seconds of the UTC calendar month containing `epoch_seconds`."""
    when = datetime.fromtimestamp(epoch_seconds, UTC)
    start = calendar.timegm(datetime(when.year, when.month, 1, tzinfo=UTC).timetuple())
    # Counted in days, not as the next month's first day: after December 9999 there is no datetime.
    return start, start + calendar.monthrange(when.year, when.month)[1] * 86_400


def show_sync_task(ctx: SyncContext, project_id: str, task_id: str, query_time: int) -> tuple[SyncTaskRow, StatTotals]:
    """The task and its counters for the (UTC) month of `query_time` — sums of the same statistics buckets
    that list_sync_task_statistic reports, so the two always agree."""
    row = _task(ctx, project_id, task_id)
    start, end = month_window(to_epoch_seconds(query_time))
    return row, ctx.repo.stat_totals(task_id, start, end)


def stop_sync_task(ctx: SyncContext, project_id: str, task_id: str) -> None:
    row = _task(ctx, project_id, task_id)
    if not ctx.repo.stop_task(project_id, task_id, ctx.clock()):
        raise TaskStateError(f"only a SYNCHRONIZING sync task can be stopped; this one is {row.status}")


def dst_kms_key(spec: SyncTaskSpec) -> str | None:
    """The KMS key every destination write is encrypted under (SSE-KMS), or None for the bucket's default."""
    return spec.dst_kms_key_id if spec.dst_crypto_type == CryptoType.KMS else None


async def start_sync_task(ctx: SyncContext, project_id: str, task_id: str, creds: SyncCredentials,
                          dst_kms_key_id: str | None = None) -> None:
    """Restart a STOPPED task with re-supplied credentials (checked as at creation); it reconciles at once
    to catch up, and the keys that failed meanwhile are tried again.

    `dst_kms_key_id` (given when the request says dst_crypto_type KMS) must be the task's own: a restart
    re-supplies keys, not encryption, so one task never writes under two KMS keys."""
    row = await asyncio.to_thread(_task, ctx, project_id, task_id)
    _check_credentials(creds)
    _check_cdn(row.spec, creds)
    if dst_kms_key_id is not None and dst_kms_key_id != dst_kms_key(row.spec):
        raise UsageError("dst_kms_key_id differs from the KMS key the sync task was created with; a task keeps "
                         "its destination encryption (create a new task to change it)")
    if row.status != STOPPED:
        raise TaskStateError(f"only a STOPPED sync task can be started; this one is {row.status}")
    await check_access(ctx, row.spec, creds)
    if not await asyncio.to_thread(ctx.repo.start_task, project_id, task_id, creds.seal(ctx.box), ctx.clock()):
        raise TaskStateError(f"only a STOPPED sync task can be started; this one is {row.status}")
    ctx.wake()


def delete_sync_task(ctx: SyncContext, project_id: str, task_id: str) -> None:
    """Delete the task with its queue and statistics (allowed in any status; running copies are abandoned)."""
    if not ctx.repo.delete_task(project_id, task_id):
        raise NotFoundError("no such sync task")


# -- events -------------------------------------------------------------------------------------------------

def _check_accepting(row: SyncTaskRow) -> None:
    if row.status != SYNCHRONIZING:
        # Refused rather than parked: the caller learns at once, and starting the task reconciles anyway.
        raise TaskStateError("the sync task is STOPPED; start it before sending events")


def _accept(ctx: SyncContext, row: SyncTaskRow, keys: Sequence[str]) -> None:
    _check_accepting(row)
    if keys:
        ctx.repo.enqueue(row.id, keys, ctx.clock(), durable=True, limits=ctx.limits.pending)
        ctx.wake()


async def create_sync_events(ctx: SyncContext, project_id: str, task_id: str, object_keys: Sequence[str]) -> int:
    """Accept URL-encoded keys (1–10, as SyncObjectReq checked); they are on disk (committed by the context's
    EventCommitter) before this returns. Returns how many were accepted."""
    keys = [decode_event_key(k, f"object_keys[{i}]") for i, k in enumerate(object_keys)]
    await ctx.committer.submit(project_id, task_id, keys)
    return len(keys)


@dataclass(slots=True)
class _Submitted:
    project_id: str
    task_id: str
    keys: list[str]
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return  # the caller went away (its request was cancelled)
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class EventCommitter:
    """One thread that checks and durably commits the events the API accepts, for requests that await it.

    Under load, a request that takes a thread-pool thread and then queues on the write lock waits for the
    interpreter lock and a core at each hand-over; here a request costs one hand-over each way, and every
    request that arrived during a commit shares the next one (a group commit, as `SyncRepo.enqueue` does
    for threads).
    """

    IDLE_SECONDS: Final = 30.0  # an idle thread ends; the next request starts another

    def __init__(self, ctx: SyncContext) -> None:
        self._ctx = ctx
        self._queue: queue.SimpleQueue[_Submitted] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    async def submit(self, project_id: str, task_id: str, keys: list[str]) -> None:
        """Return once the keys are on disk; raise NotFoundError / TaskStateError as create_sync_events does."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        # Queued before the thread is checked: a thread ending for idleness re-checks the queue under the lock.
        self._queue.put(_Submitted(project_id, task_id, keys, future, loop))
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ferry-event-commits", daemon=True)
                self._thread.start()
        await future

    def _next(self) -> _Submitted | None:
        """The next request, or None once idle for IDLE_SECONDS with nothing queued (the thread then ends)."""
        while True:
            try:
                return self._queue.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self._start_lock:
                    if self._queue.empty():
                        self._thread = None
                        return None

    def _run(self) -> None:
        while (first := self._next()) is not None:
            batch = [first]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._queue.get_nowait())
            try:
                errors = self._commit(batch)
            except Exception as exc:  # the database itself failed: every request of the batch learns it
                errors = [exc] * len(batch)
            for item, error in zip(batch, errors, strict=True):
                with contextlib.suppress(RuntimeError):  # that caller's event loop is closed: nobody waits
                    item.loop.call_soon_threadsafe(_settle, item.future, error)

    def _commit(self, batch: list[_Submitted]) -> list[BaseException | None]:
        ctx = self._ctx
        errors: list[BaseException | None] = [None] * len(batch)
        rows: dict[tuple[str, str], SyncTaskRow | BaseException] = {}
        accepted: list[int] = []
        for i, item in enumerate(batch):
            where = (item.project_id, item.task_id)
            if where not in rows:
                try:
                    row = _task(ctx, item.project_id, item.task_id)
                    _check_accepting(row)
                    rows[where] = row
                except (NotFoundError, TaskStateError) as exc:
                    rows[where] = exc
            found = rows[where]
            if isinstance(found, BaseException):
                errors[i] = found
            else:
                accepted.append(i)
        if accepted:
            outcomes = ctx.repo.enqueue_batch([(batch[i].task_id, batch[i].keys) for i in accepted], ctx.clock(),
                                              limits=ctx.limits.pending)
            for i, outcome in zip(accepted, outcomes, strict=True):
                errors[i] = outcome
            ctx.wake()
        return errors


def list_key_problems(
    ctx: SyncContext, project_id: str, task_id: str, *, limit: int = 100, offset: int = 0
) -> tuple[list[KeyProblem], int]:
    """Keys that failed: still being retried with backoff, or given up — each with its last reason."""
    _task(ctx, project_id, task_id)
    return ctx.repo.problems(project_id, task_id, limit, offset)


# -- statistics ---------------------------------------------------------------------------------------------

def _stat_value(totals: StatTotals, kind: SyncStatType) -> int:
    return int(getattr(totals, kind.lower()))


def list_sync_task_statistic(
    ctx: SyncContext, project_id: str, task_id: str, data_types: Sequence[SyncStatType], start_time: int,
    end_time: int,
) -> StatisticSeries:
    """Zero-filled series, one per requested type in request order: FIVE_MINUTES points for windows up to a
    day, ONE_HOUR beyond; at most 1000 points (about 41 days)."""
    _task(ctx, project_id, task_id)
    kinds = list(dict.fromkeys(data_types))
    start, end = to_epoch_seconds(start_time), to_epoch_seconds(end_time)
    if end < start:
        raise UsageError("end_time must not be earlier than start_time")
    step = FIVE_MINUTES if end - start <= DAY else ONE_HOUR
    first = int(start // step) * step
    last = int(end // step) * step
    points = (last - first) // step + 1
    if points > MAX_POINTS:
        raise UsageError(f"the window needs {points} points; at most {MAX_POINTS} (about 41 days)")
    sums: dict[int, dict[SyncStatType, int]] = {}
    for bucket_start, totals in ctx.repo.stat_buckets(task_id, first, last + step):
        slot = sums.setdefault(bucket_start // step * step, dict.fromkeys(SyncStatType, 0))
        for kind in SyncStatType:
            slot[kind] += _stat_value(totals, kind)
    empty = dict.fromkeys(SyncStatType, 0)
    series = tuple(
        (kind, tuple((t * 1000, sums.get(t, empty)[kind]) for t in range(first, last + step, step)))
        for kind in kinds
    )
    return StatisticSeries(StatGranularity.FIVE_MINUTES if step == FIVE_MINUTES else StatGranularity.ONE_HOUR, series)


assert STAT_BUCKET_SECONDS == FIVE_MINUTES, "statistics buckets must be the FIVE_MINUTES granularity"


# -- native bucket notifications ----------------------------------------------------------------------------

def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_notification_token(ctx: SyncContext, project_id: str, task_id: str) -> str:
    """A new secret for the task's unsigned notification URL (replacing any earlier one); shown only now,
    stored only as its SHA-256."""
    _task(ctx, project_id, task_id)
    token = token_source.token_urlsafe(32)
    if not ctx.repo.set_notify_token_hash(project_id, task_id, _token_digest(token), ctx.clock()):
        raise NotFoundError("no such sync task")
    return token


def task_for_token(ctx: SyncContext, task_id: str, token: str) -> SyncTaskRow:
    """The task whose notification token this is; NotFoundError for any mismatch (nothing tells which)."""
    row = ctx.repo.task_by_notify_hash(task_id, _token_digest(token)) if token else None
    if row is None:
        raise NotFoundError("no such sync task")
    return row


def _records(payload: Any) -> list[Any]:
    if not isinstance(payload, Mapping):
        raise UsageError("the notification must be a JSON object")
    if payload.get("Type") == "SubscriptionConfirmation":
        # Following SubscribeURL would make Ferry fetch an address a caller chose; confirm it by hand.
        raise UsageError("SNS subscription confirmations are not followed; open the SubscribeURL yourself")
    if payload.get("Type") == "Notification" and isinstance(payload.get("Message"), str):
        # AWS S3 -> SNS -> HTTPS subscription: the S3 event is a JSON string inside the SNS envelope.
        try:
            payload = json.loads(payload["Message"])
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            raise UsageError("the SNS Message is not JSON") from None
        if not isinstance(payload, Mapping):
            raise UsageError("the SNS Message is not a JSON object")
    records = payload.get("Records")
    if records is None:
        # s3:TestEvent and other record-less messages are acknowledged and ignored.
        return []
    if not isinstance(records, list):
        raise UsageError("Records must be a list")
    if len(records) > MAX_NOTIFICATION_RECORDS:
        raise UsageError(f"at most {MAX_NOTIFICATION_RECORDS} records per notification")
    return records


def parse_s3_notification(payload: Any, bucket: str) -> tuple[list[str], int]:
    """(decoded keys of ObjectCreated records for `bucket`, number of records ignored) of an S3-style event
    notification: AWS S3 (direct or through SNS), MinIO, Ceph RGW and compatible stores' webhook JSON."""
    keys: list[str] = []
    ignored = 0
    for i, record in enumerate(_records(payload)):
        if not isinstance(record, Mapping):
            raise UsageError(f"Records[{i}] must be an object")
        name = record.get("eventName")
        s3 = record.get("s3")
        if not isinstance(name, str) or not isinstance(s3, Mapping):
            raise UsageError(f"Records[{i}] needs eventName and s3")
        if not name.removeprefix("s3:").startswith("ObjectCreated:"):
            ignored += 1  # removals are not propagated by events; other kinds do not change content
            continue
        record_bucket = (s3.get("bucket") or {}).get("name") if isinstance(s3.get("bucket"), Mapping) else None
        if record_bucket is not None and record_bucket != bucket:
            ignored += 1
            continue
        obj = s3.get("object")
        raw = obj.get("key") if isinstance(obj, Mapping) else None
        if not isinstance(raw, str):
            raise UsageError(f"Records[{i}].s3.object.key is required")
        keys.append(decode_event_key(raw, f"Records[{i}].s3.object.key", plus_is_space=True))
    return keys, ignored


def accept_notification(ctx: SyncContext, row: SyncTaskRow, payload: Any) -> NotificationResult:
    """Turn an S3-style notification into durable sync events for the task `row`.

    Each record costs a token of the project's notification rate (RateLimitedError when they run out), and
    the keys must fit the pending-event limits (QueueFullError)."""
    bucket = get_profile(resolve(row.spec.src_cloud_type, row.spec.src_region).profile).bucket_name(
        row.spec.src_bucket, row.spec.app_id
    )
    keys, ignored = parse_s3_notification(payload, bucket)
    wait = ctx.notify_rate.take(row.project_id, max(1, len(keys) + ignored))
    if wait:
        raise RateLimitedError(f"at most {ctx.limits.notify_rate:g} notification records per second per project",
                               wait)
    _accept(ctx, row, keys)
    return NotificationResult(len(keys), ignored)


def notify_sync_task(ctx: SyncContext, project_id: str, task_id: str, payload: Any) -> NotificationResult:
    return accept_notification(ctx, _task(ctx, project_id, task_id), payload)


# -- what the workers are given -----------------------------------------------------------------------------

def open_task_backends(box: SecretBox, row: SyncTaskRow) -> tuple[Backend, Backend]:
    """Source and destination backends of a task, with its decrypted credentials."""
    creds = SyncCredentials.unseal(box, row.secrets)
    spec = row.spec
    out: list[Backend] = []
    names: list[str] = []
    for cloud, region, bucket, app_id, keys, kms_key in (
        (spec.src_cloud_type, spec.src_region, spec.src_bucket, spec.app_id,
         StoreKeys(creds.src_ak, reveal(creds.src_sk)), None),
        (spec.dst_cloud_type, spec.dst_region, spec.dst_bucket, None,
         StoreKeys(creds.dst_ak, reveal(creds.dst_sk)), dst_kms_key(spec)),
    ):
        endpoint = resolve(cloud, region)
        name = get_profile(endpoint.profile).bucket_name(bucket, app_id)
        names.append(name)
        at = StoreAt(endpoint.profile, endpoint.url, region, name, "", endpoint.from_override, kms_key)
        out.append(open_at(at, keys))
    cdn = {"domain": spec.cdn_domain, "protocol": spec.cdn_protocol,
           "authentication_type": spec.cdn_authentication_type or "NONE"} \
        if spec.cdn_domain and spec.cdn_protocol else None
    src = open_through_cdn(out[0], cdn, reveal(creds.cdn_key) if creds.cdn_key else None, creds.src_ak,
                           reveal(creds.src_sk), names[0])
    return src, out[1]


def build_sync_service(
    engine: Engine, box: SecretBox, settings: SyncSettings | None = None
) -> tuple[SyncContext, SyncBackground]:
    """The API's SyncContext and the (not yet started) background workers it wakes.

    `ferry serve` puts the context in ApiServices(sync=...), calls `start()` on the handle when it starts its
    runners and `stop()` on shutdown. Settings default to the environment (see ferry.runner.sync).
    """
    waker = SyncWaker()
    workers = SyncWorkers(engine, partial(open_task_backends, box), settings or SyncSettings.from_env(), waker=waker)
    return SyncContext(engine, box, wake=waker.notify), SyncBackground(workers)


class SyncProcess:
    """The sync workers in a child process of their own, so that copying never competes with the API for
    the interpreter lock; `ferry serve` uses it by default (FERRY_SYNC_WORKERS=thread keeps them in-process).

    The API wakes the child with an empty UDP datagram on 127.0.0.1 (lossy on purpose: a lost wake-up only
    waits for the next poll, and a slow child can never block a request). SIGTERM asks the child to finish
    in-flight keys and record them; if the parent dies, the kernel kills the child too.
    """

    def __init__(self, database_url: str, data_dir: str, settings: SyncSettings | None = None) -> None:
        import multiprocessing

        self._ctx = multiprocessing.get_context("spawn")
        self._database_url = database_url
        self._data_dir = data_dir
        self._settings = settings or SyncSettings.from_env()
        self._proc: Any = None
        self._sock: Any = None
        self._addr: tuple[str, int] | None = None

    def start(self) -> SyncProcess:
        import socket

        parent, child = self._ctx.Pipe(duplex=False)
        self._proc = self._ctx.Process(
            target=_sync_child_main, args=(self._database_url, self._data_dir, self._settings, child),
            name="ferry-sync", daemon=True,
        )
        self._proc.start()
        child.close()
        if not parent.poll(60):
            raise RuntimeError("the sync worker process did not start")
        port = parent.recv()
        parent.close()
        self._addr = ("127.0.0.1", int(port))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        self._sock = sock
        return self

    def notify(self) -> None:
        sock, addr = self._sock, self._addr
        if sock is not None and addr is not None:
            with contextlib.suppress(OSError):
                sock.sendto(b"", addr)

    def stop(self, timeout: float = 30.0) -> None:
        proc = self._proc
        if proc is not None and proc.is_alive():
            proc.terminate()
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join(10)
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _sync_child_main(database_url: str, data_dir: str, settings: SyncSettings, ready: Any) -> None:
    """Entry point of the sync worker process."""
    import asyncio
    import ctypes
    import logging
    import os
    import signal
    import socket
    from pathlib import Path

    from ferry import metrics
    from ferry.db.database import open_database
    from ferry.db.metric_repo import SnapshotPublisher

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with parent
    logging.basicConfig(level=os.environ.get("FERRY_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = open_database(database_url)
    box = SecretBox.load(Path(data_dir))
    waker = SyncWaker()
    workers = SyncWorkers(engine, partial(open_task_backends, box), settings, waker=waker)

    class _Wake(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            waker.notify()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        transport, _ = await loop.create_datagram_endpoint(_Wake, local_addr=("127.0.0.1", 0))
        ready.send(transport.get_extra_info("sockname")[1])
        ready.close()
        try:
            await workers.run(stop)
        finally:
            transport.close()

    # This process serves no /metrics: its tallies (store errors, event latency) reach the server's through the
    # database. One row per host and data directory, so a restarted child takes its place rather than adding one.
    place = hashlib.sha256(data_dir.encode()).hexdigest()[:16]
    publisher = SnapshotPublisher(engine, f"sync@{socket.gethostname()}:{place}", metrics.snapshot, time.time,
                                  MetricsSettings.from_env().publish_seconds)
    publisher.start()
    try:
        asyncio.run(main())
    finally:
        publisher.stop()
        engine.dispose()


def build_sync_runtime(
    engine: Engine, box: SecretBox, database_url: str, data_dir: str, *, default_mode: str = "thread"
) -> tuple[SyncContext, SyncBackground | SyncProcess]:
    """The API's SyncContext and the workers it wakes: in their own process or in a thread of the API's
    process, as FERRY_SYNC_WORKERS (process | thread) says, else `default_mode` (`ferry serve` passes
    process). An in-memory database, which a second process could not see, always gets a thread."""
    import os

    mode = (os.environ.get("FERRY_SYNC_WORKERS") or default_mode).strip().lower()
    if mode not in ("process", "thread"):
        raise UsageError("FERRY_SYNC_WORKERS must be process or thread")
    if mode == "thread" or ":memory:" in database_url or database_url.rstrip("/") == "sqlite:":
        return build_sync_service(engine, box)
    process = SyncProcess(database_url, data_dir)
    return SyncContext(engine, box, wake=process.notify), process
