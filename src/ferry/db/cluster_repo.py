"""Rows of the cluster itself: live workers, shared token budgets and settings every process must agree on."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from ferry.db.cluster_models import cluster_budgets as b
from ferry.db.cluster_models import cluster_settings as s
from ferry.db.cluster_models import cluster_workers as w
from ferry.db.dbclock import db_epoch


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One worker or dispatching server as last reported; `age` = seconds since its heartbeat (database clock)."""

    id: str
    role: str
    host: str
    pid: int
    state: str
    units_in_flight: int
    units_done: int
    started_at: float
    heartbeat_at: float
    version: str
    info: dict[str, Any]
    age: float


class WorkerRepo:
    """The live-worker table: each process registers, beats every few seconds and says when it stops."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._now: ColumnElement[float] = db_epoch(engine.dialect.name)

    def register(self, worker_id: str, role: str, host: str, pid: int, version: str,
                 info: Mapping[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(w).where(w.c.id == worker_id))
            conn.execute(insert(w).values(
                id=worker_id, role=role, host=host, pid=pid, state="running", units_in_flight=0, units_done=0,
                started_at=time.time(), heartbeat_at=self._now, version=version, info=json.dumps(dict(info))))

    def beat(self, worker_id: str, units_in_flight: int, units_done: int, state: str = "running") -> bool:
        """Refresh the heartbeat; False when the row is gone (forgotten as dead): register again."""
        with self.engine.begin() as conn:
            result = conn.execute(update(w).where(w.c.id == worker_id).values(
                heartbeat_at=self._now, units_in_flight=units_in_flight, units_done=units_done, state=state))
        return bool(result.rowcount)

    def stopped(self, worker_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(w).where(w.c.id == worker_id))

    def forget_dead(self, older_than: float) -> int:
        """Remove workers silent for more than `older_than` seconds; how many."""
        with self.engine.begin() as conn:
            return int(conn.execute(delete(w).where(w.c.heartbeat_at < self._now - older_than)).rowcount)

    def list(self) -> list[WorkerRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(w, (self._now - w.c.heartbeat_at).label("age"))
                                .order_by(w.c.role, w.c.host, w.c.pid)).mappings().all()
        return [WorkerRow(id=r["id"], role=r["role"], host=r["host"], pid=r["pid"], state=r["state"],
                          units_in_flight=r["units_in_flight"], units_done=r["units_done"],
                          started_at=r["started_at"], heartbeat_at=r["heartbeat_at"], version=r["version"],
                          info=json.loads(r["info"] or "{}"), age=max(0.0, float(r["age"]))) for r in rows]


class BudgetRepo:
    """Token buckets shared by the whole cluster. `take` spends tokens at once, going into debt if need be, and
    says how long the taker must wait for the debt to be refilled: one UPDATE, no lock held while waiting."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._now: ColumnElement[float] = db_epoch(engine.dialect.name)

    def take(self, name: str, amount: float, rate: float, burst: float) -> float:
        """Spend `amount` tokens of bucket `name` (refilled at `rate`/s up to `burst`); seconds to wait."""
        if rate <= 0:
            return 0.0
        refilled = func.min(b.c.burst, b.c.tokens + (self._now - b.c.updated_at) * b.c.rate) \
            if self.engine.dialect.name == "sqlite" else \
            func.least(b.c.burst, b.c.tokens + (self._now - b.c.updated_at) * b.c.rate)
        for _ in range(2):
            with self.engine.begin() as conn:
                row = conn.execute(
                    update(b).where(b.c.name == name)
                    .values(tokens=refilled - amount, updated_at=self._now, rate=rate, burst=burst)
                    .returning(b.c.tokens)).first()
                if row is not None:
                    left = float(row[0])
                    return 0.0 if left >= 0 else -left / rate
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(b).values(name=name, rate=rate, burst=burst, tokens=burst,
                                                  updated_at=self._now))
            except IntegrityError:
                pass  # another worker made it first
        raise RuntimeError(f"budget {name!r} could not be taken from")

    def drop(self, prefix: str) -> None:
        """Forget the buckets whose names start with `prefix` (a finished task's)."""
        with self.engine.begin() as conn:
            conn.execute(delete(b).where(b.c.name.startswith(prefix, autoescape=True)))


class SettingRepo:
    """Values fixed by the first process that sets them (e.g. the master key's fingerprint)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def agree(self, name: str, value: str) -> str:
        """Store `value` unless one is stored already; the stored value (compare it with yours)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(s).values(name=name, value=value))
            return value
        except IntegrityError:
            with self.engine.connect() as conn:
                stored = conn.execute(select(s.c.value).where(s.c.name == name)).scalar_one()
            return str(stored)
