"""Migration-task rows: insert, pages, conditional status changes, leases and progress writes."""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final

from sqlalchemy import Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from ferry.db.api_models import migration_tasks as t
from ferry.db.dbclock import db_epoch
from ferry.db.models import jobs

WAITING, RUNNING, PAUSED, FAILED, SUCCEEDED, RETRYING, PAUSING = 1, 2, 3, 4, 5, 6, 7
# Statuses in which a runner owns (or should own) the task: a dead owner's tasks are taken over.
ACTIVE: Final = (RUNNING, RETRYING, PAUSING)
_ID_LOW: Final = 10**14
# OMS ids are 15-digit int64s; staying below 2**53 keeps them exact in JavaScript clients too.
_ID_SPAN: Final = 2**53 - _ID_LOW


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One migration task as stored (JSON columns decoded, `secrets` still encrypted)."""

    id: int
    project_id: str
    group_id: str | None
    group_type: str
    name: str
    description: str
    task_type: str
    status: int
    priority: int
    src_spec: dict[str, Any]
    dst_spec: dict[str, Any]
    options: dict[str, Any]
    bandwidth_policy: list[dict[str, Any]]
    secrets: str | None
    job_id: str | None
    run_mode: str
    total_num: int
    total_size: int
    success_num: int
    skip_num: int
    fail_num: int
    size_only_num: int
    complete_size: int
    real_size: int
    restoring_num: int
    speed: int
    left_time: int | None
    progress: float
    is_query_over: int
    created_at: float
    started_at: float | None
    run_started_at: float | None
    elapsed: float
    finished_at: float | None
    updated_at: float
    error_code: str | None
    error_msg: str | None
    records: dict[str, Any] | None
    lease_owner: str | None
    lease_expires: float | None
    attempts: int
    retry_at: float | None
    deleted_at: float | None
    smn_result: dict[str, Any] | None

    @classmethod
    def from_mapping(cls, row: Any) -> TaskRow:
        values = dict(row)
        for name in ("src_spec", "dst_spec", "options", "bandwidth_policy"):
            values[name] = json.loads(values[name])
        for name in ("records", "smn_result"):
            values[name] = json.loads(values[name]) if values[name] else None
        return cls(**{f.name: values[f.name] for f in fields(cls)})


_JSON_COLUMNS: Final = frozenset({"src_spec", "dst_spec", "options", "bandwidth_policy", "records", "smn_result"})


def _encode(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v, ensure_ascii=False) if k in _JSON_COLUMNS and v is not None else v)
            for k, v in values.items()}


def owner_id() -> str:
    """A lease owner name `host/pid/random`: a runner on the same host can tell when its owner died."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


def owner_is_dead(owner: str, host: str | None = None) -> bool:
    """True only when `owner` was a process on this host that no longer exists."""
    parts = owner.split("/")
    if len(parts) != 3 or parts[0] != (host or socket.gethostname()) or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class TaskRepo:
    """All SQL of migration tasks; every state change is a conditional UPDATE so races resolve in the DB."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._now = db_epoch(engine.dialect.name)

    def db_time(self, later: float = 0.0) -> ColumnElement[float]:
        """`later` seconds from now by the database's clock, as a value to write (`retry_at`)."""
        return self._now + later

    # -- API side ----------------------------------------------------------------------------------

    def insert(self, values: Mapping[str, Any]) -> int:
        """Insert a task under a fresh random id and return the id."""
        for _ in range(10):
            task_id = _ID_LOW + secrets.randbelow(_ID_SPAN)
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(t).values(id=task_id, **_encode(values)))
                return task_id
            except IntegrityError:
                continue
        raise RuntimeError("could not allocate a task id")

    def get(self, task_id: int, project_id: str | None = None) -> TaskRow | None:
        cond = [t.c.id == task_id, t.c.deleted_at.is_(None)]
        if project_id is not None:
            cond.append(t.c.project_id == project_id)
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(*cond)).mappings().first()
        return TaskRow.from_mapping(row) if row else None

    def page(self, project_id: str, *, group_id: str | None, status: int | None, name: str | None,
             limit: int, offset: int) -> tuple[list[TaskRow], int]:
        cond = [t.c.project_id == project_id, t.c.deleted_at.is_(None)]
        if group_id is not None:
            cond.append(t.c.group_id == group_id)
        if status is not None:
            cond.append(t.c.status == status)
        if name:
            escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            cond.append(t.c.name.like(f"%{escaped}%", escape="\\"))
        q = select(t).where(*cond).order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            rows = [TaskRow.from_mapping(r) for r in conn.execute(q).mappings()]
            count = conn.execute(select(func.count()).select_from(t).where(*cond)).scalar_one()
        return rows, int(count)

    def ids_in_group(self, project_id: str, group_id: str) -> list[int]:
        q = select(t.c.id).where(t.c.project_id == project_id, t.c.group_id == group_id, t.c.deleted_at.is_(None))
        with self.engine.connect() as conn:
            return [int(r[0]) for r in conn.execute(q)]

    def count_created_since(self, project_id: str, since: float) -> int:
        # Tombstones count: deleting tasks must not reset the daily quota.
        q = select(func.count()).select_from(t).where(t.c.project_id == project_id, t.c.created_at >= since)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def count_status(self, project_id: str, status: int) -> int:
        q = select(func.count()).select_from(t).where(
            t.c.project_id == project_id, t.c.status == status, t.c.deleted_at.is_(None))
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def transition(self, task_id: int, project_id: str | None, allowed: Collection[int],
                   values: Mapping[str, Any]) -> bool:
        """Apply `values` only if the task exists (not deleted) and its status is in `allowed`."""
        cond = [t.c.id == task_id, t.c.deleted_at.is_(None), t.c.status.in_(list(allowed))]
        if project_id is not None:
            cond.append(t.c.project_id == project_id)
        with self.engine.begin() as conn:
            result = conn.execute(update(t).where(*cond).values(updated_at=time.time(), **_encode(values)))
        return bool(result.rowcount)

    def update_many(self, ids: Sequence[int], project_id: str, allowed: Collection[int],
                    values: Mapping[str, Any]) -> int:
        if not ids:
            return 0
        with self.engine.begin() as conn:
            result = conn.execute(
                update(t)
                .where(t.c.id.in_(list(ids)), t.c.project_id == project_id, t.c.deleted_at.is_(None),
                       t.c.status.in_(list(allowed)))
                .values(updated_at=time.time(), **_encode(values))
            )
        return int(result.rowcount)

    def soft_delete(self, task_id: int, project_id: str, allowed: Collection[int]) -> TaskRow | None:
        """Tombstone the task if its status allows, wipe its secrets, drop its job; the row before, or None."""
        row = self.get(task_id, project_id)
        if row is None or row.status not in allowed:
            return None
        now = time.time()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(t)
                .where(t.c.id == task_id, t.c.deleted_at.is_(None), t.c.status.in_(list(allowed)))
                .values(deleted_at=now, updated_at=now, secrets=None, job_id=None)
            )
            if not result.rowcount:
                return None
            if row.job_id is not None:
                # The per-object state is the bulk of a task's footprint; cascades drop objects and parts.
                conn.execute(delete(jobs).where(jobs.c.id == row.job_id))
        return row

    def reset_watermark(self, job_id: str) -> None:
        """Forget a job's listing watermark: the next run lists from the start (finished keys are skipped)."""
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(watermark=None))

    def purge_tombstones(self, before: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(t).where(t.c.deleted_at.is_not(None), t.c.created_at < before))

    # -- runner side -------------------------------------------------------------------------------

    def claim(self, owner: str, ttl: float, limit: int = 20, horizon: float | None = None,
              exclude: Collection[int] = ()) -> list[TaskRow]:
        """Take up to `limit` claimable tasks for `owner` (waiting, due retries, and active ones whose lease
        expired or whose owner died), highest priority first. Each claim is a compare-and-swap on the lease,
        so concurrent runners, here or on other hosts, never both win a task. Leases and retry times are on
        the database's clock; a retry due more than `horizon` seconds off (the longest wait ever set) was timed
        before that clock stepped back, and is due now. `exclude`: tasks the caller still runs (a run whose lease
        ran out while the database was away is not started a second time beside itself)."""
        now = time.time()
        db_now = self._now
        host = socket.gethostname()
        with self.engine.connect() as conn:
            owners = [r[0] for r in conn.execute(
                select(t.c.lease_owner).distinct()
                .where(t.c.status.in_(ACTIVE), t.c.lease_owner.is_not(None), t.c.lease_owner.like(f"{host}/%"))
            )]
        dead = [o for o in owners if owner_is_dead(o, host)]
        free = or_(t.c.lease_owner.is_(None), t.c.lease_expires < db_now, t.c.lease_owner.in_(dead))
        due = or_(t.c.retry_at.is_(None), t.c.retry_at <= db_now)
        if horizon is not None:
            due = or_(due, t.c.retry_at > db_now + horizon)
        cond = and_(
            t.c.deleted_at.is_(None),
            t.c.id.not_in(list(exclude)),
            or_(
                t.c.status == WAITING,
                and_(t.c.status == RETRYING, due),
                t.c.status.in_((RUNNING, PAUSING)),
            ),
            free,
        )
        q = (select(t.c.id, t.c.status, t.c.lease_owner, t.c.lease_expires).where(cond)
             .order_by(t.c.priority.desc(), t.c.created_at, t.c.id).limit(limit))
        with self.engine.connect() as conn:
            candidates = list(conn.execute(q))
        claimed: list[TaskRow] = []
        for task_id, status, seen_owner, seen_expires in candidates:
            if status == PAUSING:
                # Its runner died while pausing: the job is resumable as it is, so the pause simply completes.
                values: dict[str, Any] = {"status": PAUSED, "lease_owner": None, "lease_expires": None,
                                          "secrets": None, "speed": 0, "left_time": None}
            else:
                values = {"status": RUNNING, "lease_owner": owner, "lease_expires": db_now + ttl, "retry_at": None}
            with self.engine.begin() as conn:
                result = conn.execute(
                    update(t)
                    .where(t.c.id == task_id, t.c.status == status, t.c.deleted_at.is_(None),
                           t.c.lease_owner.is_not_distinct_from(seen_owner),
                           t.c.lease_expires.is_not_distinct_from(seen_expires))
                    .values(updated_at=now, **values)
                )
            if result.rowcount and status != PAUSING:
                row = self.get(task_id)
                if row is not None:
                    claimed.append(row)
        return claimed

    def expire_waiting(self, before: float, values: Mapping[str, Any]) -> list[int]:
        """Fail tasks left waiting, unclaimed and unchanged, since before `before`; the ids that were failed."""
        cond = [t.c.status == WAITING, t.c.deleted_at.is_(None), t.c.lease_owner.is_(None), t.c.updated_at < before]
        with self.engine.begin() as conn:
            ids = [r[0] for r in conn.execute(select(t.c.id).where(*cond).limit(500))]
            if ids:
                conn.execute(update(t).where(t.c.id.in_(ids), *cond)
                             .values(status=FAILED, updated_at=time.time(), **_encode(values)))
        return ids

    def heartbeat(self, task_id: int, owner: str, ttl: float, values: Mapping[str, Any]) -> TaskRow | None:
        """Write progress and extend the lease; the fresh row, or None when the lease was lost."""
        now = time.time()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(t)
                .where(t.c.id == task_id, t.c.lease_owner == owner, t.c.deleted_at.is_(None))
                .values(lease_expires=self._now + ttl, updated_at=now, **_encode(values))
            )
            if not result.rowcount:
                return None
            row = conn.execute(select(t).where(t.c.id == task_id)).mappings().first()
        return TaskRow.from_mapping(row) if row else None

    def release(self, task_id: int, owner: str, values: Mapping[str, Any]) -> bool:
        """Write the final state of a run and give up the lease (only if still ours)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(t)
                .where(t.c.id == task_id, t.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires=None, updated_at=time.time(), **_encode(values))
            )
        return bool(result.rowcount)
