"""Read-only summaries of a job's per-object results for people: when they finished, and how much."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ferry.db.sqlconn import EngineConn, SqlConn

if TYPE_CHECKING:
    from sqlalchemy import Engine


@dataclass(frozen=True, slots=True)
class Throughput:
    """What finished within one time bucket: its start (epoch seconds), bytes copied, objects finished."""

    start: float
    bytes_copied: int
    objects: int


class JobReport:
    """Queries over job_objects that only read (served by its (job_id, status) index)."""

    def __init__(self, db: Engine | SqlConn) -> None:
        self.db = db if isinstance(db, SqlConn) else EngineConn(db)

    def span(self, job_id: str) -> tuple[float, float] | None:
        """When the first and the last result of the job were recorded (None before any)."""
        sql = "SELECT MIN(updated_at), MAX(updated_at) FROM job_objects WHERE job_id = :job_id"
        with self.db.begin() as tx:
            rows = tx.execute(sql, {"job_id": job_id})
        if not rows or rows[0][0] is None:
            return None
        return float(rows[0][0]), float(rows[0][1])

    def throughput(self, job_id: str, since: float, bucket: float) -> list[Throughput]:
        """Bytes copied (successes) and objects finished (any outcome) per `bucket` seconds from `since`, in
        time order, buckets with nothing left out. One grouped pass over the job's rows."""
        sql = ("SELECT CAST((updated_at - :since) / :bucket AS INTEGER) AS b,"
               " COALESCE(SUM(CASE WHEN status = 'success' THEN size ELSE 0 END), 0), COUNT(*)"
               " FROM job_objects WHERE job_id = :job_id AND status IN ('success', 'skipped', 'failed')"
               " AND updated_at >= :since GROUP BY b ORDER BY b")
        with self.db.begin() as tx:
            rows = tx.execute(sql, {"job_id": job_id, "since": since, "bucket": bucket})
        return [Throughput(since + int(b) * bucket, int(size), int(n)) for b, size, n in rows]
