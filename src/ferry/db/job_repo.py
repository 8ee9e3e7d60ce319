"""Job state queries: create/resume jobs, batched per-object results, multipart checkpoints."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ferry.db.records import SIZE_ONLY, JobRow, ObjectResult, PartRow, Tally, UploadRow
from ferry.db.sqlconn import EngineConn, SqlConn

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = ["JobRepo", "JobRow", "ObjectResult", "PartRow", "Tally", "UploadRow"]

# Plain SQL, written once for SQLite and PostgreSQL (both have ON CONFLICT ... DO UPDATE and `excluded`), so
# that the CLI can run it over stdlib sqlite3 without importing SQLAlchemy.
_JOB = "SELECT id, fingerprint, spec, status, watermark FROM jobs"
_UPLOAD = "SELECT key, upload_id, src_etag, size, part_size FROM job_uploads"
_WATERMARK = "UPDATE jobs SET watermark = :watermark WHERE id = :job_id"
_RECORD = (
    "INSERT INTO job_objects (job_id, key, status, size, etag, reason, updated_at)"
    " VALUES (:job_id, :key, :status, :size, :etag, :reason, :updated_at)"
    " ON CONFLICT (job_id, key) DO UPDATE SET status = excluded.status, size = excluded.size,"
    " etag = excluded.etag, reason = excluded.reason, updated_at = excluded.updated_at"
)
_SAVE_UPLOAD = (
    "INSERT INTO job_uploads (job_id, key, upload_id, src_etag, size, part_size, created_at)"
    " VALUES (:job_id, :key, :upload_id, :src_etag, :size, :part_size, :created_at)"
    " ON CONFLICT (job_id, key) DO UPDATE SET upload_id = excluded.upload_id, src_etag = excluded.src_etag,"
    " size = excluded.size, part_size = excluded.part_size, created_at = excluded.created_at"
)
_SAVE_PART = (
    "INSERT INTO job_parts (job_id, key, part_number, etag, size, crc64, md5)"
    " VALUES (:job_id, :key, :part_number, :etag, :size, :crc64, :md5)"
    " ON CONFLICT (job_id, key, part_number) DO UPDATE SET etag = excluded.etag, size = excluded.size,"
    " crc64 = excluded.crc64, md5 = excluded.md5"
)


def record_on(conn: Connection, job_id: str, results: Sequence[ObjectResult]) -> None:
    """Write results on an open SQLAlchemy connection, inside the caller's transaction (distributed mode records
    a range unit's skips with the units it hands out, in one transaction)."""
    if not results:
        return
    from sqlalchemy import text  # here, not at import: the CLI's job database runs without SQLAlchemy

    now = time.time()
    conn.execute(text(_RECORD), [
        {"job_id": job_id, "key": r.key, "status": r.status, "size": r.size, "etag": r.etag, "reason": r.reason,
         "updated_at": now} for r in results])


def _byte_order(db: SqlConn, column: str) -> str:
    # SQLite's BINARY collation is UTF-8 byte order already; PostgreSQL needs the C collation for it.
    return f'{column} COLLATE "C"' if db.dialect == "postgresql" else column


class JobRepo:
    """All reads and writes of job state go through here (sync; the engine calls it from a worker thread).

    `db` is an SQLAlchemy Engine (the service, PostgreSQL) or any SqlConn (the CLI's sqlite3 one)."""

    def __init__(self, db: Engine | SqlConn) -> None:
        self.db = db if isinstance(db, SqlConn) else EngineConn(db)

    def find_resumable(self, fingerprint: str) -> JobRow | None:
        sql = (f"{_JOB} WHERE fingerprint = :fingerprint AND status IN ('pending', 'running', 'stopped')"
               " ORDER BY created_at DESC LIMIT 1")
        with self.db.begin() as tx:
            rows = tx.execute(sql, {"fingerprint": fingerprint})
        return JobRow(*rows[0]) if rows else None

    def get(self, job_id: str) -> JobRow | None:
        with self.db.begin() as tx:
            rows = tx.execute(f"{_JOB} WHERE id = :job_id", {"job_id": job_id})
        return JobRow(*rows[0]) if rows else None

    def create(self, fingerprint: str, spec: str, job_id: str | None = None) -> JobRow:
        job_id = job_id or str(uuid.uuid4())
        with self.db.begin() as tx:
            tx.execute(
                "INSERT INTO jobs (id, fingerprint, spec, status, created_at, listing_done, total_num, total_size)"
                " VALUES (:id, :fingerprint, :spec, 'pending', :created_at, 0, 0, 0)",
                {"id": job_id, "fingerprint": fingerprint, "spec": spec, "created_at": time.time()},
            )
        return JobRow(job_id, fingerprint, spec, "pending", None)

    def set_status(self, job_id: str, status: str, error: str | None = None) -> None:
        values: dict[str, Any] = {"status": status, "error": error}
        now = time.time()
        if status == "running":
            values["started_at"] = now
        elif status in ("succeeded", "failed", "stopped"):
            values["finished_at"] = now
        assignments = ", ".join(f"{column} = :{column}" for column in values)  # fixed column names only
        with self.db.begin() as tx:
            tx.execute(f"UPDATE jobs SET {assignments} WHERE id = :job_id", {**values, "job_id": job_id})

    def record(self, job_id: str, results: Sequence[ObjectResult], watermark: str | None = None) -> None:
        """Write a batch of results (and the new listing watermark) in one transaction."""
        now = time.time()
        rows = [
            {"job_id": job_id, "key": r.key, "status": r.status, "size": r.size, "etag": r.etag,
             "reason": r.reason, "updated_at": now}
            for r in results
        ]
        with self.db.begin() as tx:
            if rows:
                tx.executemany(_RECORD, rows)
            if watermark is not None:
                tx.execute(_WATERMARK, {"job_id": job_id, "watermark": watermark})

    def iter_finished_keys(self, job_id: str, after: str | None = None, batch: int = 5000) -> Iterator[str]:
        """Keys already succeeded or skipped, ascending in byte order, paged so memory stays flat."""
        key = _byte_order(self.db, "key")
        last = after
        while True:
            since = "" if last is None else f" AND {key} > :last"
            sql = (f"SELECT key FROM job_objects WHERE job_id = :job_id AND status IN ('success', 'skipped')"
                   f"{since} ORDER BY {key} LIMIT :batch")
            with self.db.begin() as tx:
                keys = [r[0] for r in tx.execute(sql, {"job_id": job_id, "last": last, "batch": batch})]
            yield from keys
            if len(keys) < batch:
                return
            last = keys[-1]

    def iter_results(self, job_id: str, status: str, batch: int = 5000) -> Iterator[ObjectResult]:
        key = _byte_order(self.db, "key")
        last: str | None = None
        while True:
            since = "" if last is None else f" AND {key} > :last"
            sql = (f"SELECT key, status, size, etag, reason FROM job_objects WHERE job_id = :job_id"
                   f" AND status = :status{since} ORDER BY {key} LIMIT :batch")
            with self.db.begin() as tx:
                rows = [ObjectResult(*r) for r in tx.execute(
                    sql, {"job_id": job_id, "status": status, "last": last, "batch": batch})]
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1].key

    def tally(self, job_id: str) -> Tally:
        # One pass over the job's rows: successes checked by their size only are counted apart as well.
        sql = ("SELECT status, CASE WHEN reason = :reason THEN 1 ELSE 0 END, COUNT(*), COALESCE(SUM(size), 0)"
               " FROM job_objects WHERE job_id = :job_id GROUP BY 1, 2")
        got: dict[str, tuple[int, int]] = {}
        size_only = 0
        with self.db.begin() as tx:
            for status, by_size, n, size in tx.execute(sql, {"job_id": job_id, "reason": SIZE_ONLY}):
                was = got.get(status, (0, 0))
                got[status] = (was[0] + int(n), was[1] + int(size))
                if status == "success" and by_size:
                    size_only += int(n)
        s, k, f = got.get("success", (0, 0)), got.get("skipped", (0, 0)), got.get("failed", (0, 0))
        return Tally(s[0], k[0], f[0], s[1], k[1], f[1], size_only, got.get("restore", (0, 0))[0])

    # Multipart checkpoints -------------------------------------------------------------------------------

    def get_upload(self, job_id: str, key: str) -> UploadRow | None:
        with self.db.begin() as tx:
            rows = tx.execute(f"{_UPLOAD} WHERE job_id = :job_id AND key = :key", {"job_id": job_id, "key": key})
        return UploadRow(*rows[0]) if rows else None

    def save_upload(self, job_id: str, up: UploadRow) -> None:
        with self.db.begin() as tx:
            tx.execute(_SAVE_UPLOAD, {"job_id": job_id, "key": up.key, "upload_id": up.upload_id,
                                      "src_etag": up.src_etag, "size": up.size, "part_size": up.part_size,
                                      "created_at": time.time()})

    def drop_upload(self, job_id: str, key: str) -> None:
        where = {"job_id": job_id, "key": key}
        with self.db.begin() as tx:
            tx.execute("DELETE FROM job_parts WHERE job_id = :job_id AND key = :key", where)
            tx.execute("DELETE FROM job_uploads WHERE job_id = :job_id AND key = :key", where)

    def save_part(self, job_id: str, key: str, part: PartRow) -> None:
        with self.db.begin() as tx:
            tx.execute(_SAVE_PART, {"job_id": job_id, "key": key, "part_number": part.part_number,
                                    "etag": part.etag, "size": part.size,
                                    "crc64": None if part.crc64 is None else f"{part.crc64:016x}",
                                    "md5": part.md5})

    def get_parts(self, job_id: str, key: str) -> list[PartRow]:
        sql = ("SELECT part_number, etag, size, crc64, md5 FROM job_parts WHERE job_id = :job_id AND key = :key"
               " ORDER BY part_number")
        with self.db.begin() as tx:
            rows = tx.execute(sql, {"job_id": job_id, "key": key})
        return [PartRow(n, e, s, None if c is None else int(c, 16), m) for n, e, s, c, m in rows]

    def list_uploads(self, job_id: str) -> list[UploadRow]:
        with self.db.begin() as tx:
            return [UploadRow(*r) for r in tx.execute(f"{_UPLOAD} WHERE job_id = :job_id", {"job_id": job_id})]
