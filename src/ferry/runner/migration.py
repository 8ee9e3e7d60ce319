"""The in-process runner: claims migration tasks by priority under a lease and runs them through the engine.

One thread with its own event loop, so copying never stalls the API's loop. Every `poll_interval` (or when
woken) it claims waiting tasks up to `max_tasks` at once — highest priority first — plus tasks whose runner
died (status 2/6/7 with an expired lease, or whose owner process on this host is gone), which is how a
restarted server resumes what was running. A running task writes its counters to its row about once a second;
the same write renews the lease and reads back the status (7 = stop requested) and the bandwidth policy, so a
stop or a policy change takes effect within a second or two. Stopping is cancellation: the engine records what
it finished, the job keeps its checkpoint, and the next start resumes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from sqlalchemy import Engine

from ferry.aio import wait_event
from ferry.db.faults import StateStore, classify, patiently
from ferry.db.job_repo import JobRepo, ObjectResult, Tally
from ferry.db.records import SIZE_ONLY
from ferry.db.sqlconn import SqlConn
from ferry.db.task_repo import (
    FAILED,
    PAUSED,
    PAUSING,
    RETRYING,
    SUCCEEDED,
    TaskRepo,
    TaskRow,
    owner_id,
)
from ferry.engine.bandwidth import Window, limit_at, parse_policy
from ferry.engine.compare import ConsistencyCheck, OverwriteMode
from ferry.engine.copier import CopyOptions
from ferry.engine.pipeline import Transfer, TransferOptions
from ferry.engine.progress import Counters
from ferry.engine.restores import RestorePolicy
from ferry.errors import AccessError, FatalError, FerryError, LocalStateError, NotFoundError, SourceChangedError
from ferry.oms import COUNT_PROGRESS, LIST_FILE_MAX_BYTES, LIST_FILE_MAX_LINE
from ferry.runner import failed_lists
from ferry.runner.loop_thread import LoopThread
from ferry.runner.notices import EndNotifier, RunEnd
from ferry.settings import records_dir
from ferry.storage.base import Backend, LineTooLong, first_listed, ranged_lines
from ferry.storage.cdn_source import open_through_cdn
from ferry.storage.selection import SelectedBackend, normalise
from ferry.storage.stores import StoreAt, StoreKeys, open_at
from ferry.storage.url_source import UrlSource, parse_url_line
from ferry.storage.wrappers import BandwidthLimiter, RetryingBackend, ThrottledBackend, unwrap

if TYPE_CHECKING:
    from ferry.secrets import SecretBox

log = logging.getLogger("ferry.runner")

MiB: Final = 1024 * 1024


@dataclass(frozen=True)
class RunnerSettings:
    """How much runs at once and how often the runner talks to the database."""

    max_tasks: int = 5  # OMS runs at most 5 tasks per region at once
    concurrency: int = 64  # objects in flight per task
    memory_limit: int = 128 * MiB  # object data held in memory per task
    poll_interval: float = 2.0
    progress_interval: float = 1.0
    lease_ttl: float = 30.0
    retry_attempts: int = 3
    retry_delay: float = 10.0
    speed_window: float = 5.0
    max_wait: float = 30 * 86400.0  # OMS fails (TRF.0003) and wipes the keys of tasks waiting longer than this
    expiry_interval: float = 60.0
    # enable_restore: how often an archived object's restore is looked at (FERRY_RESTORE_POLL_SECONDS), and
    # how many days the restored copy stays readable.
    restore_poll_seconds: float = 600.0
    restore_days: int = 1
    # A run whose results cannot be recorded (the data directory's disk full, the database restarting or
    # locked) pauses in place this long, then ends in status 6 and is tried again after `fault_retry_delay`;
    # such a retry is not one of the `retry_attempts` (the task did nothing wrong).
    state_patience: float = 300.0
    fault_retry_delay: float = 30.0


class TaskFailure(Exception):
    """The task cannot go on: a TRF code and a message for `error_reason` (never holding a secret)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RunResult:
    tally: Tally
    listed_any: bool
    records: dict[str, Any] | None = None  # where the object lists went (with enable_failed_object_recording)


# -- mapping a store failure to the OMS task failure codes (§3.5) ---------------------------------------------

_CODES: Final = {
    # (source code, destination code) per S3 error
    "InvalidAccessKeyId": ("TRF.0151", "TRF.0057"),
    "SignatureDoesNotMatch": ("TRF.0151", "TRF.0057"),
    "AccessDenied": ("TRF.0152", "TRF.0051"),
    "NoSuchBucket": ("TRF.0155", "TRF.0058"),
}


def failure_for(side: str, exc: FatalError) -> TaskFailure:
    reason = f"{side}: {exc.message}"
    if isinstance(exc, AccessError):
        exc.side = exc.side or side
        keys = "src" if side == "source" else "dst"
        reason = f"{reason}; {exc.fix(f'{keys}_ak', f'{keys}_sk')}"[:1024]
    for marker, (src_code, dst_code) in _CODES.items():
        if marker in exc.message or (isinstance(exc, AccessError) and exc.s3_code == marker):
            return TaskFailure(src_code if side == "source" else dst_code, reason)
    if "HTTP 403" in exc.message:
        return TaskFailure("TRF.0152" if side == "source" else "TRF.0051", reason)
    return TaskFailure("TRF.0001", reason)


# -- building the stores of a task -------------------------------------------------------------------------


def open_store(spec: dict[str, Any], region: str, bucket: str, prefix: str, keys: StoreKeys,
               sse_kms_key_id: str | None = None) -> Backend:
    """The bucket `bucket` (under `prefix`) at a task's stored endpoint `spec` (service.tasks' endpoint spec)."""
    at = StoreAt(spec["profile"], spec["endpoint"], region, bucket, prefix, bool(spec.get("from_override")),
                 sse_kms_key_id)
    return open_at(at, keys)


def task_items(row: TaskRow, list_keys: Iterable[str] | None = None) -> list[tuple[str, bool]]:
    """What a task's source selection covers: prefixes (prefix task, folders of an object task) and keys."""
    chosen: list[str] = row.src_spec.get("object_key") or [""]
    if row.task_type == "prefix":
        return normalise(chosen, ())
    if row.task_type == "list":
        return normalise((), list_keys or ())
    folders = [k for k in chosen if k == "" or k.endswith("/")]
    return normalise(folders, [k for k in chosen if k and not k.endswith("/")])


async def list_file_lines(store: Backend, key: str, what: str) -> AsyncIterator[tuple[int, str]]:
    """`(number, text)` of the non-blank lines of a list file (UTF-8, a BOM tolerated), stripped, read line by
    line in ranges as task groups read theirs, so a 100 MB file is never held whole; TRF codes when unusable."""
    try:
        info = await store.head(key)
    except NotFoundError:
        raise TaskFailure("TRF.0013", f"the {what} does not exist") from None
    except FatalError as exc:
        raise TaskFailure("TRF.0013", f"the {what} cannot be read: {exc.message}") from None
    if info.size > LIST_FILE_MAX_BYTES:
        raise TaskFailure("TRF.0014", f"the {what} is larger than 100 MB")
    number = 0
    lines = ranged_lines(store, key, info.size, info.etag, max_line=4 * LIST_FILE_MAX_LINE + 2)
    try:
        async for raw, _ in lines:
            number += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise TaskFailure("TRF.0016", f"the {what} is not UTF-8 text") from None
            if number == 1:
                line = line.removeprefix("\ufeff")
            line = line.rstrip("\r")
            if len(line) > LIST_FILE_MAX_LINE:
                raise TaskFailure("TRF.0018", f"line {number} of the {what} is longer than {LIST_FILE_MAX_LINE}")
            line = line.strip()
            if line:
                yield number, line
    except LineTooLong:
        raise TaskFailure("TRF.0018", f"line {number + 1} of the {what} is longer than {LIST_FILE_MAX_LINE}") from None
    except (NotFoundError, SourceChangedError):
        raise TaskFailure("TRF.0013", f"the {what} changed while it was read") from None
    finally:
        await lines.aclose()


async def read_list_keys(store: Backend, key: str) -> list[str]:
    """Keys of an object-list file: one URL-encoded key per line."""
    keys = {unquote(line): None async for _, line in list_file_lines(store, key, "object list file")}
    if not keys:
        raise TaskFailure("TRF.0017", "the object list file is empty")
    return list(keys)


async def read_url_entries(store: Backend, key: str) -> list[tuple[str, str]]:
    """`(key, url)` pairs of a URL-list file (see storage.url_source.parse_url_line), sorted by key."""
    entries: dict[str, str] = {}
    async for number, line in list_file_lines(store, key, "URL list file"):
        try:
            obj, url = parse_url_line(line)
        except ValueError as exc:
            raise TaskFailure("TRF.0016", f"the URL list file is malformed: line {number}: {exc}") from None
        entries.setdefault(obj, url)
    if not entries:
        raise TaskFailure("TRF.0017", "the URL list file is empty")
    return sorted(entries.items())


def transfer_options(row: TaskRow, settings: RunnerSettings) -> TransferOptions:
    opts = row.options
    since = opts.get("migrate_since")
    return TransferOptions(
        overwrite=OverwriteMode(opts["object_overwrite_mode"]),
        copy=CopyOptions(
            consistency=ConsistencyCheck(opts["consistency_check"]),
            metadata=bool(opts.get("enable_metadata_migration")),
            storage_class=opts.get("dst_storage_policy"),  # resolved against the destination by the engine
            reread_size_only=bool(opts.get("ferry_reread_size_only")),
        ),
        migrate_since=float(since) if since else None,
        concurrency=settings.concurrency,
        memory_limit=settings.memory_limit,
        restore=RestorePolicy(settings.restore_days, settings.restore_poll_seconds)
        if opts.get("enable_restore") else None,
        state_patience=settings.state_patience,
    )


class LeftOut:
    """Keys a source's listing left out so far (not found; a URL that could not be fetched), each with why.

    No result of a transfer's covers them, and a run resuming after the watermark never looks at them again:
    each is recorded as failed in the write that moves the watermark past it (so a stop, a crash or a kill -9
    loses none), and those past the last watermark when the run ends."""

    def __init__(self, source: SelectedBackend) -> None:
        self.source = source
        self.fetched = unwrap(source)
        self.noted: set[str] = set()

    def take(self, upto: str | None = None, after: str | None = None) -> list[ObjectResult]:
        """As failed results, the left-out keys not noted yet, after `after` and up to `upto`. Called from the
        recording thread while the listing goes on: each collection is copied in one step (under the GIL)."""
        found = {k: "the source object does not exist" for k in self.source.missing.copy()}
        if isinstance(self.fetched, UrlSource):
            found.update(self.fetched.failed.copy())
        return [ObjectResult(k, "failed", 0, None, why) for k, why in sorted(found.items())
                if k not in self.noted and (upto is None or k <= upto) and (after is None or k > after)]

    def note(self, recorded: Iterable[ObjectResult]) -> None:
        self.noted.update(r.key for r in recorded)


class _LeftOutJobs(JobRepo):
    """The job's results, each watermark written with the left-out keys it passes (see LeftOut)."""

    def __init__(self, db: Engine | SqlConn, left_out: LeftOut) -> None:
        super().__init__(db)
        self.left_out = left_out

    def record(self, job_id: str, results: Sequence[ObjectResult], watermark: str | None = None) -> None:
        gone = self.left_out.take(watermark) if watermark is not None else []
        super().record(job_id, [*results, *gone], watermark)
        self.left_out.note(gone)


def record_line(r: ObjectResult, dst_prefix: str = "") -> str:
    """One line of an object list: `key` as the source knows it, `dst_key` under the save_prefix, the size, and
    why it failed or was skipped (or that a success was verified by its size only)."""
    entry: dict[str, Any] = {"key": r.key, "dst_key": dst_prefix + r.key, "size": r.size}
    if r.reason and r.status != "success":
        entry["reason"] = r.reason
    elif r.reason == SIZE_ONLY:
        entry["verified"] = "size only"  # the source gave no checksum to check the bytes by
    return json.dumps(entry, ensure_ascii=False) + "\n"


def write_records(jobs: JobRepo, job_id: str, directory: Path, dst_prefix: str = "") -> dict[str, Any]:
    """JSON lines (`record_line`) of failed, successful and skipped objects; the paths, or the error of a list
    not written."""
    out: dict[str, Any] = {}
    for status, name in (("failed", "failed"), ("success", "success"), ("skipped", "skip")):
        path = directory / f"{name}.jsonl"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as fh:
                for r in jobs.iter_results(job_id, status):
                    fh.write(record_line(r, dst_prefix))
            out[name] = str(path)
        except OSError as exc:
            out[f"{name}_error"] = f"OMS.{exc.errno or 0:04d}"[:10]
            found = classify(exc, StateStore(f"the object list {path}", path))
            log.warning("the object list %s was not written: %s", path,
                        found.message if found is not None else exc.strerror)
    return out


class _Speed:
    """Bytes per second over the last few seconds (what the console shows as the current speed)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.samples: list[tuple[float, int]] = []

    def update(self, now: float, copied: int) -> int:
        """`now` from a monotonic clock: a wall clock stepping back must not make a speed of it."""
        self.samples.append((now, copied))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.pop(0)
        t0, b0 = self.samples[0]
        # Bytes of an object that failed mid-copy are taken back out of `copied`: never a negative speed.
        return max(int((copied - b0) / (now - t0)), 0) if now > t0 else 0


def progress_values(row: TaskRow, c: Counters, speed: int) -> dict[str, Any]:
    complete = c.bytes_copied + c.bytes_skipped
    if row.task_type in COUNT_PROGRESS or not c.listed_bytes:
        progress = c.finished / c.listed if c.listed else 0.0
    else:
        progress = complete / c.listed_bytes
    left = None
    if c.listing_done:
        remaining = max(c.listed_bytes - complete, 0)
        left = 0 if remaining == 0 else (int(remaining / speed * 1000) if speed > 0 else None)
    return {
        "total_num": c.listed, "total_size": c.listed_bytes, "success_num": c.success, "skip_num": c.skipped,
        "fail_num": c.failed, "size_only_num": c.size_only, "complete_size": complete,
        "real_size": c.bytes_copied, "speed": speed, "restoring_num": c.restoring,
        "progress": min(max(progress, 0.0), 1.0), "left_time": left, "is_query_over": int(c.listing_done),
        # A run paused in place says why in error_reason, and the error clears when it moves again.
        "error_code": LocalStateError.code if c.waiting_on else None,
        "error_msg": f"Paused: {c.waiting_on}; the run goes on by itself once that passes" if c.waiting_on else None,
    }


def _tally_values(t: Tally) -> dict[str, Any]:
    return {
        "total_num": t.success + t.skipped + t.failed,
        "total_size": t.success_bytes + t.skipped_bytes + t.failed_bytes,
        "success_num": t.success, "skip_num": t.skipped, "fail_num": t.failed, "size_only_num": t.size_only,
        "complete_size": t.success_bytes + t.skipped_bytes, "real_size": t.success_bytes,
        "restoring_num": t.restoring,
    }


class LocalRunner(LoopThread):
    """Runs migration tasks in this process (see the module docstring)."""

    thread_name = "ferry-runner"

    def __init__(self, engine: Engine, box: SecretBox, data_dir: Path, settings: RunnerSettings | None = None, *,
                 publish_end: EndNotifier) -> None:
        super().__init__()
        self.settings = settings or RunnerSettings()
        self.tasks = TaskRepo(engine)
        self.jobs = JobRepo(engine)
        self.box = box
        self.data_dir = data_dir
        self.publish_end = publish_end
        self.owner = owner_id()
        self._fault_said: str | None = None

    def __repr__(self) -> str:
        return f"LocalRunner(owner={self.owner!r})"

    # start(), notify() (a task was created, started or stopped) and stop() come from LoopThread; stopping
    # cancels every run, and each leaves its task resumable and unleased.

    async def run(self) -> None:
        """Claim and run tasks until cancelled; on cancellation every run is stopped and released."""
        wake = self._wake_event()
        next_expiry = 0.0
        try:
            while True:
                wake.clear()
                if time.monotonic() >= next_expiry:
                    next_expiry = time.monotonic() + self.settings.expiry_interval
                    await self._expire_waiting()
                free = self.settings.max_tasks - len(self._active)
                if free > 0:
                    try:
                        claimed = await asyncio.to_thread(
                            self.tasks.claim, self.owner, self.settings.lease_ttl, free, self._retry_horizon,
                            [k for k in self._active if isinstance(k, int)])
                    except LocalStateError as exc:
                        if exc.message != self._fault_said:  # said once, not every poll
                            (log.error if not exc.passes else log.warning)("claiming tasks waits: %s", exc.message)
                        self._fault_said = exc.message
                        claimed = []
                    except Exception:
                        log.exception("claiming tasks failed")
                        claimed = []
                    else:
                        self._fault_said = None
                    for row in claimed:
                        self._spawn(row.id, self._execute(row), f"task-{row.id}")
                await wait_event(wake, self.settings.poll_interval)
        finally:
            await self._cancel_active()

    @property
    def _retry_horizon(self) -> float:
        """The longest wait the runner ever sets before a retry: a retry due further off than this was timed
        by a clock that has since stepped back, and is due now."""
        s = self.settings
        return float(max(s.retry_delay * 2 ** max(s.retry_attempts - 1, 0), s.fault_retry_delay) + s.lease_ttl)

    async def _expire_waiting(self) -> None:
        now = time.time()
        try:
            ids = await asyncio.to_thread(self.tasks.expire_waiting, now - self.settings.max_wait, {
                "error_code": "TRF.0003", "error_msg": "Waiting for execution timed out. Start the task again.",
                "finished_at": now, "secrets": None})
        except LocalStateError as exc:
            log.warning("failing long-waiting tasks waits: %s", exc.message)
            return
        except Exception:
            log.exception("failing long-waiting tasks failed")
            return
        for task_id in ids:
            log.info("task %d: failed TRF.0003 (waited longer than %.0f s)", task_id, self.settings.max_wait)
            await asyncio.to_thread(self._notify, task_id)

    async def _execute(self, row: TaskRow) -> None:
        s = self.settings
        counters = Counters()
        windows = parse_policy(row.bandwidth_policy)
        limiter = BandwidthLimiter(limit_at(windows, datetime.now()))
        now = time.time()
        # Durations (elapsed, speed, the lease's renewal) are measured on the monotonic clock: the wall clock
        # only stamps when things happened, and may step back under a run.
        started = time.monotonic()
        speed = _Speed(s.speed_window)
        first = {"run_started_at": now, "error_code": None, "error_msg": None, "finished_at": None,
                 "speed": 0, "left_time": None, "smn_result": None}
        if row.started_at is None:
            first["started_at"] = now
        try:
            if await asyncio.to_thread(self.tasks.heartbeat, row.id, self.owner, s.lease_ttl, first) is None:
                return
        except LocalStateError as exc:
            # Claimed but not started: the lease runs out and the task is claimed again once the database is back.
            log.warning("task %d: the run waits: %s", row.id, exc.message)
            return
        log.info("task %d: run started (%s)", row.id, row.run_mode)
        run = asyncio.create_task(self._run(row, counters, limiter))
        outcome = "done"
        fault: LocalStateError | None = None
        renewed = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({run}, timeout=s.progress_interval)
                if done:
                    break
                values = progress_values(row, counters, speed.update(time.monotonic(), counters.bytes_copied))
                try:
                    fresh = await asyncio.to_thread(self.tasks.heartbeat, row.id, self.owner, s.lease_ttl, values)
                except LocalStateError as exc:
                    # The run goes on (its results wait in memory); the lease must not run out meanwhile, or
                    # another runner could take the task while this one still copies.
                    if not exc.passes or time.monotonic() - renewed > s.lease_ttl / 2:
                        fault, outcome = exc, "fault"
                        run.cancel()
                        break
                    log.warning("task %d: progress not written: %s", row.id, exc.message)
                    continue
                renewed = time.monotonic()
                if fresh is None:
                    outcome = "lost"
                elif fresh.status == PAUSING:
                    outcome = "paused"
                if outcome != "done":
                    run.cancel()
                    break
                if fresh is not None and fresh.bandwidth_policy != row.bandwidth_policy:
                    windows = parse_policy(fresh.bandwidth_policy)
                    row = fresh
                self._apply_limit(limiter, windows)
            result: RunResult | BaseException
            try:
                result = await run
            except asyncio.CancelledError:
                result = asyncio.CancelledError() if fault is None else fault
            except BaseException as exc:  # every failure becomes a task state
                result = exc
        except asyncio.CancelledError:
            # The runner is shutting down: stop the run and leave the task to be resumed by the next runner.
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            try:
                await asyncio.to_thread(self._release, row, started, None, progress_values(row, counters, 0))
            except LocalStateError as exc:
                log.warning("task %d: not released (%s); it is taken up again when its lease runs out", row.id,
                            exc.message)
            raise
        if outcome == "lost":
            log.warning("task %d: lease lost; another runner owns it now", row.id)
            return
        if isinstance(result, RunResult) and row.options.get("enable_failed_object_recording"):
            try:
                result = dataclasses.replace(result, records=await self._write_records(row, result.tally.failed))
            except LocalStateError as exc:
                result = exc
        try:
            # A database restart just as the run ends must not lose how it ended.
            await asyncio.to_thread(patiently, lambda: self._settle(row, counters, started, outcome, result),
                                    s.lease_ttl / 2, what=f"task {row.id}: its end", log=log.warning)
        except LocalStateError as exc:
            log.error("task %d: how the run ended could not be written (%s); the task is taken up again when its "
                      "lease runs out, and resumes where its results were recorded", row.id, exc.message)

    def _apply_limit(self, limiter: BandwidthLimiter, windows: list[Window]) -> None:
        wanted = limit_at(windows, datetime.now())
        if wanted != limiter.limit:
            limiter.set_limit(wanted)

    # -- ending a run (in a worker thread) -------------------------------------------------------------------

    def _release(self, row: TaskRow, started: float, status: int | None, values: dict[str, Any]) -> None:
        """Write the run's final state, give up the lease, and mark the job accordingly."""
        final = {"speed": 0, **values, "elapsed": row.elapsed + (time.monotonic() - started)}
        if status is not None:
            final["status"] = status
        if not self.tasks.release(row.id, self.owner, final):
            return
        fresh = self.tasks.get(row.id)
        if fresh is not None and fresh.job_id is not None:
            self.jobs.set_status(fresh.job_id, {SUCCEEDED: "succeeded", FAILED: "failed"}.get(status or 0, "stopped"))

    def _settle(self, row: TaskRow, counters: Counters, started: float, outcome: str,
                result: RunResult | BaseException) -> None:
        self._settle_status(row, counters, started, outcome, result)
        self._notify(row.id)

    def _notify(self, task_id: int) -> None:
        """Publish the task-end SMN message once per finished run, if the task asked for one."""
        row = self.tasks.get(task_id)
        config = row.options.get("smn_config") if row is not None else None
        if row is None or not config or row.status not in (SUCCEEDED, FAILED) or row.smn_result is not None:
            return
        outcome = self.publish_end(RunEnd(
            project_id=row.project_id, config=config, succeeded=row.status == SUCCEEDED, name=row.name,
            started_at=row.started_at, seconds=row.elapsed, bytes_done=row.complete_size,
            src_bucket=row.src_spec.get("bucket"), dst_bucket=row.dst_spec["bucket"],
            list_file=row.src_spec.get("list_file"), records=row.records))
        self.tasks.transition(task_id, None, (row.status,), {"smn_result": outcome})

    def _settle_status(self, row: TaskRow, counters: Counters, started: float, outcome: str,
                       result: RunResult | BaseException) -> None:
        fresh = self.tasks.get(row.id) or row
        base: dict[str, Any] = {"left_time": None}
        # A run that ended on its own just as a stop arrived keeps its real outcome.
        if isinstance(result, asyncio.CancelledError):
            values = {**progress_values(row, counters, 0), **base, "secrets": None}
            self._release(fresh, started, PAUSED, values)
            log.info("task %d: paused", row.id)
            return
        if isinstance(result, RunResult):
            values = {**_tally_values(result.tally), "is_query_over": 1, "finished_at": time.time(), "secrets": None,
                      "error_code": None, "error_msg": None}
            status = SUCCEEDED
            if not result.listed_any:
                status = FAILED
                values.update(error_code="TRF.0012", error_msg="No objects were found for the chosen method.")
            elif result.tally.failed:
                status = FAILED
                values.update(error_code="FERRY.0422", error_msg=(
                    f"{result.tally.failed} objects failed to migrate; see the failed object list, or start the "
                    "task with migrate_failed_object to retry just those."))
            total = values["total_size"]
            values["progress"] = 1.0 if status == SUCCEEDED else (values["complete_size"] / total if total else 0.0)
            values["left_time"] = 0 if status == SUCCEEDED else None
            if result.records is not None:
                values["records"] = result.records
            self._release(fresh, started, status, values)
            log.info("task %d: %s (%d ok, %d skipped, %d failed)", row.id,
                     "succeeded" if status == SUCCEEDED else "failed", result.tally.success, result.tally.skipped,
                     result.tally.failed)
            return
        if isinstance(result, LocalStateError):
            # Ferry's own disk or database, not the task: it waits and is tried again, attempts untouched. What
            # was recorded stays done; nothing verified is copied again.
            delay = self.settings.fault_retry_delay
            values = {**progress_values(row, counters, 0), **base, "error_code": result.code,
                      "error_msg": f"Paused: {result.message}. Tried again in {delay:g} s.",
                      "retry_at": self.tasks.db_time(delay)}
            self._release(fresh, started, RETRYING, values)
            log.warning("task %d: paused, tried again in %g s: %s", row.id, delay, result.message)
            return
        if isinstance(result, AccessError):
            # Keys, a permission or a bucket to fix: retrying cannot help, and the task must say so.
            result = failure_for(result.side or "destination", result)
        if isinstance(result, TaskFailure):
            values = {**progress_values(row, counters, 0), **base, "error_code": result.code,
                      "error_msg": result.message, "finished_at": time.time(), "secrets": None}
            self._release(fresh, started, FAILED, values)
            log.info("task %d: failed %s", row.id, result.code)
            return
        # Anything else (a store that stayed unreachable, a bug): retry with backoff, then give up.
        attempts = fresh.attempts + 1
        if isinstance(result, FerryError):
            log.warning("task %d: run failed (%s): %s", row.id, type(result).__name__, result.message)
        else:
            log.error("task %d: run failed", row.id, exc_info=result)
        values = {**progress_values(row, counters, 0), **base, "attempts": attempts}
        # A FerryError's message is written for users (keys redacted); anything else is a bug, named by its type.
        cause = result.message if isinstance(result, FerryError) else f"internal error ({type(result).__name__})"
        if attempts >= self.settings.retry_attempts:
            values.update(error_code="TRF.0001", error_msg=f"System error after {attempts} attempts: {cause}. "
                          "Restart the task.", finished_at=time.time(), secrets=None)
            self._release(fresh, started, FAILED, values)
        else:
            delay = self.settings.retry_delay * 2 ** (attempts - 1)
            # Status 6 says why it waits and when it tries again, not only the server log.
            values.update(retry_at=self.tasks.db_time(delay), error_code="TRF.0001", error_msg=(
                f"Retrying in {delay:g} s (attempt {attempts + 1} of {self.settings.retry_attempts}) after: {cause}"))
            self._release(fresh, started, RETRYING, values)

    async def _write_records(self, row: TaskRow, failed: int) -> dict[str, Any] | None:
        """The run's object lists, under records/; the failed one (if anything failed) also into the destination
        bucket, as OMS does. Not being able to write it there does not fail the task: the local copy stays."""
        job_id = (await asyncio.to_thread(self.tasks.get, row.id) or row).job_id
        if job_id is None:
            return None
        records = await asyncio.to_thread(write_records, self.jobs, job_id,
                                          records_dir(self.data_dir, row.project_id, row.id),
                                          row.dst_spec.get("save_prefix") or "")
        local = records.pop("failed", None)
        if local is None or not failed:
            return records  # nothing failed: no list, as in OMS (a local write error stays in failed_error)
        records["failed_file"] = local
        key = failed_lists.task_list_key(row.name, row.group_id, time.time())
        try:
            # Bounded well within the lease, which nothing renews meanwhile.
            async with asyncio.timeout(self.settings.lease_ttl / 2):
                await self._upload_failed_list(row, key, Path(local))
        except Exception as exc:  # whatever it was, the run's outcome stands and the local copy is there
            why = exc.message if isinstance(exc, FerryError | TaskFailure) else type(exc).__name__
            log.warning("task %d: the failed object list was not written to the destination bucket (%s); "
                        "the server keeps it in %s", row.id, why, local)
            records["failed_error"] = failed_lists.UPLOAD_FAILED
        else:
            records["failed"] = key
        return records

    async def _upload_failed_list(self, row: TaskRow, key: str, path: Path) -> None:
        keys = self._credentials(row)
        spec = row.dst_spec
        # The bucket's root, whatever save_prefix the objects went under: where OMS writes its lists.
        store = open_store(spec, spec["region"], spec["bucket"], "", StoreKeys.of(keys, "dst"),
                           spec.get("kms_key_id"))
        try:
            with path.open("rb") as fh:
                await failed_lists.upload(RetryingBackend(store), key, fh, path.stat().st_size)
        finally:
            await store.close()

    # -- one run ---------------------------------------------------------------------------------------------

    def _credentials(self, row: TaskRow) -> dict[str, str]:
        if not row.secrets:
            raise TaskFailure("TRF.0001", "The task has no credentials; start it again with its keys.")
        try:
            return self.box.unseal(row.secrets)
        except FerryError:
            raise TaskFailure("TRF.0001", "The stored credentials cannot be decrypted; start the task again "
                                          "with its keys.") from None

    async def _run(self, row: TaskRow, counters: Counters, limiter: BandwidthLimiter) -> RunResult:
        keys = self._credentials(row)
        src_spec, dst_spec = row.src_spec, row.dst_spec
        raw_dst = open_store(dst_spec, dst_spec["region"], dst_spec["bucket"], dst_spec.get("save_prefix", ""),
                             StoreKeys.of(keys, "dst"), dst_spec.get("kms_key_id"))
        stores: list[Backend] = [raw_dst]
        dst: Backend = RetryingBackend(raw_dst)
        try:
            await self._preflight(dst, "destination")
            failed = await self._failed_keys(row) if row.run_mode == "failed_only" else None
            list_keys = None
            if row.task_type == "url_list" or (row.task_type == "list" and failed is None):
                list_file = src_spec["list_file"]
                lst = open_store(src_spec["list_endpoint"], dst_spec["region"], list_file["obs_bucket"], "",
                                 StoreKeys.of(keys, "dst"))
                stores.append(lst)
                list_store, list_key = RetryingBackend(lst), list_file["list_file_key"]
                if row.task_type == "list":
                    list_keys = await read_list_keys(list_store, list_key)
            url_source: UrlSource | None = None
            if row.task_type == "url_list":
                entries = await read_url_entries(list_store, list_key)
                if failed is not None:
                    wanted = set(failed)
                    entries = [e for e in entries if e[0] in wanted]
                url_source = UrlSource(entries, allowed_hosts=src_spec.get("allowed_hosts", ()))
                stores.append(url_source)
                raw_src: Backend = url_source
                src_items: list[tuple[str, bool]] = [("", True)]
                dst_items = normalise((), (k for k, _ in entries))
            else:
                raw_src = open_through_cdn(
                    open_store(src_spec, src_spec["region"], src_spec["real_bucket"], "", StoreKeys.of(keys, "src")),
                    src_spec.get("cdn"), keys.get("cdn_key"), keys.get("src_ak"), keys.get("src_sk"),
                    src_spec["real_bucket"])
                stores.append(raw_src)
                src_items = normalise((), failed) if failed is not None else task_items(row, list_keys)
                dst_items = src_items
            # Charged once per byte moved: on the source read (a streamed copy writes what it read).
            src: Backend = ThrottledBackend(RetryingBackend(raw_src), limiter)
            if url_source is None:
                await self._preflight(src, "source")
            source, target = SelectedBackend(src, src_items), SelectedBackend(dst, dst_items)
            result = await self._transfer(row, source, target, counters)
            # Everything the listing left out, counted now as before; a key a watermark passed was recorded with
            # it already (the same row again).
            rows = LeftOut(source).take()
            if rows:
                job_id = (await asyncio.to_thread(self.tasks.get, row.id) or row).job_id
                assert job_id is not None
                await asyncio.to_thread(self.jobs.record, job_id, rows)
                counters.failed += len(rows)
                counters.listed += len(rows)
                tally = await asyncio.to_thread(self.jobs.tally, job_id)
                result = RunResult(tally, True)
            return result
        finally:
            await asyncio.gather(*(b.close() for b in stores), return_exceptions=True)

    async def _failed_keys(self, row: TaskRow) -> list[str]:
        job_id = row.job_id
        if job_id is None:
            return []
        return await asyncio.to_thread(lambda: [r.key for r in self.jobs.iter_results(job_id, "failed")])

    @staticmethod
    async def _preflight(store: Backend, side: str) -> None:
        try:
            await first_listed(store)
        except FatalError as exc:
            raise failure_for(side, exc) from None

    async def _job_id(self, row: TaskRow) -> str:
        """The task's job (its per-object results), made at its first run."""
        if row.job_id is not None:
            return row.job_id
        job = await asyncio.to_thread(self.jobs.create, f"task:{row.id}", json.dumps({"task_id": row.id}))
        await asyncio.to_thread(self.tasks.heartbeat, row.id, self.owner, self.settings.lease_ttl, {"job_id": job.id})
        return job.id

    async def _transfer(self, row: TaskRow, source: Backend, target: Backend, counters: Counters) -> RunResult:
        jobs, tasks = self.jobs, self.tasks
        job_id = await self._job_id(row)
        mode = row.run_mode
        if mode in ("full", "failed_only"):
            await asyncio.to_thread(tasks.reset_watermark, job_id)
        if mode == "full":
            # From here a crash resumes from this run's watermark, which only covers keys it finished.
            await asyncio.to_thread(tasks.heartbeat, row.id, self.owner, self.settings.lease_ttl,
                                    {"run_mode": "resume"})
        job_row = await asyncio.to_thread(jobs.get, job_id)
        resume_after = job_row.watermark if (mode == "resume" and job_row is not None) else None
        prior = await asyncio.to_thread(jobs.tally, job_id)
        if mode != "resume":
            # Failed objects are planned again in this run and counted afresh.
            prior = dataclasses.replace(prior, failed=0, failed_bytes=0)
        await asyncio.to_thread(jobs.set_status, job_id, "running")
        recording = _LeftOutJobs(jobs.db, LeftOut(source)) if isinstance(source, SelectedBackend) else jobs
        transfer = Transfer(source, target, recording, job_id, transfer_options(row, self.settings), counters)
        await transfer.run(resume_after, prior)
        tally = await asyncio.to_thread(jobs.tally, job_id)
        return RunResult(tally, (tally.success + tally.skipped + tally.failed) > 0)
