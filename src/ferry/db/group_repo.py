"""Task-group rows: insert, pages, conditional status changes, the splitter's lease, and roll-ups of its tasks."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

from sqlalchemy import Engine, and_, func, insert, or_, select, update

from ferry.db.api_models import migration_tasks as mt
from ferry.db.dbclock import db_epoch
from ferry.db.group_models import task_groups as g
from ferry.db.task_repo import FAILED, PAUSED, PAUSING, RETRYING, RUNNING, WAITING, owner_is_dead

# GROUP_STATUS (§1.7)
(G_WAITING, G_EXECUTING, G_MONITORING, G_PAUSED, G_CREATE_FAILED, G_MIGRATE_FAILED, G_COMPLETED, G_PAUSING,
 G_DELETING, G_DELETED) = range(10)
_JSON_COLUMNS: Final = frozenset({"src_spec", "dst_spec", "options", "bandwidth_policy", "split_state", "smn_result"})


@dataclass(frozen=True, slots=True)
class GroupRow:
    """One task group as stored (JSON columns decoded, `secrets` still encrypted)."""

    id: str
    project_id: str
    status: int
    description: str
    task_type: str
    src_spec: dict[str, Any]
    dst_spec: dict[str, Any]
    options: dict[str, Any]
    bandwidth_policy: list[dict[str, Any]]
    secrets: str | None
    split_state: dict[str, Any]
    objects: int
    bytes: int
    task_count: int
    error_code: str | None
    error_msg: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    lease_owner: str | None
    lease_expires: float | None
    retry_at: float | None
    deleted_at: float | None
    smn_result: dict[str, Any] | None

    @classmethod
    def from_mapping(cls, row: Any) -> GroupRow:
        values = dict(row)
        for name in _JSON_COLUMNS:
            values[name] = json.loads(values[name]) if values[name] is not None else None
        return cls(**{f.name: values[f.name] for f in fields(cls)})


@dataclass(slots=True)
class TaskStats:
    """What a group's tasks add up to: tasks per status and the sums of their counters."""

    by_status: dict[int, int] = field(default_factory=dict)
    success_num: int = 0
    skip_num: int = 0
    fail_num: int = 0
    complete_size: int = 0
    speed: int = 0
    restoring_num: int = 0  # objects waiting for a restore (enable_restore)

    @property
    def tasks(self) -> int:
        return sum(self.by_status.values())

    def count(self, *statuses: int) -> int:
        return sum(self.by_status.get(s, 0) for s in statuses)


_ACTIVE_TASKS: Final = (WAITING, RUNNING, RETRYING, PAUSING)


def effective_status(row: GroupRow, stats: TaskStats) -> int:
    """The status a client sees: the stored one, with what only the tasks know rolled up into it (the API shows
    it; the group runner persists it)."""
    stored = row.status
    if stored == G_PAUSING:
        busy = row.lease_owner is not None or stats.count(RUNNING, PAUSING, WAITING, RETRYING) > 0
        return G_PAUSING if busy else G_PAUSED
    if stored in (G_MONITORING, G_MIGRATE_FAILED, G_COMPLETED):
        if stats.count(*_ACTIVE_TASKS) or stats.count(PAUSED) or stats.tasks == 0:
            # A task paused on its own, or restarted on its own, keeps the group watching.
            return G_MONITORING
        return G_MIGRATE_FAILED if stats.count(FAILED) else G_COMPLETED
    return stored


def _encode(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v, ensure_ascii=False) if k in _JSON_COLUMNS and v is not None else v)
            for k, v in values.items()}


class GroupRepo:
    """All SQL of task groups; state changes are conditional UPDATEs, so API calls and the splitter never
    overwrite each other's decisions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- API side ----------------------------------------------------------------------------------

    def insert(self, values: Mapping[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(g).values(**_encode(values)))

    def get(self, group_id: str, project_id: str | None = None) -> GroupRow | None:
        cond = [g.c.id == group_id, g.c.deleted_at.is_(None)]
        if project_id is not None:
            cond.append(g.c.project_id == project_id)
        with self.engine.connect() as conn:
            row = conn.execute(select(g).where(*cond)).mappings().first()
        return GroupRow.from_mapping(row) if row else None

    def page(self, project_id: str, *, status: int | None, limit: int, offset: int) -> tuple[list[GroupRow], int]:
        cond = [g.c.project_id == project_id, g.c.deleted_at.is_(None)]
        if status is not None:
            cond.append(g.c.status == status)
        q = select(g).where(*cond).order_by(g.c.created_at.desc(), g.c.id).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            rows = [GroupRow.from_mapping(r) for r in conn.execute(q).mappings()]
            count = conn.execute(select(func.count()).select_from(g).where(*cond)).scalar_one()
        return rows, int(count)

    def count_created_since(self, project_id: str, since: float) -> int:
        # Deleted groups count: deleting must not reset the daily quota.
        q = select(func.count()).select_from(g).where(g.c.project_id == project_id, g.c.created_at >= since)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def count_status(self, project_id: str, status: int) -> int:
        q = select(func.count()).select_from(g).where(
            g.c.project_id == project_id, g.c.status == status, g.c.deleted_at.is_(None))
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def transition(self, group_id: str, allowed: Collection[int], values: Mapping[str, Any], *,
                   project_id: str | None = None) -> bool:
        """Apply `values` only if the group exists (not deleted) and its status is in `allowed`."""
        cond = [g.c.id == group_id, g.c.deleted_at.is_(None), g.c.status.in_(list(allowed))]
        if project_id is not None:
            cond.append(g.c.project_id == project_id)
        with self.engine.begin() as conn:
            result = conn.execute(update(g).where(*cond).values(updated_at=time.time(), **_encode(values)))
        return bool(result.rowcount)

    def task_stats(self, project_id: str, group_ids: Iterable[str]) -> dict[str, TaskStats]:
        """The roll-up of each group's tasks, in one aggregate query over the (project, group) index."""
        ids = list(group_ids)
        out = {gid: TaskStats() for gid in ids}
        if not ids:
            return out
        q = (
            select(mt.c.group_id, mt.c.status, func.count(), func.sum(mt.c.success_num), func.sum(mt.c.skip_num),
                   func.sum(mt.c.fail_num), func.sum(mt.c.complete_size), func.sum(mt.c.speed),
                   func.sum(mt.c.restoring_num))
            .where(mt.c.project_id == project_id, mt.c.group_id.in_(ids), mt.c.deleted_at.is_(None))
            .group_by(mt.c.group_id, mt.c.status)
        )
        with self.engine.connect() as conn:
            for gid, status, n, ok, skip, fail, size, speed, restoring in conn.execute(q):
                st = out[gid]
                st.by_status[int(status)] = int(n)
                st.success_num += int(ok or 0)
                st.skip_num += int(skip or 0)
                st.fail_num += int(fail or 0)
                st.complete_size += int(size or 0)
                st.restoring_num += int(restoring or 0)
                if int(status) == 2:
                    st.speed += int(speed or 0)
        return out

    def task_ids(self, project_id: str, group_id: str, statuses: Collection[int] | None = None) -> list[int]:
        cond = [mt.c.project_id == project_id, mt.c.group_id == group_id, mt.c.deleted_at.is_(None)]
        if statuses is not None:
            cond.append(mt.c.status.in_(list(statuses)))
        with self.engine.connect() as conn:
            return [int(r[0]) for r in conn.execute(select(mt.c.id).where(*cond).order_by(mt.c.id))]

    def task_named(self, project_id: str, group_id: str, name: str) -> int | None:
        q = select(mt.c.id).where(mt.c.project_id == project_id, mt.c.group_id == group_id, mt.c.name == name,
                                  mt.c.deleted_at.is_(None))
        with self.engine.connect() as conn:
            found = conn.execute(q).first()
        return int(found[0]) if found else None

    # -- worker side -------------------------------------------------------------------------------

    def claim(self, owner: str, ttl: float, statuses: Collection[int], limit: int = 4) -> list[GroupRow]:
        """Take groups in `statuses` whose lease is free (never taken, expired, or its owner process on this
        host died), by compare-and-swap on the lease, oldest first. Leases and retry times are on the database's
        clock (ferry.db.dbclock)."""
        now = time.time()
        db_now = db_epoch(self.engine.dialect.name)
        host = socket.gethostname()
        with self.engine.connect() as conn:
            owners = [r[0] for r in conn.execute(
                select(g.c.lease_owner).distinct()
                .where(g.c.status.in_(list(statuses)), g.c.lease_owner.like(f"{host}/%")))]
        dead = [o for o in owners if owner_is_dead(o, host)]
        free = or_(g.c.lease_owner.is_(None), g.c.lease_expires < db_now, g.c.lease_owner.in_(dead))
        due = or_(g.c.retry_at.is_(None), g.c.retry_at <= db_now)
        q = (select(g.c.id, g.c.lease_owner, g.c.lease_expires)
             .where(and_(g.c.deleted_at.is_(None), g.c.status.in_(list(statuses)), free, due))
             .order_by(g.c.created_at, g.c.id).limit(limit))
        with self.engine.connect() as conn:
            candidates = list(conn.execute(q))
        claimed: list[GroupRow] = []
        for gid, seen_owner, seen_expires in candidates:
            with self.engine.begin() as conn:
                result = conn.execute(
                    update(g)
                    .where(g.c.id == gid, g.c.status.in_(list(statuses)), g.c.deleted_at.is_(None),
                           g.c.lease_owner.is_not_distinct_from(seen_owner),
                           g.c.lease_expires.is_not_distinct_from(seen_expires))
                    .values(lease_owner=owner, lease_expires=db_now + ttl, updated_at=now)
                )
            if result.rowcount:
                row = self.get(gid)
                if row is not None:
                    claimed.append(row)
        return claimed

    def take(self, group_id: str, owner: str, ttl: float, statuses: Collection[int]) -> GroupRow | None:
        """Take one group's lease for `owner` (a worker running its split unit) if the group is in `statuses` and
        its lease is free, expired, already `owner`'s, or held by a process of this host that died; None if not.
        Unlike `claim`, a retry time is not waited for: whoever dispatched the split already did."""
        current = self.get(group_id)
        if current is None or current.deleted_at is not None or current.status not in statuses:
            return None
        db_now = db_epoch(self.engine.dialect.name)
        seen = current.lease_owner
        free = or_(g.c.lease_owner.is_(None), g.c.lease_expires < db_now, g.c.lease_owner == owner)
        if seen is not None and owner_is_dead(seen):
            free = or_(free, g.c.lease_owner == seen)
        with self.engine.begin() as conn:
            result = conn.execute(
                update(g).where(g.c.id == group_id, g.c.status.in_(list(statuses)), g.c.deleted_at.is_(None), free)
                .values(lease_owner=owner, lease_expires=db_now + ttl, updated_at=time.time()))
        return self.get(group_id) if result.rowcount else None

    def heartbeat(self, group_id: str, owner: str, ttl: float, values: Mapping[str, Any]) -> GroupRow | None:
        """Write progress and extend the lease; the fresh row, or None when the lease was lost."""
        now = time.time()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(g).where(g.c.id == group_id, g.c.lease_owner == owner, g.c.deleted_at.is_(None))
                .values(lease_expires=db_epoch(self.engine.dialect.name) + ttl, updated_at=now, **_encode(values))
            )
            if not result.rowcount:
                return None
            row = conn.execute(select(g).where(g.c.id == group_id)).mappings().first()
        return GroupRow.from_mapping(row) if row else None

    def db_time(self, later: float = 0.0) -> Any:
        """`later` seconds from now by the database's clock, as a value to write (`retry_at`)."""
        return db_epoch(self.engine.dialect.name) + later

    def release(self, group_id: str, owner: str, values: Mapping[str, Any]) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                update(g).where(g.c.id == group_id, g.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires=None, updated_at=time.time(), **_encode(values))
            )
        return bool(result.rowcount)

    def in_status(self, statuses: Collection[int], limit: int = 500) -> list[GroupRow]:
        q = (select(g).where(g.c.status.in_(list(statuses)), g.c.deleted_at.is_(None))
             .order_by(g.c.updated_at).limit(limit))
        with self.engine.connect() as conn:
            return [GroupRow.from_mapping(r) for r in conn.execute(q).mappings()]
