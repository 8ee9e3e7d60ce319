"""Migration tasks on workers (distributed mode): `range` units list and plan a part of a task, `keys` units copy.

A range unit lists one prefix of the task's selection on both sides and plans it as an embedded run does
(engine.planner.Planner, skipping what the job already has as finished). It records skips and failures itself
and hands the objects to copy on in `keys` units of at most `unit_keys` objects or `unit_bytes` bytes (each
entry carries what the listing said of the object, so nothing is listed or looked up twice). Each batch, its
results and the range unit's watermark are one transaction: a range unit run again resumes after its
watermark and never hands out a key twice. The first batch goes out after the first page of the listing, or
after `flush_seconds` on a slow one, so copying starts within seconds however large the bucket, while listing
goes on. Listing is sharded by folder: a range unit whose prefix has sub-folders (a delimiter listing, on
stores that have one, both sides) hands each sub-folder on as a range unit of its own (down to `MAX_DEPTH`
levels) and keeps only the objects directly in its prefix, so the folders of a bucket are listed in parallel
on every worker; every prefix of the selection is its own range unit to begin with.

A keys unit copies its objects through the engine's Transfer (verification, multipart checkpoints, batched
results in the job, shared by every unit of the task) with its own watermark in its unit row; run again, it
resumes after that watermark and skips every key the job already has as succeeded or skipped. Keys units made
by the coordinator (a list task, the single keys of an object task, a rerun of failed objects) hold keys only
and look them up as an embedded run does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

from sqlalchemy import Engine, and_, select, update

from ferry.db.cluster_models import work_units
from ferry.db.job_repo import JobRepo, ObjectResult, Tally, record_on
from ferry.db.models import job_objects
from ferry.db.task_repo import RUNNING, TaskRepo, TaskRow
from ferry.db.unit_repo import UnitDraft, UnitRepo, UnitRow
from ferry.engine.bandwidth import parse_policy
from ferry.engine.compare import OverwriteMode, SkipReason
from ferry.engine.pipeline import StateWait, Transfer, TransferOptions, _finished_keys, _listing
from ferry.engine.planner import Action, Copy, Fail, KeyStream, Listing, Planner, Skip
from ferry.engine.progress import Counters
from ferry.errors import AccessError, FatalError, FerryError, TransientError
from ferry.objects import ObjectInfo
from ferry.runner.cluster_limits import ClusterRequestRate, RequestLimitedBackend, shared_task_limiter, source_rate_for
from ferry.runner.migration import RunnerSettings, TaskFailure, failure_for, open_store, transfer_options
from ferry.runner.units import UnitCancelled, UnitContext, UnitFailed, handles
from ferry.storage.base import Backend, ListOrder
from ferry.storage.cdn_source import open_through_cdn
from ferry.storage.selection import SelectedBackend, normalise
from ferry.storage.stores import StoreKeys
from ferry.storage.wrappers import BandwidthLimiter, RetryingBackend, ThrottledBackend, unwrap

log = logging.getLogger("ferry.worker")

RANGE: Final = "range"
KEYS: Final = "keys"
UNIT_KEYS: Final = 1000
UNIT_BYTES: Final = 1 << 30
FLUSH_SECONDS: Final = 1.0
MAX_DEPTH: Final = 4  # folder levels a listing is split down
MAX_FOLDERS: Final = 10_000  # a prefix with more sub-folders than this is listed whole, not split
# Records a side a range unit's planner sorts in memory before spilling a run (an unordered listing: SeaweedFS,
# any overridden endpoint). A worker runs up to --threads range units at once, each sorting both sides: at the
# embedded 100,000 one worker peaked at 164 MB in a 1M-key in-step rerun, at 20,000 at 114 MB, in the same CPU
# time (`bench/huge_bucket.py worker --keys 1000000 --in-place`, `--baseline-src` the tree before).
SORT_RUN: Final = 20_000
_OBJECT_FIELDS: Final = tuple(f.name for f in dataclasses.fields(ObjectInfo) if f.name not in ("meta", "restore"))


# -- what a keys unit's entry holds ------------------------------------------------------------------------------


def encode_action(action: Copy | Skip) -> dict[str, Any]:
    """An action as a keys unit's spec keeps it: the listed object's fields, the action and its reason."""
    obj = {name: value for name in _OBJECT_FIELDS if (value := getattr(action.src, name)) is not None}
    return {"o": obj, "a": "copy" if isinstance(action, Copy) else "skip", "r": action.reason.value}


def decode_action(entry: dict[str, Any]) -> Copy | Skip:
    from ferry.engine.compare import CopyReason

    obj = ObjectInfo(**entry["o"])
    if entry["a"] == "copy":
        return Copy(obj, None, CopyReason(entry["r"]))
    return Skip(obj, SkipReason(entry["r"]))


def prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with `prefix` (None: there is none, or no prefix)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


# -- the job's results, seen from one unit ---------------------------------------------------------------------


class ScopedJobRepo(JobRepo):
    """The task's job results as one unit sees them: its watermark goes into its own unit row (the job's is the
    embedded run's), and the keys it asks about as finished are only its own (its keys, or its prefix)."""

    def __init__(self, engine: Engine, unit_id: int, owner: str, *, keys: Collection[str] | None = None,
                 prefix: str | None = None) -> None:
        super().__init__(engine)
        self.engine = engine
        self.unit_id = unit_id
        self.owner = owner
        self.keys = None if keys is None else frozenset(keys)
        self.prefix = prefix or None

    def record(self, job_id: str, results: Sequence[ObjectResult], watermark: str | None = None) -> None:
        with self.engine.begin() as conn:
            record_on(conn, job_id, results)
            if watermark is not None:
                # Only while the unit is ours: a unit taken over keeps the watermark its new holder writes.
                conn.execute(update(work_units).where(
                    work_units.c.id == self.unit_id, work_units.c.lease_owner == self.owner,
                    work_units.c.state == "running").values(watermark=watermark))

    def _key(self) -> Any:
        key = job_objects.c.key
        return key.collate("C") if self.engine.dialect.name == "postgresql" else key

    def iter_finished_keys(self, job_id: str, after: str | None = None, batch: int = 5000) -> Iterator[str]:
        done = job_objects.c.status.in_(("success", "skipped"))
        if self.keys is not None:
            found: list[str] = []
            keys = sorted(k for k in self.keys if after is None or k > after)
            with self.engine.connect() as conn:
                for i in range(0, len(keys), 500):
                    chunk = keys[i:i + 500]
                    found.extend(r[0] for r in conn.execute(select(job_objects.c.key).where(
                        job_objects.c.job_id == job_id, done, job_objects.c.key.in_(chunk))))
            yield from sorted(found)
            return
        key = self._key()
        cond = [job_objects.c.job_id == job_id, done]
        if self.prefix is not None:
            cond.append(key >= self.prefix)
            end = prefix_end(self.prefix)
            if end is not None:
                cond.append(key < end)
        last = after
        while True:
            since = [] if last is None else [key > last]
            with self.engine.connect() as conn:
                page = [r[0] for r in conn.execute(select(job_objects.c.key).where(and_(*cond, *since))
                                                   .order_by(key).limit(batch))]
            yield from page
            if len(page) < batch:
                return
            last = page[-1]

    def iter_results(self, job_id: str, status: str, batch: int = 5000) -> Iterator[ObjectResult]:
        for result in super().iter_results(job_id, status, batch):
            if self.keys is not None and result.key not in self.keys:
                continue
            if self.prefix is not None and not result.key.startswith(self.prefix):
                continue
            yield result


# -- the task and its stores --------------------------------------------------------------------------------


def _task(engine: Engine, unit: UnitRow) -> tuple[TaskRow, str]:
    row = TaskRepo(engine).get(int(unit.owner_id))
    if row is None or row.status != RUNNING or row.job_id is None:
        raise UnitCancelled(f"task {unit.owner_id} is not running")
    return row, row.job_id


def _credentials(ctx: UnitContext, row: TaskRow) -> dict[str, str]:
    if not row.secrets:
        raise UnitFailed("TRF.0001 The task has no credentials; start it again with its keys.")
    try:
        return ctx.box.unseal(row.secrets)
    except FerryError:
        raise UnitFailed("TRF.0001 The stored credentials cannot be decrypted by a worker: is its FERRY_MASTER_KEY "
                         "the server's?") from None


def task_limiter(engine: Engine, row: TaskRow) -> BandwidthLimiter:
    """The task's bandwidth policy as one budget for every unit of it on every worker (runner.cluster_limits):
    one limiter per task in this process, so tokens a finished unit took are spent by the next, at the window
    in force and following the windows while units run."""
    return shared_task_limiter(engine, row.id, parse_policy(row.bandwidth_policy))


def _source_rate(engine: Engine, spec: dict[str, Any]) -> ClusterRequestRate | None:
    """FERRY_SOURCE_REQUEST_RATE as one budget per source bucket for the whole cluster (None: unlimited). A
    source without a stored endpoint (a cloud's endpoint from its profile) is named by profile and region."""
    parts = urlsplit(str(spec.get("endpoint") or ""))
    if parts.scheme and parts.hostname:
        port = f":{parts.port}" if parts.port else ""
        where = f"{parts.scheme}://{parts.hostname}{port}"
    else:
        where = f"{spec.get('profile')}/{spec.get('region')}"
    return source_rate_for(engine, where, str(spec["real_bucket"]))


@contextlib.asynccontextmanager
async def task_stores(ctx: UnitContext, row: TaskRow) -> AsyncIterator[tuple[Backend, Backend]]:
    """The task's source (retried, throttled) and destination (retried), closed afterwards."""
    keys = _credentials(ctx, row)
    src_spec, dst_spec = row.src_spec, row.dst_spec
    limiter = task_limiter(ctx.engine, row)
    rate = _source_rate(ctx.engine, src_spec)
    raw_dst = open_store(dst_spec, dst_spec["region"], dst_spec["bucket"], dst_spec.get("save_prefix", ""),
                         StoreKeys.of(keys, "dst"), dst_spec.get("kms_key_id"))
    stores: list[Backend] = [raw_dst]
    try:
        raw_src = open_through_cdn(
            open_store(src_spec, src_spec["region"], src_spec["real_bucket"], "", StoreKeys.of(keys, "src")),
            src_spec.get("cdn"), keys.get("cdn_key"), keys.get("src_ak"), keys.get("src_sk"), src_spec["real_bucket"])
        stores.append(raw_src)
        # Retries are charged to the request rate too: the limiter sits under the retrying wrapper.
        counted: Backend = raw_src if rate is None else RequestLimitedBackend(raw_src, rate)
        yield ThrottledBackend(RetryingBackend(counted), limiter), RetryingBackend(raw_dst)
    finally:
        await asyncio.gather(*(b.close() for b in stores), return_exceptions=True)


def _as_failure(exc: FatalError) -> UnitFailed:
    side = exc.side if isinstance(exc, AccessError) and exc.side else "source"
    failure: TaskFailure = failure_for(side, exc)
    return UnitFailed(f"{failure.code} {failure.message}")


# -- range units ------------------------------------------------------------------------------------------------


def range_planner(source: Listing, source_order: ListOrder, destination: Listing, destination_order: ListOrder,
                  opts: TransferOptions, *, finished: KeyStream, max_key_bytes: int | None) -> Planner:
    """A range unit's plan: an embedded run's, with unordered listings sorted in runs of SORT_RUN records."""
    return Planner(source, source_order, destination, destination_order, finished=finished,
                   overwrite_mode=opts.overwrite, migrate_since=opts.migrate_since, max_key_bytes=max_key_bytes,
                   run_size=SORT_RUN)


def _folder_lister(store: Backend) -> Any:
    """The store's one-request folder listing (`list_page` with a delimiter), or None when it has none."""
    inner = unwrap(store)
    return inner if callable(getattr(inner, "list_page", None)) else None


async def _page(lister: Any, prefix: str, token: str | None) -> Any:
    delay = 0.5
    for attempt in range(5):
        try:
            return await lister.list_page(prefix, delimiter="/", continuation=token)
        except TransientError:
            if attempt == 4:
                raise
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


async def _sub_folders(lister: Any, prefix: str) -> list[str] | None:
    """The sub-folders of `prefix`; None when there are more than MAX_FOLDERS (the prefix is listed whole)."""
    found: set[str] = set()
    token: str | None = None
    while True:
        page = await _page(lister, prefix, token)
        found.update(p for p in page.prefixes if p != prefix and p.startswith(prefix))
        if len(found) > MAX_FOLDERS:
            return None
        if not page.truncated or not page.next_token or page.next_token == token:
            return sorted(found)
        token = page.next_token


async def _direct_objects(lister: Any, prefix: str, after: str | None) -> AsyncIterator[ObjectInfo]:
    """The objects directly in `prefix` (none of its sub-folders'), after `after`."""
    token: str | None = None
    while True:
        page = await _page(lister, prefix, token)
        for obj in page.objects:
            if after is None or obj.key > after:
                yield obj
        if not page.truncated or not page.next_token or page.next_token == token:
            return
        token = page.next_token


@handles(RANGE)
async def range_unit(unit: UnitRow, ctx: UnitContext) -> None:
    """List and plan one prefix of a task; record skips and failures; hand copies on as keys units."""
    row, job_id = await asyncio.to_thread(_task, ctx.engine, unit)
    items = [(str(text), bool(is_prefix)) for text, is_prefix in unit.spec["items"]]
    prefix = items[0][0] if len(items) == 1 and items[0][1] else None
    opts = transfer_options(row, RunnerSettings())
    unit_keys = int(ctx.settings.get("unit_keys", UNIT_KEYS))
    unit_bytes = int(ctx.settings.get("unit_bytes", UNIT_BYTES))
    flush_seconds = float(ctx.settings.get("flush_seconds", FLUSH_SECONDS))
    send = ctx.settings.get("send")
    crc_mode = opts.overwrite is OverwriteMode.CRC64_COMPARISON_OVERWRITE
    repo = ScopedJobRepo(ctx.engine, unit.id, ctx.owner, prefix=prefix)
    units = UnitRepo(ctx.engine)
    progress = ctx.progress
    progress.listed, progress.listed_bytes = unit.listed, unit.listed_bytes
    after = unit.watermark or unit.start_after
    batch: list[dict[str, Any]] = []
    batch_bytes = 0
    results: list[ObjectResult] = []
    last_key: str | None = None
    flushed = time.monotonic()

    async def flush() -> None:
        nonlocal batch, batch_bytes, results, flushed
        drafts = [UnitDraft(KEYS, spec={"objects": batch})] if batch else []
        values: dict[str, Any] = {"listed": progress.listed, "listed_bytes": progress.listed_bytes}
        if last_key is not None:
            values["watermark"] = last_key
        recorded = list(results)
        ids = await asyncio.to_thread(units.split, unit.id, ctx.owner, drafts, values,
                                      lambda conn: record_on(conn, job_id, recorded))
        if ids is None:
            raise UnitCancelled(f"unit {unit.id}: the lease is no longer ours")
        progress.watermark = last_key
        batch, batch_bytes, results, flushed = [], 0, [], time.monotonic()
        if ids and send is not None:
            try:
                await asyncio.to_thread(send, ids)
            except Exception as exc:  # the coordinator sends them again: they wait in the database
                log.warning("unit %d: the units it made were not sent (%s)", unit.id, type(exc).__name__)

    try:
        async with task_stores(ctx, row) as (src_store, dst_store):
            src, dst = SelectedBackend(src_store, items), SelectedBackend(dst_store, items)
            src_lister, dst_lister = _folder_lister(src_store), _folder_lister(dst_store)
            direct = bool(unit.spec.get("direct"))
            depth = int(unit.spec.get("depth", 0))
            if (prefix is not None and not direct and after is None and depth < MAX_DEPTH
                    and not row.src_spec.get("cdn") and src_lister is not None and dst_lister is not None):
                folders = await _sub_folders(src_lister, prefix)
                if folders:
                    # Each sub-folder becomes a range unit of its own; this one keeps the objects directly in
                    # its prefix. One transaction: a unit run again finds itself split already ("direct").
                    drafts = [UnitDraft(RANGE, spec={"items": [[f, True]], "depth": depth + 1}) for f in folders]
                    spec = json.dumps({**unit.spec, "direct": True}, separators=(",", ":"))
                    ids = await asyncio.to_thread(units.split, unit.id, ctx.owner, drafts, {"spec": spec})
                    if ids is None:
                        raise UnitCancelled(f"unit {unit.id}: the lease is no longer ours")
                    direct = True
                    if send is not None:
                        with contextlib.suppress(Exception):  # else the coordinator sends them
                            await asyncio.to_thread(send, ids)
            wait = StateWait(opts.state_patience, Counters())
            finished = _finished_keys(repo, job_id, after, wait)
            if direct and prefix is not None and src_lister is not None and dst_lister is not None:
                planner = range_planner(
                    _direct_objects(src_lister, prefix, after), ListOrder.UNORDERED,
                    _direct_objects(dst_lister, prefix, after), ListOrder.UNORDERED, opts, finished=finished,
                    max_key_bytes=dst.capabilities.max_key_bytes)
            else:
                planner = range_planner(
                    _listing(src, after), src.capabilities.list_order, _listing(dst, after),
                    dst.capabilities.list_order, opts, finished=finished, max_key_bytes=dst.capabilities.max_key_bytes)
            try:
                async for action in planner:
                    key = action.src.key
                    last_key = key
                    if isinstance(action, Skip) and action.reason is SkipReason.ALREADY_DONE:
                        continue
                    progress.listed += 1
                    progress.listed_bytes += action.src.size
                    if isinstance(action, Fail):
                        results.append(ObjectResult(key, "failed", action.src.size, action.src.etag, action.reason))
                    elif isinstance(action, Skip) and not (crc_mode and action.reason is
                                                           SkipReason.SAME_SIZE_NOT_OLDER):
                        results.append(ObjectResult(key, "skipped", action.src.size, action.src.etag,
                                                    action.reason.value))
                    else:
                        batch.append(encode_action(action))
                        batch_bytes += action.src.size
                    if (len(batch) >= unit_keys or batch_bytes >= unit_bytes or len(results) >= 2000
                            or (batch and time.monotonic() - flushed >= flush_seconds)):
                        await flush()
                    if ctx.stop.is_set():
                        break
            finally:
                await planner.aclose()
            await flush()
    except FatalError as exc:
        raise _as_failure(exc) from None


# -- keys units ---------------------------------------------------------------------------------------------------


class SharedTransfer(Transfer):
    """A Transfer whose objects in flight count against the worker process's `slots`, shared by every unit it
    runs: a unit running alone (the last of a task, say) moves as many objects at once as two running side by
    side, not half as many."""

    def __init__(self, *args: Any, slots: asyncio.Semaphore | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots = slots

    async def _handle(self, action: Action) -> ObjectResult:
        if self.slots is None:
            return await super()._handle(action)
        async with self.slots:
            return await super()._handle(action)


class PlannedTransfer(SharedTransfer):
    """A Transfer over actions planned already (by a range unit) instead of over two listings."""

    def __init__(self, *args: Any, actions: list[Copy | Skip], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.actions = actions

    async def _dispatch(self, queue: asyncio.Queue[tuple[int, Action] | None], resume_after: str | None) -> None:
        done = set(await asyncio.to_thread(lambda: list(self.repo.iter_finished_keys(self.job_id, resume_after))))
        seq = 0
        for action in self.actions:
            key = action.src.key
            if resume_after is not None and key <= resume_after:
                continue
            if key in done:
                self.recorder.complete(seq, key, None)
            else:
                self.counters.listed += 1
                self.counters.listed_bytes += action.src.size
                await self.recorder.wait_window(seq)
                await queue.put((seq, action))
            seq += 1
        self.counters.listing_done = True


def _sync_progress(ctx: UnitContext, c: Counters) -> None:
    p = ctx.progress
    p.listed, p.listed_bytes = c.listed, c.listed_bytes
    p.objects_done, p.bytes_done = c.finished, c.bytes_copied + c.bytes_skipped


@handles(KEYS)
async def keys_unit(unit: UnitRow, ctx: UnitContext) -> None:
    """Copy a batch of objects of a task (see the module docstring)."""
    row, job_id = await asyncio.to_thread(_task, ctx.engine, unit)
    settings = RunnerSettings(concurrency=int(ctx.settings.get("concurrency", 64)),
                              memory_limit=int(ctx.settings.get("memory_limit", 128 << 20)))
    opts = transfer_options(row, settings)
    slots: asyncio.Semaphore | None = ctx.settings.get("slots")
    counters = Counters()
    entries = unit.spec.get("objects")
    after = unit.watermark or unit.start_after
    try:
        async with task_stores(ctx, row) as (src_store, dst_store):
            source: SelectedBackend | None = None
            if entries is not None:
                actions = sorted((decode_action(e) for e in entries), key=lambda a: a.src.key)
                repo = ScopedJobRepo(ctx.engine, unit.id, ctx.owner, keys=[a.src.key for a in actions])
                transfer: Transfer = PlannedTransfer(src_store, dst_store, repo, job_id, opts, counters,
                                                     actions=actions, slots=slots)
            else:
                keys = [str(k) for k in unit.spec["keys"]]
                items = normalise((), keys)
                repo = ScopedJobRepo(ctx.engine, unit.id, ctx.owner, keys=keys)
                source = SelectedBackend(src_store, items)
                transfer = SharedTransfer(source, SelectedBackend(dst_store, items), repo, job_id, opts, counters,
                                          slots=slots)
            run = asyncio.create_task(transfer.run(after, Tally(0, 0, 0, 0, 0, 0, 0, 0)))
            stop = asyncio.create_task(ctx.stop.wait())
            try:
                while not run.done():
                    await asyncio.wait({run, stop}, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                    _sync_progress(ctx, counters)
                    if stop.done() and not run.done():
                        run.cancel()  # the worker drains or lost the lease: what is done is recorded
                        with contextlib.suppress(asyncio.CancelledError):
                            await run
                        return
                await run
            finally:
                stop.cancel()
                if not run.done():
                    run.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await run
                _sync_progress(ctx, counters)
            if source is not None and source.missing:
                gone = [ObjectResult(k, "failed", 0, None, "the source object does not exist")
                        for k in sorted(set(source.missing)) if after is None or k > after]
                await asyncio.to_thread(JobRepo(ctx.engine).record, job_id, gone)
    except FatalError as exc:
        raise _as_failure(exc) from None
