"""Streaming planner: merges source and destination listings into one copy/skip/fail action per source key, and
on request (`march`) one DstOnly per destination key with no source twin, in the same single pass.

Both listings are brought into ascending key order and merged like a sorted join, so memory does not grow
with the bucket. Python compares `str` by code point, and UTF-8 was designed so that byte order equals code
point order; comparing keys as `str` is therefore exactly the byte order S3 lists in, without encoding every
key (tests/unit/test_planner.py checks this on random unicode). A listing declared LEXICOGRAPHIC is merged as
it streams and its order is verified on the way (ListingOrderError when it goes backwards). An UNORDERED
listing (SeaweedFS's directory order, say) is first put into order by an external merge sort: sorted runs of
`run_size` records are spilled to private temp files and merged with heapq.merge. Memory is then bounded by
about two runs (both sides sort at once) plus `fan_in` small read buffers per side, whatever the bucket size.

Guarantees: exactly one action per distinct source key, yielded in ascending key order (so "every key up to
here is planned" is a valid checkpoint); when a listing repeats a key the first record wins; destination
objects with no source twin produce no action and are never touched, unless `march()` is asked for them (sync
reconciliation propagating deletes): then each comes as one DstOnly, in its place in the same ascending order,
as rclone's march names SrcOnly / DstOnly / Match from one walk of both listings.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import marshal
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any, cast

from ferry.engine.compare import DEFAULT_OVERWRITE_MODE, CopyReason, OverwriteMode, SkipReason, decide
from ferry.errors import FatalError, ListingOrderError
from ferry.objects import ObjectInfo
from ferry.storage.base import ListOrder, close_listing

__all__ = ["Action", "Copy", "DstOnly", "Fail", "Listing", "PlanStats", "Planner", "SideStats", "Skip"]

Listing = AsyncIterable[ObjectInfo] | Iterable[ObjectInfo]
KeyStream = AsyncIterable[str] | Iterable[str]


@dataclass(frozen=True, slots=True)
class Copy:
    """Write `src` to the destination; `dst` is the object it replaces, None when there is none."""

    src: ObjectInfo
    dst: ObjectInfo | None
    reason: CopyReason


@dataclass(frozen=True, slots=True)
class Skip:
    """Leave `src` alone, for `reason`."""

    src: ObjectInfo
    reason: SkipReason


@dataclass(frozen=True, slots=True)
class Fail:
    """`src` cannot be migrated at all; `reason` is shown to the user and recorded as the failure."""

    src: ObjectInfo
    reason: str


Action = Copy | Skip | Fail


@dataclass(frozen=True, slots=True)
class DstOnly:
    """`dst` has no source twin (only `Planner.march` says so)."""

    dst: ObjectInfo


@dataclass(slots=True)
class SideStats:
    """Counters of one listing, live while the plan runs."""

    listed: int = 0  # records read from the listing, duplicates included
    duplicates: int = 0  # records dropped because their key was already seen
    spilled_runs: int = 0  # sorted runs the external sort wrote to disk


@dataclass(slots=True)
class PlanStats:
    """Live counters of a plan, for progress; final once the planner is exhausted."""

    source: SideStats = field(default_factory=SideStats)
    destination: SideStats = field(default_factory=SideStats)
    copies: int = 0
    copy_bytes: int = 0
    skips: int = 0
    skip_bytes: int = 0
    failures: int = 0
    destination_only: int = 0  # DstOnly yielded (by march only)
    copied_by_reason: dict[CopyReason, int] = field(default_factory=lambda: dict.fromkeys(CopyReason, 0))
    skipped_by_reason: dict[SkipReason, int] = field(default_factory=lambda: dict.fromkeys(SkipReason, 0))

    @property
    def planned(self) -> int:
        return self.copies + self.skips + self.failures


# --- external sort ------------------------------------------------------------------------------------------

# Runs are frames of `<u32 length><marshal of a list of row tuples>`. marshal is C-speed both ways for the
# plain str/int/float/None rows we write, and the files are private to this process (0700 directory, deleted
# when the plan ends), so the usual "don't load untrusted marshal data" concern does not arise.
_Row = tuple[str, int, float, str | None, str | None, int | None]
_to_row = attrgetter("key", "size", "mtime", "etag", "storage_class", "crc64")
_row_key = itemgetter(0)
_by_key = attrgetter("key")
_FRAME = struct.Struct("<I")
_FRAME_ROWS = 512  # rows per frame: merging holds one frame per run, so fan_in * this many rows per side


def _write_rows(path: str, rows: Iterable[_Row]) -> None:
    with open(path, "wb") as out:
        it = iter(rows)
        while chunk := list(itertools.islice(it, _FRAME_ROWS)):
            blob = marshal.dumps(chunk)
            out.write(_FRAME.pack(len(blob)))
            out.write(blob)


def _read_rows(path: str) -> Iterator[_Row]:
    try:
        with open(path, "rb") as src:
            read = src.read
            while header := read(4):
                (size,) = _FRAME.unpack(header)
                yield from marshal.loads(read(size))
    finally:
        # A run is read exactly once; dropping it as soon as it is consumed halves peak disk use. When the
        # plan is abandoned the whole directory may already be gone.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class _ExternalSorter:
    """Sorts one listing by key into an iterator of ObjectInfo, spilling runs when it outgrows memory.

    Sorting is stable and runs are merged in input order, so the first of several records of one key comes
    out first. Records come back without `meta` (listings never fill it).
    """

    def __init__(self, side: str, stats: SideStats, run_size: int, fan_in: int, spill_dir: _SpillDir) -> None:
        self._side = side
        self._stats = stats
        self._run_size = run_size
        self._fan_in = fan_in
        self._spill_dir = spill_dir
        self._names = itertools.count()

    def _new_path(self) -> str:
        return os.path.join(self._spill_dir.path(), f"{self._side}-{next(self._names)}.run")

    def _spill(self, run: list[ObjectInfo]) -> str:
        run.sort(key=_by_key)
        path = self._new_path()
        _write_rows(path, map(_to_row, run))
        return path

    def _merge_files(self, paths: list[str]) -> str:
        if len(paths) == 1:
            return paths[0]
        path = self._new_path()
        _write_rows(path, heapq.merge(*map(_read_rows, paths), key=_row_key))
        return path

    async def _in_thread(self, work: Callable[[list[Any]], str], arg: list[Any]) -> str:
        # Sorting and writing 100k records takes ~0.1 s: off the event loop, other tasks keep running.
        try:
            return await asyncio.to_thread(work, arg)
        except OSError as exc:
            # A full or unwritable temp disk stops every plan alike: a run-level failure, not an object's.
            raise FatalError(f"the planner cannot write its sort runs to disk: {exc.strerror or exc}") from exc

    async def sort(self, listing: Listing) -> tuple[Iterator[ObjectInfo], Callable[[], None] | None]:
        """The records of `listing` in key order, and a function that releases the runs if not exhausted."""
        stats = self._stats
        run_size = self._run_size
        runs: list[str] = []
        buf: list[ObjectInfo] = []
        if isinstance(listing, AsyncIterable):
            async for obj in listing:
                buf.append(obj)
                stats.listed += 1
                if len(buf) >= run_size:
                    runs.append(await self._in_thread(self._spill, buf))
                    stats.spilled_runs += 1
                    buf = []
        else:
            it = iter(listing)  # a plain iterable is taken a run at a time, at C speed
            while len(buf := list(itertools.islice(it, run_size))) == run_size:
                stats.listed += run_size
                runs.append(await self._in_thread(self._spill, buf))
                stats.spilled_runs += 1
            stats.listed += len(buf)
        if not runs:
            buf.sort(key=_by_key)
            return iter(buf), None
        if buf:
            # Spill the tail too: holding it through the merge would double the peak while the other side
            # is still sorting.
            runs.append(await self._in_thread(self._spill, buf))
            stats.spilled_runs += 1
            del buf
        while len(runs) > self._fan_in:
            # Level by level, consecutive groups, so stability (first record of a key wins) survives.
            groups = [runs[i : i + self._fan_in] for i in range(0, len(runs), self._fan_in)]
            runs = [await self._in_thread(self._merge_files, group) for group in groups]
        rows = heapq.merge(*map(_read_rows, runs), key=_row_key)
        return itertools.starmap(ObjectInfo, rows), rows.close


class _SpillDir:
    """A private temp directory created on first use and removed with everything in it."""

    def __init__(self, parent: str | None) -> None:
        self._parent = parent
        self._path: str | None = None
        self._lock = threading.Lock()  # both sides spill from worker threads; one directory, not two

    def path(self) -> str:
        with self._lock:
            if self._path is None:
                self._path = tempfile.mkdtemp(prefix="ferry-plan-", dir=self._parent)
            return self._path

    def remove(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None


# --- the merge ---------------------------------------------------------------------------------------------


class _Cursor:
    """The next distinct record of an ascending stream; drops repeats, raises if the stream goes backwards."""

    __slots__ = ("_async", "_close", "_count_listed", "_it", "_last", "_stats", "_what")

    def __init__(
        self,
        stream: AsyncIterable[Any] | Iterable[Any],
        what: str,
        stats: SideStats,
        *,
        count_listed: bool = True,
        close: Callable[[], None] | None = None,
    ) -> None:
        self._async = isinstance(stream, AsyncIterable)
        self._it: Any = aiter(stream) if isinstance(stream, AsyncIterable) else iter(stream)
        self._what = what
        self._stats = stats
        self._count_listed = count_listed  # False when the external sort already counted the records
        self._close = close
        self._last: str | None = None

    @property
    def is_async(self) -> bool:
        return self._async

    @property
    def promised_order(self) -> bool:
        """True for a listing that declared itself sorted; False for one we sorted ourselves."""
        return self._count_listed

    # Sync and async twins: plain lists and spilled runs are sync, and skipping a coroutine per record makes
    # the whole plan about a third faster.
    def next_object(self) -> ObjectInfo | None:
        while (obj := next(self._it, None)) is not None:
            if self._accept(obj.key):
                return obj  # type: ignore[no-any-return]
        return None

    async def anext_object(self) -> ObjectInfo | None:
        while (obj := await anext(self._it, None)) is not None:
            if self._accept(obj.key):
                return obj  # type: ignore[no-any-return]
        return None

    async def next_key(self) -> str | None:
        while True:
            key = await anext(self._it, None) if self._async else next(self._it, None)
            if key is None or self._accept(key):
                return key  # type: ignore[no-any-return]

    def _accept(self, key: str) -> bool:
        if self._count_listed:
            self._stats.listed += 1
        last = self._last
        if last is None or key > last:
            self._last = key
            return True
        self._repeat_or_raise(last, key)
        return False

    def _repeat_or_raise(self, last: str, key: str) -> None:
        if key != last:
            raise ListingOrderError(
                f"the {self._what} promised ascending key order but yielded {key!r} after {last!r}", key=key
            )
        self._stats.duplicates += 1

    async def aclose(self) -> None:
        if self._close is not None:
            self._close()
        # Stopping a backend's listing early (the destination past the last source key) must still release
        # its HTTP response.
        await close_listing(self._it)


class Planner:
    """Plans a migration from two listings: `async for action in Planner(...)` (or `planner.march()` to hear of
    destination-only keys as well), with `stats` live meanwhile.

    `finished` is an ascending stream of keys already completed earlier in this run (from the resume
    database); those sources are skipped as ALREADY_DONE. `max_key_bytes` (the destination's limit) turns
    longer keys into Fail actions. A Planner is iterated once; `aclose()` (or exhausting it) removes its spill
    files. Inputs may be async or plain iterables.
    """

    def __init__(
        self,
        source: Listing,
        source_order: ListOrder,
        destination: Listing,
        destination_order: ListOrder,
        *,
        finished: KeyStream | None = None,
        overwrite_mode: OverwriteMode = DEFAULT_OVERWRITE_MODE,
        migrate_since: float | None = None,
        max_key_bytes: int | None = None,
        run_size: int = 100_000,
        fan_in: int = 64,
        spill_dir: str | None = None,
    ) -> None:
        if run_size < 1 or fan_in < 2:
            raise ValueError("run_size must be >= 1 and fan_in >= 2")
        self.stats = PlanStats()
        self._source = source
        self._source_order = source_order
        self._destination = destination
        self._destination_order = destination_order
        self._finished = finished
        self._mode = overwrite_mode
        self._migrate_since = migrate_since
        self._max_key_bytes = max_key_bytes
        self._run_size = run_size
        self._fan_in = fan_in
        self._spill = _SpillDir(spill_dir)
        self._actions: AsyncGenerator[Action | DstOnly, None] | None = None

    def __aiter__(self) -> AsyncIterator[Action]:
        # Without destination_only the walk yields source actions alone.
        return cast("AsyncIterator[Action]", self._walk(destination_only=False))

    def march(self) -> AsyncIterator[Action | DstOnly]:
        """The same plan with a DstOnly for each destination key that has no source twin, in key order."""
        return self._walk(destination_only=True)

    def _walk(self, destination_only: bool) -> AsyncIterator[Action | DstOnly]:
        if self._actions is None:
            self._actions = self._plan(destination_only)
        return self._actions

    async def aclose(self) -> None:
        if self._actions is not None:
            await self._actions.aclose()
        self._spill.remove()

    async def _cursor(self, listing: Listing, order: ListOrder, side: str, stats: SideStats) -> _Cursor:
        what = f"{side} listing"
        if order is ListOrder.LEXICOGRAPHIC:
            return _Cursor(listing, what, stats)
        sorter = _ExternalSorter(side, stats, self._run_size, self._fan_in, self._spill)
        ordered, release = await sorter.sort(listing)
        return _Cursor(ordered, what, stats, count_listed=False, close=release)

    async def _plan(self, destination_only: bool) -> AsyncGenerator[Action | DstOnly, None]:
        stats = self.stats
        cursors: list[_Cursor] = []
        try:
            # Both sides list (and sort, if they must) at once: listing is network-bound on each side. Not a
            # TaskGroup: callers must see a listing's own FerryError (transient? fatal?), not an ExceptionGroup.
            tasks = [
                asyncio.ensure_future(self._cursor(self._source, self._source_order, "source", stats.source)),
                asyncio.ensure_future(
                    self._cursor(self._destination, self._destination_order, "destination", stats.destination)
                ),
            ]
            try:
                src, dst = await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                for result in await asyncio.gather(*tasks, return_exceptions=True):
                    if isinstance(result, _Cursor):
                        cursors.append(result)
                raise
            cursors += [src, dst]
            fin = None
            if self._finished is not None:
                fin = _Cursor(self._finished, "record of finished keys", SideStats(), count_listed=False)
                cursors.append(fin)

            # Runs once per source key, millions of times: everything it touches is bound to a local first.
            mode, since, max_bytes = self._mode, self._migrate_since, self._max_key_bytes
            copied_by, skipped_by = stats.copied_by_reason, stats.skipped_by_reason
            already_done = SkipReason.ALREADY_DONE
            src_async, dst_async = src.is_async, dst.is_async
            d = await dst.anext_object() if dst_async else dst.next_object()
            f = await fin.next_key() if fin is not None else None
            n = 0
            while (s := await src.anext_object() if src_async else src.next_object()) is not None:
                key = s.key
                while d is not None and d.key < key:
                    if destination_only:
                        stats.destination_only += 1
                        yield DstOnly(d)
                    d = await dst.anext_object() if dst_async else dst.next_object()
                twin = d if d is not None and d.key == key else None
                if twin is not None and destination_only:
                    d = await dst.anext_object() if dst_async else dst.next_object()  # past it: it has a source
                while f is not None and f < key:
                    f = await fin.next_key()  # type: ignore[union-attr]
                action: Action
                reason = already_done if f == key else decide(s, twin, mode, since)
                if isinstance(reason, SkipReason):
                    action = Skip(s, reason)
                    stats.skips += 1
                    stats.skip_bytes += s.size
                    skipped_by[reason] += 1
                # Only what would be copied can fail: an over-long key that is skipped anyway harms nothing.
                # (len * 4 bounds the UTF-8 length, so most keys are cleared without encoding them.)
                elif max_bytes is not None and len(key) * 4 > max_bytes and _utf8_len(key) > max_bytes:
                    action = Fail(s, f"key is {_utf8_len(key)} bytes; the destination allows {max_bytes}")
                    stats.failures += 1
                else:
                    action = Copy(s, twin, reason)
                    stats.copies += 1
                    stats.copy_bytes += s.size
                    copied_by[reason] += 1
                yield action
                n += 1
                if not n & 0xFFF:
                    # Plain-list or spilled inputs never suspend; let the loop breathe every 4k keys.
                    await asyncio.sleep(0)
            if dst.promised_order or destination_only:
                # A backwards step after the last source key would have hidden a twin, turning a skip into a
                # copy (an overwrite under NO_OVERWRITE). Reading the promised-sorted destination to its end is
                # the only way to be sure it kept its promise; the tail is usually short.
                while d is not None:
                    if destination_only:
                        stats.destination_only += 1
                        yield DstOnly(d)
                    d = await dst.anext_object() if dst_async else dst.next_object()
        finally:
            try:
                for cursor in cursors:
                    await cursor.aclose()
            finally:
                self._spill.remove()


def _utf8_len(key: str) -> int:
    return len(key.encode("utf-8", "surrogatepass"))
