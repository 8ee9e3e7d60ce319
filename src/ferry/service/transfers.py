"""Running a migration job end to end: find or create the job, preflight, transfer, report."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferry.db.faults import StateStore, classify
from ferry.db.records import Tally
from ferry.engine.pipeline import Transfer, TransferOptions, name_side
from ferry.engine.progress import Counters
from ferry.errors import AccessError, FatalError
from ferry.storage.base import Backend
from ferry.storage.wrappers import unwrap

if TYPE_CHECKING:
    from ferry.db.job_repo import JobRepo


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
    size_only: int = 0  # of `success`: verified by their size only (their source gave no checksum)
    restoring: int = 0  # archived objects still waiting for their restore (a run stopped before they came back)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """The one-line account a person reads (`ferry migrate` without --json, the demo)."""
        verb = "resumed and finished" if self.resumed else "finished"
        copied = f"{self.success} copied" + (f" ({self.size_only} verified by size only)" if self.size_only else "")
        waiting = f", {self.restoring} waiting for a restore" if self.restoring else ""
        return (f"{verb} job {self.job_id}: {self.total} objects, {copied}, {self.skipped} skipped, "
                f"{self.failed} failed{waiting}, {self.bytes} bytes in {self.elapsed}s")


def job_spec(opts: TransferOptions) -> dict[str, Any]:
    """The options that make two runs "the same transfer" (with the stores; see `fingerprint`)."""
    return {"overwrite": opts.overwrite.value, "consistency": opts.copy.consistency.value,
            "metadata": opts.copy.metadata, "storage_class": opts.copy.storage_class,
            "migrate_since": opts.migrate_since}


def fingerprint(src: Backend, dst: Backend, extra: dict[str, Any]) -> str:
    """Identity of "the same transfer": the same source, destination and options resume one job."""
    raw = json.dumps({"src": src.name, "dst": dst.name, **extra}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()


@contextlib.contextmanager
def job_lock(directory: Path, fp: str) -> Iterator[None]:
    """Hold the lock of the job `fp` (a file under `directory`) until the block ends; FatalError "job already
    running (pid N)" while another process holds it. Two runs of one job would share its multipart checkpoints
    and tear each other's uploads down. An flock dies with its process, so even kill -9 leaves none behind."""
    path = directory / "locks" / f"job-{fp[:32]}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise FatalError(f"job already running (pid {holder}); wait for it to end or stop it first") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)  # locked a file its last holder had just removed: take the one now at `path`
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        # Removed while still held: a process that opened it meanwhile sees another inode and starts over.
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


async def preflight(backend: Backend) -> None:
    """Fail fast (FatalError) when a store is unreachable, the credentials are wrong or the bucket is missing."""
    async for _ in backend.list():
        break


def _begin(repo: JobRepo, fp: str, spec: str, job_id: str) -> None:
    repo.create(fp, spec, job_id)
    repo.set_status(job_id, "running")


def key_prefix(backend: Backend) -> str:
    """The key prefix of the store under any wrappers (a job's keys are relative to it)."""
    prefix = getattr(unwrap(backend), "prefix", "")
    return prefix if isinstance(prefix, str) else ""


def write_failed_report(repo: JobRepo, job_id: str, report_dir: Path, src_prefix: str = "",
                        dst_prefix: str = "") -> Path | None:
    """JSON lines {key, dst_key, size, reason} of every failed object, or None when nothing failed: `key` as
    the source store knows it, `dst_key` as the destination would."""
    rows = repo.iter_results(job_id, "failed")
    first = next(rows, None)
    if first is None:
        return None
    path = report_dir / f"failed-{job_id}.jsonl"
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as fh:
            for r in (first, *rows):
                line = {"key": src_prefix + r.key, "dst_key": dst_prefix + r.key, "size": r.size,
                        "reason": r.reason}
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    except OSError as exc:
        # A full disk is said as such (where, how much to free), not as an unexpected OSError.
        found = classify(exc, StateStore(f"the report {path}", path))
        if found is None:
            raise
        raise found from exc
    return path


async def run_migration(
    src: Backend,
    dst: Backend,
    repo: JobRepo,
    opts: TransferOptions,
    *,
    report_dir: Path,
    spec: dict[str, Any] | None = None,
    counters: Counters | None = None,
    fresh: bool = False,
    lock_dir: Path | None = None,
) -> Summary:
    """Create or resume the job for this src/dst/options (`spec`, by default `job_spec(opts)`) and run it to
    the end.

    `fresh` says the database holds no job at all (a new state directory): then nothing can be resumed,
    and the job's row is created while the transfer already runs (the database may still be opening).
    Raises FatalError before any work when a store cannot be used, or (with `lock_dir`, where job locks live)
    when another process runs this job. A FatalError during the run, or cancellation, leaves the job
    resumable (status stopped/failed with everything finished recorded); an AccessError (with its side named)
    is raised, since nothing but fixing keys, permissions or the bucket helps; others end in `Summary.error`.
    """
    spec = job_spec(opts) if spec is None else spec
    fp = fingerprint(src, dst, spec)
    with job_lock(lock_dir, fp) if lock_dir is not None else contextlib.nullcontext():
        return await _run_locked(src, dst, repo, opts, fp, report_dir, spec, counters, fresh)


async def _run_locked(src: Backend, dst: Backend, repo: JobRepo, opts: TransferOptions, fp: str,
                      report_dir: Path, spec: dict[str, Any], counters: Counters | None, fresh: bool) -> Summary:
    try:
        await asyncio.gather(preflight(src), preflight(dst))
    except AccessError as exc:
        raise name_side(exc, src, dst) from None
    spec_json = json.dumps({"src": src.name, "dst": dst.name, **spec})
    ready: asyncio.Future[None] | None = None
    if fresh:
        job_id, watermark, resumed, prior = str(uuid.uuid4()), None, False, Tally()
        ready = asyncio.ensure_future(asyncio.to_thread(_begin, repo, fp, spec_json, job_id))
    else:
        job = await asyncio.to_thread(repo.find_resumable, fp)
        resumed = job is not None
        if job is None:
            job = await asyncio.to_thread(repo.create, fp, spec_json)
        job_id, watermark = job.id, job.watermark if resumed else None
        prior = await asyncio.to_thread(repo.tally, job_id)
        await asyncio.to_thread(repo.set_status, job_id, "running")
    transfer = Transfer(src, dst, repo, job_id, opts, counters, ready=ready)
    started = time.monotonic()
    error: str | None = None
    try:
        await transfer.run(watermark, prior)
    except AccessError as exc:
        # Keys, permissions or the bucket must be fixed first: the job stays resumable, the caller says what.
        if ready is not None:
            await asyncio.shield(ready)
        await asyncio.to_thread(repo.set_status, job_id, "stopped", exc.message)
        raise
    except FatalError as exc:
        error = exc.message
    except (asyncio.CancelledError, KeyboardInterrupt):
        if ready is not None:
            await asyncio.shield(ready)
        await asyncio.to_thread(repo.set_status, job_id, "stopped")
        raise
    finally:
        if ready is not None and not ready.done():
            await asyncio.shield(ready)
    tally = await asyncio.to_thread(repo.tally, job_id)
    status = "failed" if error or tally.failed else "succeeded"
    if error:
        # A fatal stop keeps the job resumable: the next identical run picks it up.
        await asyncio.to_thread(repo.set_status, job_id, "stopped", error)
    else:
        await asyncio.to_thread(repo.set_status, job_id, status)
    report = await asyncio.to_thread(write_failed_report, repo, job_id, report_dir, key_prefix(src),
                                     key_prefix(dst))
    return Summary(
        job_id=job_id, resumed=resumed, status=status,
        total=tally.success + tally.skipped + tally.failed + tally.restoring,
        success=tally.success, skipped=tally.skipped, failed=tally.failed, bytes=tally.success_bytes,
        elapsed=round(time.monotonic() - started, 3), report=str(report) if report else None, error=error,
        size_only=tally.size_only,
        restoring=tally.restoring,
    )
