"""Sync-task state queries: tasks, the coalescing event queue with leases, and time-bucketed statistics.

Everything here is synchronous SQL; the API calls it from its thread pool and the sync workers through
`asyncio.to_thread`. Leases make the queue safe for several workers: a claimed row is invisible to other
claimers until its lease runs out, and a worker that dies simply lets it run out.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields
from typing import Any, Final, Literal

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    Select,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from ferry.db.sync_models import STAT_BUCKET_SECONDS, sync_events, sync_stats, sync_tasks
from ferry.errors import UsageError

SYNCHRONIZING = "SYNCHRONIZING"
STOPPED = "STOPPED"
PENDING = "pending"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SyncTaskSpec:
    """Everything about a sync task except its credentials (which are stored encrypted, apart)."""

    src_cloud_type: str
    src_region: str
    src_bucket: str
    dst_region: str
    dst_bucket: str
    dst_cloud_type: str = "HuaweiCloud"  # OMS always writes into OBS; overrides may point it anywhere
    description: str | None = None
    enable_metadata_migration: bool = False
    enable_restore: bool = False
    dst_storage_policy: str = "STANDARD"
    app_id: str | None = None
    consistency_check: str = "size_last_modified"
    object_overwrite_mode: str = "SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE"
    src_crypto_type: str = "DEFAULT"
    src_kms_key_id: str | None = None
    dst_crypto_type: str = "DEFAULT"
    dst_kms_key_id: str | None = None
    cdn_domain: str | None = None
    cdn_protocol: str | None = None
    cdn_authentication_type: str | None = None
    cdn_crypto_type: str | None = None
    cdn_kms_key_id: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> SyncTaskSpec:
        data = json.loads(raw)
        # Unknown keys (written by a newer version) are dropped rather than failing the whole task.
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True, slots=True)
class SyncTaskRow:
    id: str
    project_id: str
    status: str
    spec: SyncTaskSpec
    secrets: str = ""  # the SecretBox token; only the backend opener decrypts it
    generation: int = 1
    created_at: float = 0.0
    last_start_at: float = 0.0
    reconciled_at: float | None = None
    last_error: str | None = None
    error_code: str | None = None  # why the workers stopped it (with error_msg), until it is started again
    error_msg: str | None = None

    def __repr__(self) -> str:
        # The token is ciphertext, but there is no reason to spread it through logs either.
        return f"SyncTaskRow(id={self.id!r}, status={self.status!r}, generation={self.generation})"


@dataclass(frozen=True, slots=True)
class ClaimedEvent:
    task_id: str
    key: str
    version: int
    attempts: int
    received_at: float


# release: the work was not done (task stopped meanwhile) — only the lease is given back.
Outcome = Literal["success", "skip", "failed", "retry", "release"]


@dataclass(frozen=True, slots=True)
class EventOutcome:
    """What became of one claimed event (`version` = the claimed one), or of a reconciliation copy
    (`version` None: there is no event row, only statistics — and for a retry, a new pending row)."""

    task_id: str
    key: str
    version: int | None
    outcome: Outcome
    size: int = 0
    reason: str | None = None
    next_attempt_at: float | None = None


@dataclass(frozen=True, slots=True)
class StatTotals:
    request: int = 0
    success: int = 0
    failure: int = 0
    skip: int = 0
    size: int = 0


@dataclass(frozen=True, slots=True)
class KeyProblem:
    key: str
    state: str  # pending (will be retried) | failed (gave up)
    attempts: int
    reason: str | None
    updated_at: float
    next_attempt_at: float


STAT_COLUMNS = ("request", "success", "failure", "skip", "size")


@dataclass(frozen=True, slots=True)
class PendingLimits:
    """At most this many pending keys per sync task and per project (events a caller may queue)."""

    per_task: int
    per_project: int


class QueueFullError(UsageError):
    """Accepting the keys would take the task's or the project's pending events past its limit."""

    code = "FERRY.0429"

    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"a {scope} may have at most {limit} pending events and these would take it past "
                         "that; retry once some are synced")
        self.scope = scope
        self.limit = limit


@dataclass(slots=True)
class _PendingEvents:
    """One create_sync_events call waiting for the group commit that will carry it."""

    task_id: str
    keys: list[str]  # distinct keys
    received: int  # keys as sent, repeats included (REQUEST counts what was received)
    now: float
    limits: PendingLimits | None = None
    done: bool = False
    error: BaseException | None = None


class _Room:
    """Pending keys per task and per project, for the event limits: counted at most once a second (the
    count reads an index range as long as the queue) and, in between, the last count plus every key admitted
    since. Keys the workers finish only make that estimate high, so it never lets a queue past its limit;
    a refusal waits at most a second to see the room they made. Used under the repo's commit lock."""

    REFRESH_SECONDS: Final = 1.0
    _FORGET_AFTER: Final = 10_000  # entries of deleted tasks are dropped now and then

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._owner: dict[str, str | None] = {}
        self._counts: dict[tuple[str, str], tuple[int, float]] = {}  # (scope, id) -> (estimate, counted at)

    def admit(self, conn: Connection, item: _PendingEvents) -> bool:
        """True when the item's keys fit (they are then counted); else False, with `item.error` set."""
        limits = item.limits
        if limits is None:
            return True
        e, t = sync_events, sync_tasks
        if len(self._owner) > self._FORGET_AFTER:
            self._owner.clear()
            self._counts.clear()
        if item.task_id not in self._owner:
            self._owner[item.task_id] = conn.execute(select(t.c.project_id).where(t.c.id == item.task_id)).scalar()
        project = self._owner[item.task_id]
        if project is None:
            return True  # the task is gone: writing its events fails the way it always did
        n = len(item.keys)
        scopes = (
            (("task", item.task_id), limits.per_task, "sync task",
             select(literal(1)).select_from(e).where(e.c.task_id == item.task_id, e.c.state == PENDING)),
            (("project", project), limits.per_project, "project",
             # IN rather than a join, so that the (task_id, state) index serves each of the project's tasks.
             select(literal(1)).select_from(e).where(
                 e.c.task_id.in_(select(t.c.id).where(t.c.project_id == project)), e.c.state == PENDING)),
        )
        now = self._clock()
        estimates = []
        for scope, limit, name, rows in scopes:
            estimate, counted = self._counts.get(scope, (0, -self.REFRESH_SECONDS))
            if now - counted >= self.REFRESH_SECONDS:
                estimate, counted = _count_upto(conn, rows, limit + 1), now
                self._counts[scope] = (estimate, counted)
            if estimate + n > limit:
                item.error = QueueFullError(name, limit)
                return False
            estimates.append((scope, estimate, counted))
        for scope, estimate, counted in estimates:
            self._counts[scope] = (estimate + n, counted)
        return True


def _count_upto(conn: Connection, rows: Select[Any], cap: int) -> int:
    """How many rows `rows` has, counting no further than `cap` (enough to compare with a limit)."""
    return int(conn.execute(select(func.count()).select_from(rows.limit(cap).subquery())).scalar_one())


class _Statements:
    """The hot-path statements, built once per dialect: constructing an upsert's `excluded` alias and
    hashing a fresh statement's cache key cost milliseconds of CPU per call, at hundreds of calls a second."""

    def __init__(self, pg: bool) -> None:
        ins = postgresql.insert if pg else sqlite.insert
        e, t = sync_events, sync_tasks
        b = bindparam
        stats = ins(sync_stats)
        self.add_stats = stats.on_conflict_do_update(
            index_elements=["task_id", "bucket_start"],
            set_={c: getattr(sync_stats.c, c) + getattr(stats.excluded, c) for c in STAT_COLUMNS},
        )
        events = ins(e)
        self.upsert_events = events.on_conflict_do_update(
            index_elements=["task_id", "key"],
            set_={
                "version": e.c.version + 1,
                "state": PENDING,
                "attempts": 0,
                "next_attempt_at": events.excluded.next_attempt_at,
                # A key that had given up starts a fresh story; one still pending keeps its first acceptance.
                "received_at": case((e.c.state == FAILED, events.excluded.received_at), else_=e.c.received_at),
                "updated_at": events.excluded.updated_at,
            },
        )
        self.insert_event_if_absent = ins(e).on_conflict_do_nothing(index_elements=["task_id", "key"])
        self.get_task = select(t).where(t.c.id == b("b_id"))
        self.get_project_task = select(t).where(t.c.id == b("b_id"), t.c.project_id == b("b_project"))
        free = or_(e.c.lease_until.is_(None), e.c.lease_until < b("b_now"))
        self.claim_select = (
            select(e.c.task_id, e.c.key, e.c.version, e.c.attempts, e.c.received_at)
            .join(t, t.c.id == e.c.task_id)
            .where(e.c.state == PENDING, e.c.next_attempt_at <= b("b_now"), free, t.c.status == SYNCHRONIZING)
            .order_by(e.c.next_attempt_at)
            .limit(b("b_limit", type_=Integer))
            .with_for_update(skip_locked=True, of=e)
        )
        this = and_(e.c.task_id == b("b_task"), e.c.key == b("b_key"))
        same = and_(this, e.c.version == b("b_version"))
        released = {"lease_owner": None, "lease_until": None}
        # Conditional, so that two claimers racing for one row cannot both win it.
        self.lease = update(e).where(this, free).values(lease_owner=b("b_owner"), lease_until=b("b_until"))
        self.release = update(e).where(this).values(**released)
        self.delete_same = delete(e).where(same)
        self.delete_failed = delete(e).where(this, e.c.state == FAILED)
        self.give_up = update(e).where(same).values(
            state=FAILED, attempts=e.c.attempts + 1, last_reason=b("b_reason"), updated_at=b("b_now"), **released
        )
        self.retry_later = update(e).where(same).values(
            attempts=e.c.attempts + 1, last_reason=b("b_reason"), next_attempt_at=b("b_next"),
            updated_at=b("b_now"), **released,
        )
        self.alive = select(t.c.id).where(t.c.id.in_(b("b_ids", expanding=True)))
        self.next_due = (
            select(func.min(e.c.next_attempt_at)).join(t, t.c.id == e.c.task_id)
            .where(e.c.state == PENDING, e.c.lease_owner.is_(None), t.c.status == SYNCHRONIZING)
        )


_statements = {False: _Statements(False), True: _Statements(True)}

class _WriterLock:
    """Serialises this engine's sync writes across threads and, through an advisory lock file beside the
    database, across processes (the API and the sync workers may be two).

    SQLite lets one writer in at a time and makes the others poll with growing sleeps (up to 100 ms each),
    so under a burst of API requests a write could wait far longer than the writes ahead of it take. Queuing
    on a lock hands the database over as soon as it is free.
    """

    def __init__(self, path: str | None) -> None:
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        if path:
            with contextlib.suppress(OSError):
                self._fd = os.open(path + ".write-lock", os.O_RDWR | os.O_CREAT, 0o600)

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        if self._fd is not None:
            # Without advisory locks on this filesystem, SQLite's own locking still keeps it correct.
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()


_sqlite_locks: weakref.WeakKeyDictionary[Engine, _WriterLock] = weakref.WeakKeyDictionary()
_sqlite_locks_guard = threading.Lock()


def _sqlite_write_lock(engine: Engine) -> _WriterLock:
    """The one writer lock of a SQLite engine (every SyncRepo on it shares it)."""
    with _sqlite_locks_guard:
        lock = _sqlite_locks.get(engine)
        if lock is None:
            database = engine.url.database
            file_db = database not in (None, "", ":memory:") and not str(database).startswith("file:")
            lock = _sqlite_locks[engine] = _WriterLock(str(database) if file_db else None)
        return lock


def bucket_of(epoch_seconds: float) -> int:
    return int(epoch_seconds // STAT_BUCKET_SECONDS) * STAT_BUCKET_SECONDS


def _row(r: Any) -> SyncTaskRow:
    return SyncTaskRow(
        id=r.id, project_id=r.project_id, status=r.status, spec=SyncTaskSpec.from_json(r.spec),
        secrets=r.secrets, generation=r.generation, created_at=r.created_at, last_start_at=r.last_start_at,
        reconciled_at=r.reconciled_at, last_error=r.last_error, error_code=r.error_code, error_msg=r.error_msg,
    )


class SyncRepo:
    """All reads and writes of sync-task state."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pg = engine.dialect.name == "postgresql"
        self._sqlite = engine.dialect.name == "sqlite"
        self._q = _statements[self._pg]
        self._write_lock: AbstractContextManager[Any] = _sqlite_write_lock(engine) if self._sqlite else nullcontext()
        self._pending: list[_PendingEvents] = []
        self._pending_guard = threading.Lock()
        # The group-commit leader's lock: SQLite's engine-wide write lock, or one of our own for PostgreSQL.
        self._commit_lock: AbstractContextManager[Any] = (
            _sqlite_write_lock(engine) if self._sqlite else threading.Lock()
        )
        self._room = _Room()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        with self._write_lock, self.engine.begin() as conn:
            self._immediate(conn)
            yield conn

    def _immediate(self, conn: Connection) -> None:
        # SQLite: take the write lock before the first read. A transaction that reads and then writes would
        # otherwise fail outright (SQLITE_BUSY_SNAPSHOT, no waiting) whenever another process — the API and
        # the sync workers may run in two — committed in between.
        if self._sqlite:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    # -- helpers -------------------------------------------------------------------------------------
    def _add_stats(self, conn: Connection, task_id: str, bucket: int, **counts: int) -> None:
        values = {c: counts.get(c, 0) for c in STAT_COLUMNS}
        if any(values.values()):
            conn.execute(self._q.add_stats, {"task_id": task_id, "bucket_start": bucket, **values})

    def _lock_project(self, conn: Connection, project_id: str) -> None:
        # PostgreSQL: serialise quota checks of one project (READ COMMITTED would let two creates both pass).
        # SQLite needs nothing: the INSERT before the count takes the database's single write lock.
        if self._pg:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(project_id.encode())})

    # -- tasks ---------------------------------------------------------------------------------------
    def create_task(
        self, task_id: str, project_id: str, spec: SyncTaskSpec, secrets: str, now: float, limit: int
    ) -> bool:
        """Insert a SYNCHRONIZING task; False (nothing written) when the project already has `limit`."""
        with self._begin() as conn:
            self._lock_project(conn, project_id)
            conn.execute(
                insert(sync_tasks).values(
                    id=task_id, project_id=project_id, status=SYNCHRONIZING, spec=spec.to_json(), secrets=secrets,
                    options="{}", generation=1, created_at=now, last_start_at=now, updated_at=now,
                )
            )
            count = conn.execute(
                select(func.count()).select_from(sync_tasks).where(sync_tasks.c.project_id == project_id)
            ).scalar_one()
            if count > limit:
                conn.rollback()
                return False
        return True

    def get_task(self, task_id: str, project_id: str | None = None) -> SyncTaskRow | None:
        with self.engine.connect() as conn:
            if project_id is None:
                r = conn.execute(self._q.get_task, {"b_id": task_id}).first()
            else:
                r = conn.execute(self._q.get_project_task, {"b_id": task_id, "b_project": project_id}).first()
        return _row(r) if r is not None else None

    def list_tasks(
        self, project_id: str, status: str | None, limit: int, offset: int
    ) -> tuple[list[SyncTaskRow], int]:
        cond = sync_tasks.c.project_id == project_id
        if status is not None:
            cond = and_(cond, sync_tasks.c.status == status)
        with self.engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(sync_tasks).where(cond)).scalar_one()
            rows = conn.execute(
                select(sync_tasks).where(cond).order_by(sync_tasks.c.created_at.desc(), sync_tasks.c.id)
                .limit(limit).offset(offset)
            ).all()
        return [_row(r) for r in rows], int(count)

    def active_tasks(self) -> list[SyncTaskRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(sync_tasks).where(sync_tasks.c.status == SYNCHRONIZING)).all()
        return [_row(r) for r in rows]

    def stop_task(self, project_id: str, task_id: str, now: float) -> bool:
        """SYNCHRONIZING -> STOPPED; False when the task is not SYNCHRONIZING. Pending events are kept."""
        with self._begin() as conn:
            res = conn.execute(
                update(sync_tasks)
                .where(sync_tasks.c.id == task_id, sync_tasks.c.project_id == project_id,
                       sync_tasks.c.status == SYNCHRONIZING)
                .values(status=STOPPED, generation=sync_tasks.c.generation + 1, updated_at=now,
                        reconcile_owner=None, reconcile_lease_until=None)
            )
            return bool(res.rowcount)

    def fail_task(self, task_id: str, generation: int, code: str, message: str, now: float) -> bool:
        """SYNCHRONIZING -> STOPPED because the task as a whole cannot work, with the reason; only the
        generation that failed (a task started meanwhile with other keys goes on). Pending events are kept."""
        with self._begin() as conn:
            res = conn.execute(
                update(sync_tasks)
                .where(sync_tasks.c.id == task_id, sync_tasks.c.generation == generation,
                       sync_tasks.c.status == SYNCHRONIZING)
                .values(status=STOPPED, generation=sync_tasks.c.generation + 1, updated_at=now,
                        reconcile_owner=None, reconcile_lease_until=None, error_code=code, error_msg=message)
            )
            return bool(res.rowcount)

    def start_task(self, project_id: str, task_id: str, secrets: str, now: float) -> bool:
        """STOPPED -> SYNCHRONIZING with fresh credentials; False when the task is not STOPPED.

        Reconciliation is due at once (whatever changed while stopped gets copied), and keys that had given
        up are retried: their failure may well have been the credentials that were just replaced.
        """
        with self._begin() as conn:
            res = conn.execute(
                update(sync_tasks)
                .where(sync_tasks.c.id == task_id, sync_tasks.c.project_id == project_id,
                       sync_tasks.c.status == STOPPED)
                .values(status=SYNCHRONIZING, secrets=secrets, generation=sync_tasks.c.generation + 1,
                        last_start_at=now, updated_at=now, reconciled_at=None, last_error=None, error_code=None,
                        error_msg=None)
            )
            if not res.rowcount:
                return False
            conn.execute(
                update(sync_events)
                .where(sync_events.c.task_id == task_id, sync_events.c.state == FAILED)
                .values(state=PENDING, attempts=0, next_attempt_at=now, updated_at=now)
            )
            return True

    def delete_task(self, project_id: str, task_id: str) -> bool:
        with self._begin() as conn:
            exists = conn.execute(
                select(sync_tasks.c.id).where(sync_tasks.c.id == task_id, sync_tasks.c.project_id == project_id)
            ).first()
            if exists is None:
                return False
            # Explicit, not only ON DELETE CASCADE: a connection without foreign-key enforcement must not
            # leave a queue behind that a worker would keep trying.
            conn.execute(delete(sync_events).where(sync_events.c.task_id == task_id))
            conn.execute(delete(sync_stats).where(sync_stats.c.task_id == task_id))
            conn.execute(delete(sync_tasks).where(sync_tasks.c.id == task_id))
            return True

    def count_tasks(self, project_id: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(
                select(func.count()).select_from(sync_tasks).where(sync_tasks.c.project_id == project_id)
            ).scalar_one())

    def set_notify_token_hash(self, project_id: str, task_id: str, digest: str, now: float) -> bool:
        with self._begin() as conn:
            res = conn.execute(
                update(sync_tasks).where(sync_tasks.c.id == task_id, sync_tasks.c.project_id == project_id)
                .values(notify_token_hash=digest, updated_at=now)
            )
            return bool(res.rowcount)

    def task_by_notify_hash(self, task_id: str, digest: str) -> SyncTaskRow | None:
        with self.engine.connect() as conn:
            r = conn.execute(
                select(sync_tasks).where(sync_tasks.c.id == task_id, sync_tasks.c.notify_token_hash == digest)
            ).first()
        return _row(r) if r is not None else None

    # -- the event queue -----------------------------------------------------------------------------
    def enqueue(self, task_id: str, keys: Sequence[str], now: float, *, durable: bool = True,
                limits: PendingLimits | None = None) -> None:
        """Record events for `keys` (one row per key, coalesced) and count them as REQUEST; returns once they
        are committed.

        With `durable`, SQLite syncs the commit to disk (synchronous=FULL), so an acknowledged event survives
        even a power cut, not only a process crash. That sync costs milliseconds, so concurrent callers share
        it (group commit): whoever gets the write lock commits every request waiting at that moment.
        With `limits`, keys that would take the task's or its project's pending events past them are refused
        (QueueFullError), all of them: a caller learns that none was queued. A key already pending counts too.
        """
        item = _PendingEvents(task_id, list(dict.fromkeys(keys)), len(keys), now, limits)
        with self._pending_guard:
            self._pending.append(item)
        with self._commit_lock:
            if not item.done:
                with self._pending_guard:
                    batch, self._pending = self._pending, []
                self._commit_events(batch, durable)
        if item.error is not None:
            raise item.error

    def enqueue_batch(self, requests: Sequence[tuple[str, Sequence[str]]], now: float, *, durable: bool = True,
                      limits: PendingLimits | None = None) -> list[BaseException | None]:
        """`enqueue` for several requests at once (task id, keys), in one durable commit; one outcome per
        request: None when its events are committed, else the error that refused them alone."""
        items = [_PendingEvents(task_id, list(dict.fromkeys(keys)), len(keys), now, limits)
                 for task_id, keys in requests]
        with self._commit_lock:
            with self._pending_guard:
                # Requests that came through `enqueue` meanwhile ride along (their callers wait on this lock).
                items += self._pending
                self._pending = []
            self._commit_events(items, durable)
        return [item.error for item in items[:len(requests)]]

    def _commit_events(self, batch: list[_PendingEvents], durable: bool) -> None:
        full = durable and self._sqlite
        with self.engine.connect() as conn:
            if full:
                conn.exec_driver_sql("PRAGMA synchronous=FULL")
            try:
                try:
                    self._immediate(conn)
                    for item in batch:
                        if self._room.admit(conn, item):
                            self._write_events(conn, item)
                    conn.commit()
                except Exception:
                    conn.rollback()
                    # One bad request (its task deleted a moment ago, say) must not fail the others: retry
                    # them one by one, each in its own transaction.
                    for item in batch:
                        item.error = None
                        try:
                            self._immediate(conn)
                            if self._room.admit(conn, item):
                                self._write_events(conn, item)
                            conn.commit()
                        except Exception as exc:
                            conn.rollback()
                            item.error = exc
            finally:
                for item in batch:
                    item.done = True
                if full:
                    conn.rollback()
                    conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
                    conn.commit()

    def _write_events(self, conn: Connection, item: _PendingEvents) -> None:
        now = item.now
        conn.execute(self._q.upsert_events, [
            {"task_id": item.task_id, "key": k, "state": PENDING, "version": 1, "attempts": 0, "received_at": now,
             "next_attempt_at": now, "updated_at": now}
            for k in item.keys
        ])
        self._add_stats(conn, item.task_id, bucket_of(now), request=item.received)

    def release_leases(self, owner_prefix: str) -> int:
        """Free every lease held by owners named `owner_prefix…` (a restarted node reclaiming its own)."""
        with self._begin() as conn:
            res = conn.execute(
                update(sync_events).where(sync_events.c.lease_owner.startswith(owner_prefix, autoescape=True))
                .values(lease_owner=None, lease_until=None)
            )
            conn.execute(
                update(sync_tasks).where(sync_tasks.c.reconcile_owner.startswith(owner_prefix, autoescape=True))
                .values(reconcile_owner=None, reconcile_lease_until=None)
            )
            return int(res.rowcount)

    def lease_owners(self, owner_prefix: str) -> list[str]:
        """The owners named `owner_prefix…` that hold event leases now."""
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(
                select(sync_events.c.lease_owner).distinct()
                .where(sync_events.c.lease_owner.startswith(owner_prefix, autoescape=True)))]

    def claim(self, owner: str, now: float, lease_seconds: float, limit: int) -> list[ClaimedEvent]:
        """Lease up to `limit` due events of SYNCHRONIZING tasks to `owner`, oldest due first."""
        claimed: list[ClaimedEvent] = []
        with self._begin() as conn:
            rows = conn.execute(self._q.claim_select, {"b_now": now, "b_limit": limit}).all()
            for r in rows:
                res = conn.execute(self._q.lease, {"b_task": r.task_id, "b_key": r.key, "b_now": now,
                                                   "b_owner": owner, "b_until": now + lease_seconds})
                if res.rowcount:
                    claimed.append(ClaimedEvent(r.task_id, r.key, r.version, r.attempts, r.received_at))
        return claimed

    def next_due(self) -> float | None:
        """When the earliest pending, unleased event of a running task becomes due (None: queue empty)."""
        with self.engine.connect() as conn:
            value = conn.execute(self._q.next_due).scalar()
        return float(value) if value is not None else None

    def renew(self, owner: str, until: float) -> None:
        with self._begin() as conn:
            conn.execute(update(sync_events).where(sync_events.c.lease_owner == owner).values(lease_until=until))

    def complete(self, outcomes: Sequence[EventOutcome], now: float) -> None:
        """Apply a batch of outcomes and their statistics in one transaction."""
        if not outcomes:
            return
        bucket = bucket_of(now)
        with self._begin() as conn:
            ids = sorted({o.task_id for o in outcomes})
            alive = set(conn.execute(self._q.alive, {"b_ids": ids}).scalars())
            totals: dict[str, dict[str, int]] = {}
            for o in outcomes:
                if o.task_id not in alive:
                    continue  # deleted while the copy ran: nothing to record
                counted = self._apply(conn, o, now)
                t = totals.setdefault(o.task_id, dict.fromkeys(STAT_COLUMNS, 0))
                if not counted:
                    continue
                if o.outcome == "success":
                    t["success"] += 1
                    t["size"] += o.size
                elif o.outcome == "skip":
                    t["skip"] += 1
                elif o.outcome == "failed":
                    t["failure"] += 1
            for task_id, counts in totals.items():
                self._add_stats(conn, task_id, bucket, **counts)

    def _apply(self, conn: Connection, o: EventOutcome, now: float) -> bool:
        """Apply one outcome; False when it must not be counted in the statistics."""
        q = self._q
        key = {"b_task": o.task_id, "b_key": o.key}
        if o.version is None:
            if o.outcome in ("retry", "failed"):
                # A reconciliation copy that failed joins the event queue, so it is retried and listed.
                res = conn.execute(q.insert_event_if_absent, {
                    "task_id": o.task_id, "key": o.key, "state": PENDING if o.outcome == "retry" else FAILED,
                    "version": 1, "attempts": 1, "received_at": now, "next_attempt_at": o.next_attempt_at or now,
                    "last_reason": o.reason, "updated_at": now,
                })
                # Every pass meets a key that cannot be copied (archived, say) again: count its failure once.
                return bool(res.rowcount)
            if o.outcome == "success":
                # In sync now: a failure recorded for it earlier is history.
                conn.execute(q.delete_failed, key)
            return True
        if o.outcome == "release":
            conn.execute(q.release, key)
            return False
        same = {**key, "b_version": o.version}
        if o.outcome in ("success", "skip"):
            res = conn.execute(q.delete_same, same)
        elif o.outcome == "failed":
            res = conn.execute(q.give_up, {**same, "b_reason": o.reason, "b_now": now})
        else:
            res = conn.execute(q.retry_later, {**same, "b_reason": o.reason, "b_now": now,
                                               "b_next": o.next_attempt_at or now})
        if not res.rowcount:
            # A newer event for the key arrived while we worked: it stays pending (due now) for another pass.
            conn.execute(q.release, key)
        return o.outcome != "retry"

    def problems(self, project_id: str, task_id: str, limit: int, offset: int) -> tuple[list[KeyProblem], int]:
        """Keys that failed at least once: still retrying (pending) or given up (failed), newest first."""
        e = sync_events
        cond = and_(e.c.task_id == task_id, e.c.last_reason.is_not(None),
                    e.c.task_id.in_(select(sync_tasks.c.id).where(sync_tasks.c.project_id == project_id)))
        with self.engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(e).where(cond)).scalar_one()
            rows = conn.execute(
                select(e.c.key, e.c.state, e.c.attempts, e.c.last_reason, e.c.updated_at, e.c.next_attempt_at)
                .where(cond).order_by(e.c.updated_at.desc(), e.c.key).limit(limit).offset(offset)
            ).all()
        return [KeyProblem(r.key, r.state, r.attempts, r.last_reason, r.updated_at, r.next_attempt_at)
                for r in rows], int(count)

    def given_up(self, task_id: str, after: str | None, limit: int) -> list[KeyProblem]:
        """A page of the task's keys that failed for good, in key order, after `after`."""
        e = sync_events
        cond = [e.c.task_id == task_id, e.c.state == FAILED]
        if after is not None:
            cond.append(e.c.key > after)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(e.c.key, e.c.state, e.c.attempts, e.c.last_reason, e.c.updated_at, e.c.next_attempt_at)
                .where(*cond).order_by(e.c.key).limit(limit)
            ).all()
        return [KeyProblem(r.key, r.state, r.attempts, r.last_reason, r.updated_at, r.next_attempt_at)
                for r in rows]

    def pending_count(self, task_id: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(
                select(func.count()).select_from(sync_events)
                .where(sync_events.c.task_id == task_id, sync_events.c.state == PENDING)
            ).scalar_one())

    # -- reconciliation ------------------------------------------------------------------------------
    def claim_reconcile(self, task_id: str, owner: str, now: float, interval: float, lease_seconds: float) -> bool:
        """Take the right to reconcile `task_id` now, if it is due and nobody holds it."""
        t = sync_tasks
        due = or_(t.c.reconciled_at.is_(None), t.c.reconciled_at <= now - interval)
        free = or_(t.c.reconcile_lease_until.is_(None), t.c.reconcile_lease_until < now)
        with self._begin() as conn:
            res = conn.execute(
                update(t).where(t.c.id == task_id, t.c.status == SYNCHRONIZING, due, free)
                .values(reconcile_owner=owner, reconcile_lease_until=now + lease_seconds)
            )
            return bool(res.rowcount)

    def renew_reconcile(self, task_id: str, owner: str, until: float) -> None:
        with self._begin() as conn:
            conn.execute(
                update(sync_tasks).where(sync_tasks.c.id == task_id, sync_tasks.c.reconcile_owner == owner)
                .values(reconcile_lease_until=until)
            )

    def finish_reconcile(self, task_id: str, owner: str, now: float, error: str | None) -> None:
        with self._begin() as conn:
            conn.execute(
                update(sync_tasks).where(sync_tasks.c.id == task_id, sync_tasks.c.reconcile_owner == owner)
                .values(reconciled_at=now, reconcile_owner=None, reconcile_lease_until=None, last_error=error)
            )

    def request_reconcile(self, task_id: str) -> None:
        with self._begin() as conn:
            conn.execute(update(sync_tasks).where(sync_tasks.c.id == task_id).values(reconciled_at=None))

    # -- statistics ----------------------------------------------------------------------------------
    def stat_totals(self, task_id: str, start: float, end: float) -> StatTotals:
        """Sums over the buckets that start in [start, end)."""
        s = sync_stats
        with self.engine.connect() as conn:
            r = conn.execute(
                select(*(func.coalesce(func.sum(getattr(s.c, c)), 0) for c in STAT_COLUMNS))
                .where(s.c.task_id == task_id, s.c.bucket_start >= start, s.c.bucket_start < end)
            ).one()
        return StatTotals(*(int(v) for v in r))

    def stat_buckets(self, task_id: str, start: float, end: float) -> Iterable[tuple[int, StatTotals]]:
        """(bucket_start, counts) of every non-empty bucket that starts in [start, end), ascending."""
        s = sync_stats
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(s.c.bucket_start, *(getattr(s.c, c) for c in STAT_COLUMNS))
                .where(s.c.task_id == task_id, s.c.bucket_start >= start, s.c.bucket_start < end)
                .order_by(s.c.bucket_start)
            ).all()
        return [(int(r[0]), StatTotals(*(int(v) for v in r[1:]))) for r in rows]
