"""Running a migration job end to end: find or create the job, preflight, transfer, report."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ferry.db.repo import JobRepo
from ferry.engine.pipeline import Transfer, TransferOptions
from ferry.engine.progress import Counters
from ferry.errors import FatalError
from ferry.storage.base import Backend


@dataclass(frozen=True, slots=True)
class Summary:
    """What a finished (or stopped) job reports; `bytes` counts bytes copied by the job."""

    job_id: str
    resumed: bool
    status: str
    total: int
    success: int
    skipped: int
    failed: int
    bytes: int
    elapsed: float
    report: str | None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fingerprint(src: Backend, dst: Backend, extra: dict[str, Any]) -> str:
    """Identity of "the same transfer": the same source, destination and options resume one job."""
    raw = json.dumps({"src": src.name, "dst": dst.name, **extra}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()


async def preflight(backend: Backend) -> None:
    """Fail fast (FatalError) when a store is unreachable, the credentials are wrong or the bucket is missing."""
    async for _ in backend.list():
        break


def write_failed_report(repo: JobRepo, job_id: str, report_dir: Path) -> Path | None:
    """JSON lines {key, size, reason} of every failed object, or None when nothing failed."""
    rows = repo.iter_results(job_id, "failed")
    first = next(rows, None)
    if first is None:
        return None
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / f"failed-{job_id}.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for r in (first, *rows):
            fh.write(json.dumps({"key": r.key, "size": r.size, "reason": r.reason}, ensure_ascii=False) + "\n")
    return path


async def run_migration(
    src: Backend,
    dst: Backend,
    repo: JobRepo,
    opts: TransferOptions,
    *,
    report_dir: Path,
    spec: dict[str, Any],
    counters: Counters | None = None,
) -> Summary:
    """Create or resume the job for this src/dst/options and run it to the end.

    Raises FatalError before any work when a store cannot be used. A FatalError during the run, or
    cancellation, leaves the job resumable (status stopped/failed with everything finished recorded).
    """
    await asyncio.gather(preflight(src), preflight(dst))
    fp = fingerprint(src, dst, spec)
    job = await asyncio.to_thread(repo.find_resumable, fp)
    resumed = job is not None
    if job is None:
        job = await asyncio.to_thread(repo.create, fp, json.dumps({"src": src.name, "dst": dst.name, **spec}))
    prior = await asyncio.to_thread(repo.tally, job.id)
    await asyncio.to_thread(repo.set_status, job.id, "running")
    transfer = Transfer(src, dst, repo, job.id, opts, counters)
    started = time.monotonic()
    error: str | None = None
    try:
        await transfer.run(job.watermark if resumed else None, prior)
    except FatalError as exc:
        error = exc.message
    except (asyncio.CancelledError, KeyboardInterrupt):
        await asyncio.to_thread(repo.set_status, job.id, "stopped")
        raise
    tally = await asyncio.to_thread(repo.tally, job.id)
    status = "failed" if error or tally.failed else "succeeded"
    if error:
        # A fatal stop keeps the job resumable: the next identical run picks it up.
        await asyncio.to_thread(repo.set_status, job.id, "stopped", error)
    else:
        await asyncio.to_thread(repo.set_status, job.id, status)
    report = await asyncio.to_thread(write_failed_report, repo, job.id, report_dir)
    return Summary(
        job_id=job.id, resumed=resumed, status=status,
        total=tally.success + tally.skipped + tally.failed,
        success=tally.success, skipped=tally.skipped, failed=tally.failed, bytes=tally.success_bytes,
        elapsed=round(time.monotonic() - started, 3), report=str(report) if report else None, error=error,
    )
