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
on every worker; every prefix of the selection is its own range unit to begin with. A flat listing (a prefix
without sub-folders, or the objects directly in a folder so split) of a byte-ordered source is split by key
range too: once it has listed CUT_KEYS keys (and handed their copies on), the keys above are cut into up to
`list_ranges` ranges (after `start_after`, up to `end_key`) at bounds from a bounded skip-scan
(runner.key_ranges), not from listing them; the unit keeps the first range and hands the others on as range
units, in one transaction. A range unit lists both sides only within its range (a destination not in byte
order is read whole and filtered), sees only its range's finished keys, and is never cut again.

A keys unit copies its objects through the engine's Transfer (verification, multipart checkpoints, batched
results in the job, shared by every unit of the task) with its own watermark in its unit row; run again, it
resumes after that watermark and skips every key the job already has as succeeded or skipped. Keys units made
by the coordinator (a list task, the single keys of an object task, a rerun of failed objects) hold keys only
and look them up as an embedded run does; those of a URL-list task hold `(key, URL)` pairs (spec `urls`) and
fetch them as an embedded run does, each URL's host checked by storage.netguard on this worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
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
from ferry.engine.pipeline import StateWait, Transfer, TransferOptions, _finished_keys
from ferry.engine.planner import Action, Copy, Fail, KeyStream, Listing, Planner, Skip
from ferry.engine.progress import Counters
from ferry.errors import AccessError, FatalError, FerryError, TransientError
from ferry.objects import ObjectInfo
from ferry.runner.cluster_limits import ClusterRequestRate, RequestLimitedBackend, shared_task_limiter, source_rate_for
from ferry.runner.key_ranges import KeyRange, in_range, page_of, probe_bounds, ranged_listing, spans
from ferry.runner.migration import (
    LeftOut,
    RunnerSettings,
    TaskFailure,
    failure_for,
    open_store,
    transfer_options,
)
from ferry.runner.units import UnitCancelled, UnitContext, UnitFailed, handles
from ferry.storage.base import Backend, ListOrder, close_listing
from ferry.storage.cdn_source import open_through_cdn
from ferry.storage.selection import SelectedBackend, normalise
from ferry.storage.stores import StoreKeys
from ferry.storage.url_source import UrlSource
from ferry.storage.wrappers import BandwidthLimiter, RetryingBackend, ThrottledBackend, unwrap

log = logging.getLogger("ferry.worker")

RANGE: Final = "range"
KEYS: Final = "keys"
UNIT_KEYS: Final = 1000
UNIT_BYTES: Final = 1 << 30
FLUSH_SECONDS: Final = 1.0
MAX_DEPTH: Final = 4  # folder levels a listing is split down
MAX_FOLDERS: Final = 10_000  # a prefix with more sub-folders than this is listed whole, not split
LIST_RANGES: Final = 16  # key ranges a flat listing of a byte-ordered source is cut into (see range_unit)
CUT_KEYS: Final = 1000  # a listing of no more keys than this (one page) is not cut
# One-key listing requests a cut may take per range (at least 8 ranges' worth): the listing waits for them.
PROBES_PER_RANGE: Final = 8
FOLDER_PAGES: Final = 10  # folder-view requests a byte-ordered source's prefix is given to show its sub-folders
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
    embedded run's), and the keys it asks about as finished are only its own (its keys, or its prefix and key
    range).

    With `left_out` (runner.migration.LeftOut), each watermark it writes while the lease is the unit's carries
    the left-out keys it passes; `record_rest` records the others when the unit's run ends."""

    def __init__(self, engine: Engine, unit_id: int, owner: str, *, keys: Collection[str] | None = None,
                 prefix: str | None = None, span: KeyRange = (None, None), left_out: LeftOut | None = None) -> None:
        super().__init__(engine)
        self.engine = engine
        self.unit_id = unit_id
        self.owner = owner
        self.keys = None if keys is None else frozenset(keys)
        self.prefix = prefix or None
        self.left_out = left_out
        self.span = span

    def record(self, job_id: str, results: Sequence[ObjectResult], watermark: str | None = None) -> None:
        gone: list[ObjectResult] = []
        with self.engine.begin() as conn:
            record_on(conn, job_id, results)
            # Only while the unit is ours: a unit taken over keeps the watermark its new holder writes (and looks
            # its left-out keys up again).
            if watermark is not None and conn.execute(update(work_units).where(
                    work_units.c.id == self.unit_id, work_units.c.lease_owner == self.owner,
                    work_units.c.state == "running").values(watermark=watermark)).rowcount:
                gone = self.left_out.take(watermark) if self.left_out is not None else []
                record_on(conn, job_id, gone)
        if self.left_out is not None:
            self.left_out.note(gone)

    def record_rest(self, job_id: str, after: str | None) -> None:
        """Record the left-out keys after `after` that no watermark passed (the unit's run ended)."""
        if self.left_out is None:
            return
        gone = self.left_out.take(after=after)
        if gone:
            super().record(job_id, gone)
            self.left_out.note(gone)

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
        start, stop = self.span
        if start is not None:
            cond.append(key > start)
        if stop is not None:
            cond.append(key <= stop)
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
            if not in_range(result.key, self.span):
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
async def task_stores(ctx: UnitContext, row: TaskRow, urls: Sequence[tuple[str, str]] = ()
                      ) -> AsyncIterator[tuple[Backend, Backend]]:
    """The task's source (retried, throttled) and destination (retried), closed afterwards. A URL-list task's
    source is `urls` fetched as the embedded runner fetches them: the same UrlSource, under the allow-list of
    non-public hosts stored with the task when it was made (the server's decision, not this worker's)."""
    keys = _credentials(ctx, row)
    src_spec, dst_spec = row.src_spec, row.dst_spec
    limiter = task_limiter(ctx.engine, row)
    url_list = row.task_type == "url_list"
    # FERRY_SOURCE_REQUEST_RATE is a budget per source bucket: a URL list has none (nor has it embedded).
    rate = None if url_list else _source_rate(ctx.engine, src_spec)
    raw_dst = open_store(dst_spec, dst_spec["region"], dst_spec["bucket"], dst_spec.get("save_prefix", ""),
                         StoreKeys.of(keys, "dst"), dst_spec.get("kms_key_id"))
    stores: list[Backend] = [raw_dst]
    try:
        raw_src: Backend
        if url_list:
            raw_src = UrlSource(urls, allowed_hosts=src_spec.get("allowed_hosts", ()))
        else:
            raw_src = open_through_cdn(
                open_store(src_spec, src_spec["region"], src_spec["real_bucket"], "", StoreKeys.of(keys, "src")),
                src_spec.get("cdn"), keys.get("cdn_key"), keys.get("src_ak"), keys.get("src_sk"),
                src_spec["real_bucket"])
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


async def _page(lister: Any, prefix: str, token: str | None, start_after: str | None = None) -> Any:
    return await page_of(lister, prefix, delimiter="/", continuation=token, start_after=start_after)


async def _sub_folders(lister: Any, prefix: str, max_pages: int | None = None) -> list[str] | None:
    """The sub-folders of `prefix`; None when there are more than MAX_FOLDERS, or when finding them takes more
    than `max_pages` listing requests (the prefix is listed whole)."""
    found: set[str] = set()
    token: str | None = None
    pages = 0
    while True:
        page = await _page(lister, prefix, token)
        pages += 1
        found.update(p for p in page.prefixes if p != prefix and p.startswith(prefix))
        if len(found) > MAX_FOLDERS or (max_pages is not None and pages >= max_pages and page.truncated):
            return None
        if not page.truncated or not page.next_token or page.next_token == token:
            return sorted(found)
        token = page.next_token


async def _direct_objects(lister: Any, prefix: str, after: str | None, last: str | None = None,
                          ordered: bool = False) -> AsyncIterator[ObjectInfo]:
    """The objects directly in `prefix` (none of its sub-folders') in (after, last]. A byte-ordered store
    (`ordered`) is asked to start after `after` and is read up to the first key past `last`; any other is
    read whole and filtered."""
    token: str | None = None
    while True:
        page = await _page(lister, prefix, token, after if ordered and token is None else None)
        for obj in page.objects:
            if last is not None and obj.key > last:
                if ordered:
                    return
                continue
            if after is None or obj.key > after:
                yield obj
        if not page.truncated or not page.next_token or page.next_token == token:
            return
        token = page.next_token


class _Bound:
    """The end of a range unit's listing: its end key, or, while it may still be cut, none until the source has
    listed CUT_KEYS keys in order; then `cut(pos)` (pos: the last key listed) may set one above `pos`."""

    def __init__(self, last: str | None, cut: Callable[[str], Awaitable[str | None]] | None) -> None:
        self.last = last
        self.cut = cut

    async def source(self, keys: AsyncIterator[ObjectInfo], after: str | None) -> AsyncIterator[ObjectInfo]:
        """The source's (byte-ordered) listing up to the end, cut when due."""
        seen, pos = 0, after
        try:
            async for info in keys:
                if self.cut is not None and seen >= CUT_KEYS and pos is not None:
                    cut, self.cut = self.cut, None
                    self.last = await cut(pos) or self.last
                if self.last is not None and info.key > self.last:
                    return
                seen, pos = seen + 1, info.key
                yield info
        finally:
            await close_listing(keys)

    async def other(self, keys: AsyncIterator[ObjectInfo], ordered: bool) -> AsyncIterator[ObjectInfo]:
        """The destination's listing without what is past the end (read on to its end if not in order)."""
        try:
            async for info in keys:
                if self.last is not None and info.key > self.last:
                    if ordered:
                        return
                    continue
                yield info
        finally:
            await close_listing(keys)


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
    ranges = int(ctx.settings.get("list_ranges", LIST_RANGES))
    crc_mode = opts.overwrite is OverwriteMode.CRC64_COMPARISON_OVERWRITE
    span: KeyRange = (unit.start_after, unit.end_key)
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
            src_ordered = src_store.capabilities.list_order is ListOrder.LEXICOGRAPHIC
            dst_ordered = dst_store.capabilities.list_order is ListOrder.LEXICOGRAPHIC
            if (prefix is not None and not direct and after is None and span == (None, None) and depth < MAX_DEPTH
                    and not row.src_spec.get("cdn") and src_lister is not None and dst_lister is not None):
                # The folder view pages through every object of the prefix too: on a byte-ordered source a
                # prefix with more than FOLDER_PAGES pages of it is cut by key instead (see cut_at), so that
                # a huge flat prefix is not listed once before its first copy (100,000 flat keys, 2 workers:
                # first copy 6.0 -> 1.3 s, bench/key_ranges.py --objects 100000 --ranges 1).
                folders = await _sub_folders(src_lister, prefix, FOLDER_PAGES if src_ordered else None)
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
            repo = ScopedJobRepo(ctx.engine, unit.id, ctx.owner, prefix=prefix, span=span)

            async def cut_at(pos: str) -> str | None:
                """Cut the keys above `pos` into ranges; this unit's new end key (None: not cut)."""
                started = time.monotonic()
                await flush()  # the copies listed so far go out before the listing waits for the probe
                try:
                    bounds = await probe_bounds(src_store, ranges, PROBES_PER_RANGE * max(8, ranges), prefix or "", pos)
                except TransientError as exc:
                    log.warning("unit %d: not cut into key ranges: %s", unit.id, exc.message)
                    return None
                if not bounds:
                    return None
                cut = spans(bounds)
                drafts = [UnitDraft(RANGE, a, b, spec={**unit.spec, "direct": direct}) for a, b in cut[1:]]
                ids = await asyncio.to_thread(units.split, unit.id, ctx.owner, drafts, {"end_key": bounds[0]})
                if ids is None:
                    raise UnitCancelled(f"unit {unit.id}: the lease is no longer ours")
                repo.span = (span[0], bounds[0])
                log.info("unit %d: %r cut into %d key ranges at %r after %.2f s of probing", unit.id, prefix,
                         len(cut), pos, time.monotonic() - started)
                if send is not None:
                    with contextlib.suppress(Exception):  # else the coordinator sends them
                        await asyncio.to_thread(send, ids)
                return bounds[0]

            # A flat listing (no sub-folders, or the objects directly in a folder) of a byte-ordered source is
            # cut into key ranges once it has passed CUT_KEYS keys: the first page's copies are out by then,
            # and a smaller listing is not worth a probe. A unit with a range (cut, or made by a cut) never is.
            # The destination must list in order too: else every range would read all of it (16 ranges of a
            # rerun into 1M keys: 16M listed to plan 1M).
            cuttable = (prefix is not None and span == (None, None) and ranges > 1 and src_ordered
                        and dst_ordered and not row.src_spec.get("cdn"))
            bound = _Bound(span[1], cut_at if cuttable else None)
            finished = _finished_keys(repo, job_id, after, StateWait(opts.state_patience, Counters()))
            if direct and prefix is not None and src_lister is not None and dst_lister is not None:
                # A byte-ordered store lists a folder's own objects in order too: merged as they stream.
                planner = range_planner(
                    bound.source(_direct_objects(src_lister, prefix, after, span[1], src_ordered), after),
                    src_store.capabilities.list_order,
                    bound.other(_direct_objects(dst_lister, prefix, after, span[1], dst_ordered), dst_ordered),
                    dst_store.capabilities.list_order, opts, finished=finished,
                    max_key_bytes=dst.capabilities.max_key_bytes)
            else:
                planner = range_planner(
                    bound.source(ranged_listing(src, after, span[1]), after), src.capabilities.list_order,
                    bound.other(ranged_listing(dst, after, span[1]), dst_ordered), dst.capabilities.list_order,
                    opts, finished=finished, max_key_bytes=dst.capabilities.max_key_bytes)
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
    urls = [(str(k), str(u)) for k, u in unit.spec.get("urls", ())]
    after = unit.watermark or unit.start_after
    try:
        async with task_stores(ctx, row, urls) as (src_store, dst_store):
            repo: ScopedJobRepo
            if entries is not None:
                actions = sorted((decode_action(e) for e in entries), key=lambda a: a.src.key)
                repo = ScopedJobRepo(ctx.engine, unit.id, ctx.owner, keys=[a.src.key for a in actions])
                transfer: Transfer = PlannedTransfer(src_store, dst_store, repo, job_id, opts, counters,
                                                     actions=actions, slots=slots)
            else:
                # Keys looked up (HEAD), or a URL list whose whole (unit's) list is the source's listing, each
                # URL's HEAD on the way, as the embedded run has it.
                keys = [k for k, _ in urls] or [str(k) for k in unit.spec["keys"]]
                source = SelectedBackend(src_store, [("", True)] if urls else normalise((), keys))
                repo = ScopedJobRepo(ctx.engine, unit.id, ctx.owner, keys=keys, left_out=LeftOut(source))
                transfer = SharedTransfer(source, SelectedBackend(dst_store, normalise((), keys)), repo, job_id,
                                          opts, counters, slots=slots)
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
            await asyncio.to_thread(repo.record_rest, job_id, after)
    except FatalError as exc:
        raise _as_failure(exc) from None
