"""Job state queries: create/resume jobs, batched per-object results, multipart checkpoints."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, select, update

from ferry.db.models import job_objects, job_parts, job_uploads, jobs
from ferry.db.records import JobRow, ObjectResult, PartRow, Tally, UploadRow

__all__ = ["JobRepo", "JobRow", "ObjectResult", "PartRow", "Tally", "UploadRow"]


def _insert(engine: Engine, table: Any) -> Any:
    """The dialect's INSERT, which has ON CONFLICT; PostgreSQL's dialect (~40 ms) is imported only when used."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def _upsert(engine: Engine, table: Any, rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> None:
    if not rows:
        return
    stmt = _insert(engine, table)
    cols = {c: getattr(stmt.excluded, c) for c in rows[0] if c not in keys}
    stmt = stmt.on_conflict_do_update(index_elements=list(keys), set_=cols)
    with engine.begin() as conn:
        conn.execute(stmt, list(rows))


def _byte_order(engine: Engine, column: Any) -> Any:
    # SQLite's BINARY collation is UTF-8 byte order already; PostgreSQL needs the C collation for it.
    return column.collate("C") if engine.dialect.name == "postgresql" else column


class JobRepo:
    """All reads and writes of job state go through here (sync; the engine calls it from a worker thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def find_resumable(self, fingerprint: str) -> JobRow | None:
        q = (
            select(jobs.c.id, jobs.c.fingerprint, jobs.c.spec, jobs.c.status, jobs.c.watermark)
            .where(jobs.c.fingerprint == fingerprint, jobs.c.status.in_(("pending", "running", "stopped")))
            .order_by(jobs.c.created_at.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return JobRow(*row) if row else None

    def get(self, job_id: str) -> JobRow | None:
        q = select(jobs.c.id, jobs.c.fingerprint, jobs.c.spec, jobs.c.status, jobs.c.watermark).where(
            jobs.c.id == job_id
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return JobRow(*row) if row else None

    def create(self, fingerprint: str, spec: str, job_id: str | None = None) -> JobRow:
        job_id = job_id or str(uuid.uuid4())
        with self.engine.begin() as conn:
            conn.execute(
                insert(jobs).values(
                    id=job_id, fingerprint=fingerprint, spec=spec, status="pending", created_at=time.time(),
                    listing_done=0, total_num=0, total_size=0,
                )
            )
        return JobRow(job_id, fingerprint, spec, "pending", None)

    def set_status(self, job_id: str, status: str, error: str | None = None) -> None:
        values: dict[str, Any] = {"status": status, "error": error}
        now = time.time()
        if status == "running":
            values["started_at"] = now
        elif status in ("succeeded", "failed", "stopped"):
            values["finished_at"] = now
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))

    def set_watermark(self, job_id: str, watermark: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(watermark=watermark))

    def record(self, job_id: str, results: Sequence[ObjectResult], watermark: str | None = None) -> None:
        """Write a batch of results (and the new listing watermark) in one transaction."""
        now = time.time()
        rows = [
            {"job_id": job_id, "key": r.key, "status": r.status, "size": r.size, "etag": r.etag,
             "reason": r.reason, "updated_at": now}
            for r in results
        ]
        with self.engine.begin() as conn:
            if rows:
                stmt = _insert(self.engine, job_objects)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["job_id", "key"],
                    set_={c: getattr(stmt.excluded, c) for c in ("status", "size", "etag", "reason", "updated_at")},
                )
                conn.execute(stmt, rows)
            if watermark is not None:
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(watermark=watermark))

    def iter_finished_keys(self, job_id: str, after: str | None = None, batch: int = 5000) -> Iterator[str]:
        """Keys already succeeded or skipped, ascending in byte order, paged so memory stays flat."""
        col = _byte_order(self.engine, job_objects.c.key)
        last = after
        while True:
            cond = [job_objects.c.job_id == job_id, job_objects.c.status.in_(("success", "skipped"))]
            if last is not None:
                cond.append(col > last)
            q = select(job_objects.c.key).where(and_(*cond)).order_by(col).limit(batch)
            with self.engine.connect() as conn:
                keys = [r[0] for r in conn.execute(q)]
            yield from keys
            if len(keys) < batch:
                return
            last = keys[-1]

    def iter_results(self, job_id: str, status: str, batch: int = 5000) -> Iterator[ObjectResult]:
        col = _byte_order(self.engine, job_objects.c.key)
        last: str | None = None
        while True:
            cond = [job_objects.c.job_id == job_id, job_objects.c.status == status]
            if last is not None:
                cond.append(col > last)
            q = (
                select(job_objects.c.key, job_objects.c.status, job_objects.c.size, job_objects.c.etag,
                       job_objects.c.reason)
                .where(and_(*cond)).order_by(col).limit(batch)
            )
            with self.engine.connect() as conn:
                rows = [ObjectResult(*r) for r in conn.execute(q)]
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1].key

    def tally(self, job_id: str) -> Tally:
        q = (
            select(job_objects.c.status, func.count(), func.coalesce(func.sum(job_objects.c.size), 0))
            .where(job_objects.c.job_id == job_id)
            .group_by(job_objects.c.status)
        )
        got: dict[str, tuple[int, int]] = {}
        with self.engine.connect() as conn:
            for status, n, size in conn.execute(q):
                got[status] = (int(n), int(size))
        s, k, f = got.get("success", (0, 0)), got.get("skipped", (0, 0)), got.get("failed", (0, 0))
        return Tally(s[0], k[0], f[0], s[1], k[1], f[1])

    # Multipart checkpoints -------------------------------------------------------------------------------

    def get_upload(self, job_id: str, key: str) -> UploadRow | None:
        q = select(job_uploads.c.key, job_uploads.c.upload_id, job_uploads.c.src_etag, job_uploads.c.size,
                   job_uploads.c.part_size).where(job_uploads.c.job_id == job_id, job_uploads.c.key == key)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return UploadRow(*row) if row else None

    def save_upload(self, job_id: str, up: UploadRow) -> None:
        _upsert(
            self.engine, job_uploads,
            [{"job_id": job_id, "key": up.key, "upload_id": up.upload_id, "src_etag": up.src_etag,
              "size": up.size, "part_size": up.part_size, "created_at": time.time()}],
            ("job_id", "key"),
        )

    def drop_upload(self, job_id: str, key: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(job_parts).where(job_parts.c.job_id == job_id, job_parts.c.key == key))
            conn.execute(delete(job_uploads).where(job_uploads.c.job_id == job_id, job_uploads.c.key == key))

    def save_part(self, job_id: str, key: str, part: PartRow) -> None:
        _upsert(
            self.engine, job_parts,
            [{"job_id": job_id, "key": key, "part_number": part.part_number, "etag": part.etag,
              "size": part.size, "crc64": None if part.crc64 is None else f"{part.crc64:016x}",
              "md5": part.md5}],
            ("job_id", "key", "part_number"),
        )

    def get_parts(self, job_id: str, key: str) -> list[PartRow]:
        q = (
            select(job_parts.c.part_number, job_parts.c.etag, job_parts.c.size, job_parts.c.crc64, job_parts.c.md5)
            .where(job_parts.c.job_id == job_id, job_parts.c.key == key)
            .order_by(job_parts.c.part_number)
        )
        with self.engine.connect() as conn:
            return [PartRow(n, e, s, None if c is None else int(c, 16), m) for n, e, s, c, m in conn.execute(q)]

    def list_uploads(self, job_id: str) -> list[UploadRow]:
        q = select(job_uploads.c.key, job_uploads.c.upload_id, job_uploads.c.src_etag, job_uploads.c.size,
                   job_uploads.c.part_size).where(job_uploads.c.job_id == job_id)
        with self.engine.connect() as conn:
            return [UploadRow(*r) for r in conn.execute(q)]
