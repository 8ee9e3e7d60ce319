"""Key ranges of a task's listing in distributed mode: the bounds and ranges cover every key once (a key equal to
a bound in exactly one range, unicode keys included), and a flat prefix of a byte-ordered source is cut into range
units that hand every key on exactly once, even with a unit killed after its cut or mid-range (SQLite, PostgreSQL)."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, update

from ferry.db.cluster_models import work_units
from ferry.db.job_repo import JobRepo, ObjectResult
from ferry.db.unit_repo import UnitDraft, UnitRepo, UnitRow
from ferry.objects import ObjectMeta
from ferry.runner import task_units
from ferry.runner.key_ranges import TOP, in_range, probe_bounds, ranged_listing, spans
from ferry.runner.task_units import RANGE, ScopedJobRepo, range_unit
from ferry.runner.units import UnitContext
from ferry.secrets import SecretBox
from ferry.storage.base import Backend, Capabilities, ListOrder
from ferry.storage.memory import MemoryBackend
from ferry.storage.s3 import ListPage
from ferry.storage.wrappers import BackendWrapper

# 45 first characters (ASCII, Latin, CJK, the last BMP character, an emoji) under one flat prefix, 61 keys each:
# cut after its first 1,000 keys, the rest still has more than 16 of them, so the skip-scan stops at the first
# level (4 ranges) and every bound is `flat/<c>` + U+10FFFF, a key itself.
FIRSTS = "0123456789ABCDEFGHIJKLMNOPQRSTabcdefghij~é中\uffff\U0001f600"
FLAT = ([f"flat/{c}{i:03d}" for c in FIRSTS for i in range(60)] + [f"flat/{c}{TOP}" for c in FIRSTS]
        + [f"flat/{c}{TOP}z" for c in "aé\uffff"])
OUTSIDE = ["flat", "flat0", "flas/z", "zz"]


class Unordered(BackendWrapper):
    """The same bucket, declared to list in no particular order (as an operator-mapped store is)."""

    @property
    def capabilities(self) -> Capabilities:
        from dataclasses import replace

        return replace(self.inner.capabilities, list_order=ListOrder.UNORDERED)


class Paged(MemoryBackend):
    """A memory bucket with the S3 family's one-request listing (`list_page`: a folder view with a delimiter,
    start-after, continuation, max-keys), counting its requests and the keys they return."""

    requests = 0
    returned = 0

    async def list_page(self, prefix: str = "", *, delimiter: str = "", start_after: str | None = None,
                        continuation: str | None = None, max_keys: int = 1000) -> ListPage:
        self.requests += 1
        after = continuation if continuation is not None else start_after
        objects: list[Any] = []
        prefixes: list[str] = []
        last: str | None = None
        async for info in self.list(prefix, after):
            if len(objects) + len(prefixes) >= max_keys:
                self.returned += len(objects)
                return ListPage(objects, prefixes, True, last)
            cut = info.key.find(delimiter, len(prefix)) if delimiter else -1
            if cut < 0:
                objects.append(info)
                last = info.key
            elif (folder := info.key[:cut + 1]) not in prefixes:
                prefixes.append(folder)
                last = folder + TOP  # the next page starts after the whole folder
        self.returned += len(objects)
        return ListPage(objects, prefixes, False, None)


async def _bucket(name: str, keys: list[str], paged: bool = False) -> MemoryBackend:
    backend = Paged(bucket=name) if paged else MemoryBackend(bucket=name)
    for key in keys:
        await backend.put(key, key.encode(), ObjectMeta(content_type="text/plain"))
    return backend


def test_spans_are_contiguous_and_a_key_equal_to_a_bound_is_in_exactly_one() -> None:
    bounds = ["b", "b\U0010ffff", "é"]
    cut = spans(bounds)
    assert cut == [(None, "b"), ("b", "b\U0010ffff"), ("b\U0010ffff", "é"), ("é", None)]
    assert spans([], "a", "c") == [("a", "c")]
    for key in ["", "a", "b", "b\x00", "b\U0010ffff", "b\U0010ffff\x00", "c", "é", "é\x00", "\U0001f600"]:
        assert sum(in_range(key, s) for s in cut) == 1, key
    assert [in_range(k, ("b", "b\U0010ffff")) for k in ("b", "b\x00", "b\U0010ffff")] == [False, True, True]


@pytest.mark.parametrize("ordered", [True, False])
async def test_ranged_listings_of_the_spans_are_the_listing_cut_in_pieces(ordered: bool) -> None:
    src = await _bucket("src", FLAT[::7] + OUTSIDE)
    backend: Backend = src if ordered else Unordered(src)
    whole = sorted(o.key for o in [o async for o in src.list()])
    bounds = ["flat/a", f"flat/a{TOP}", "flat/é050", f"flat/{TOP}"]
    pieces = [sorted([o.key async for o in ranged_listing(backend, a, b)]) for a, b in spans(bounds)]
    assert [k for piece in pieces for k in piece] == whole
    assert pieces[1] == [k for k in whole if "flat/a" < k <= f"flat/a{TOP}"] and pieces[1]
    # An empty range is an empty listing.
    assert [o async for o in ranged_listing(backend, "flat/a000", "flat/a0000")] == []


def _spread(bounds: list[str], keys: list[str]) -> list[int]:
    cut = spans(bounds)
    counts = Counter(next(i for i, s in enumerate(cut) if in_range(k, s)) for k in keys)
    return [counts[i] for i in range(len(cut))]


async def test_bounds_under_a_prefix_or_above_a_floor_stay_there_and_spread_its_keys() -> None:
    src = await _bucket("src", FLAT + OUTSIDE)
    bounds = await probe_bounds(src, 4, 64, "flat/")
    assert len(bounds) == 3 and all(b.startswith("flat/") and b.endswith(TOP) and b in FLAT for b in bounds), bounds
    assert max(_spread(bounds, FLAT)) <= len(FLAT) * 0.4
    # Above a floor (where a unit's listing got to): every bound is above it, the keys above it spread.
    floor = "flat/F030"
    above = await probe_bounds(src, 4, 64, "flat/", floor)
    rest = [k for k in FLAT if k > floor]
    assert len(above) == 3 and all(b > floor for b in above)
    assert _spread(above, rest)[0] > 0 and max(_spread(above, rest)) <= len(rest) * 0.4
    # Out of probes on the first level, the branches found still cut it (the rest goes to the last range).
    few = await probe_bounds(src, 4, 10, "flat/")
    assert len(few) == 3 and 0 < _spread(few, FLAT)[0] < len(FLAT) // 4
    # A store with one-request listings is probed one key per request, to the same bounds.
    paged = await _bucket("paged", FLAT + OUTSIDE, paged=True)
    assert isinstance(paged, Paged)
    assert await probe_bounds(paged, 4, 64, "flat/") == bounds
    assert paged.returned <= paged.requests <= 64
    assert await probe_bounds(await _bucket("empty", OUTSIDE), 4, 32, "flat/") == []
    assert await probe_bounds(await _bucket("one", ["flat/only"]), 4, 32, "flat/") == []


async def test_a_level_that_would_run_out_of_probes_half_way_is_not_begun() -> None:
    # 8 first characters, 16 second ones under each: the first level (9 probes) gives 4 ranges a branch each;
    # the second would take ~72 of the 55 probes left and be thrown away half-done.
    src = await _bucket("src", [f"k/{a}{b}{i}" for a in "01234567" for b in "0123456789abcdef" for i in range(3)])
    calls = 0

    class Counting(BackendWrapper):
        def list(self, prefix: str = "", start_after: str | None = None):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            return self.inner.list(prefix, start_after)

    bounds = await probe_bounds(Counting(src), 4, 64, "k/")
    assert bounds == [f"k/1{TOP}", f"k/3{TOP}", f"k/5{TOP}"] and calls <= 10, (bounds, calls)


def test_a_units_finished_keys_are_those_of_its_key_range(engine: Engine) -> None:
    jobs, units = JobRepo(engine), UnitRepo(engine)
    job = jobs.create("task:9", "{}")
    done = ["flat/a", "flat/a ", f"flat/a{TOP}", "flat/b", "flat/é", "flat/\U0001f600", "flas/z"]
    jobs.record(job.id, [ObjectResult(k, "success", 1, None, None) for k in done])
    (unit_id,) = units.add("task", "9", 1, [UnitDraft(RANGE, "flat/a", f"flat/a{TOP}", {"items": [["flat/", True]]})])
    scoped = ScopedJobRepo(engine, unit_id, "w1", prefix="flat/", span=("flat/a", f"flat/a{TOP}"))
    assert list(scoped.iter_finished_keys(job.id)) == ["flat/a ", f"flat/a{TOP}"]
    tail = ScopedJobRepo(engine, unit_id, "w1", prefix="flat/", span=(f"flat/a{TOP}", None))
    # Byte order on both databases: U+1F600 (F0 9F ...) sorts after é (C3 A9).
    assert list(tail.iter_finished_keys(job.id, batch=2)) == ["flat/b", "flat/é", "flat/\U0001f600"]
    assert [r.key for r in tail.iter_results(job.id, "success")] == ["flat/b", "flat/é", "flat/\U0001f600"]


# -- range units cut and run in process -----------------------------------------------------------------------


class _Killed(BaseException):
    """The worker process is gone (nothing after this point of the unit runs)."""


class _Run:
    """Range units of one task run here as a worker runs them, over two in-memory buckets."""

    def __init__(self, engine: Engine, tmp: Path, src: Backend, dst: Backend, job_id: str) -> None:
        self.engine, self.tmp, self.job_id = engine, tmp, job_id
        self.units = UnitRepo(engine)
        self.src, self.dst = src, dst
        self.settings: dict[str, Any] = {"unit_keys": 50, "list_ranges": 4}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        row = SimpleNamespace(id=9, options={"object_overwrite_mode": "NO_OVERWRITE",
                                             "consistency_check": "size_last_modified"}, src_spec={})

        @contextlib.asynccontextmanager
        async def stores(ctx: UnitContext, row: Any) -> AsyncIterator[tuple[Backend, Backend]]:
            yield self.src, self.dst

        monkeypatch.setattr(task_units, "_task", lambda engine, unit: (row, self.job_id))
        monkeypatch.setattr(task_units, "task_stores", stores)

    async def run(self, unit_id: int, owner: str, kill_after_sends: int | None = None,
                  kill_at_cut: bool = False) -> UnitRow:
        """Claim and run the unit; with `kill_after_sends`, its worker dies (as on kill -9) once the unit has
        handed on that many batches of units (`kill_at_cut`: once it has handed on range units), leaving it
        running for another to take over."""
        unit = self.units.claim(unit_id, owner, 30)
        assert unit is not None
        ctx = UnitContext(self.engine, SecretBox(b"k" * 32), owner, self.tmp, settings=dict(self.settings))
        sends: list[list[int]] = []

        def send(ids: list[int]) -> None:
            sends.append(ids)
            if kill_after_sends is not None and len(sends) >= kill_after_sends:
                raise _Killed
            if kill_at_cut and any(u.kind == RANGE for u in map(self.units.get, ids) if u is not None):
                raise _Killed

        ctx.settings = {**ctx.settings, "send": send}
        try:
            await range_unit(unit, ctx)
        except _Killed:
            with self.engine.begin() as conn:  # the lease runs out
                conn.execute(update(work_units).where(work_units.c.id == unit_id).values(
                    lease_expires=time.time() - 100))
        else:
            assert kill_after_sends is None and not kill_at_cut
            assert self.units.finish(unit_id, owner, values=ctx.progress.values())
        got = self.units.get(unit_id)
        assert got is not None
        return got

    def of_kind(self, kind: str) -> list[UnitRow]:
        return [u for u in self.units.of_owner("task", "9", 1, ("queued", "running", "done"), 100_000)
                if u.kind == kind]

    def handed_on(self) -> Counter[str]:
        return Counter(e["o"]["key"] for u in self.of_kind("keys") for e in u.spec["objects"])


async def test_a_flat_prefix_is_cut_into_range_units_that_hand_on_every_key_once(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = await _bucket("src", FLAT + OUTSIDE)
    dst = await _bucket("dst", [])
    jobs = JobRepo(engine)
    job = jobs.create("task:9", "{}")
    # Some keys are done already, one of them a bound of the cut: no range hands them on.
    done = ["flat/0000", f"flat/a{TOP}", f"flat/j{TOP}", "flat/é059", "flat/\uffff000"]
    jobs.record(job.id, [ObjectResult(k, "success", len(k.encode()), None, None) for k in done])
    run = _Run(engine, tmp_path, src, dst, job.id)
    run.install(monkeypatch)
    (parent,) = run.units.add("task", "9", 1, [UnitDraft(RANGE, spec={"items": [["flat/", True]]})])

    # The parent hands on its first keys, cuts the rest of its prefix, hands the ranges on, and is killed.
    first = await run.run(parent, "w1", kill_at_cut=True)
    assert first.watermark is not None and first.end_key is not None and first.watermark < first.end_key
    assert sum(run.handed_on().values()) >= 1000 - len(done)
    ranges = run.of_kind(RANGE)
    assert len(ranges) == 4, [(u.start_after, u.end_key) for u in ranges]
    cut = [(u.start_after, u.end_key) for u in ranges]
    assert cut[0] == (None, first.end_key) and first.end_key is not None
    assert all(cut[i][1] == cut[i + 1][0] for i in range(3)) and cut[-1][1] is None
    # Every bound is a key of the bucket (flat/<c> + U+10FFFF): it is in the range it ends.
    assert all(b in FLAT for _, b in cut[:-1])

    # Run again, it finds itself cut already: it lists its own range only, cutting nothing again.
    await run.run(parent, "w2")
    assert len(run.of_kind(RANGE)) == 4
    # A child killed mid-range is taken over and resumes after its watermark, inside its range.
    child = ranges[2]
    killed = await run.run(child.id, "w1", kill_after_sends=2)
    assert killed.watermark is not None and in_range(killed.watermark, cut[2])
    before = run.handed_on()
    resumed = await run.run(child.id, "w2")
    assert resumed.attempts == 2 and resumed.end_key == cut[2][1]
    assert all(k > killed.watermark for k in run.handed_on() - before)
    for other in (ranges[1], ranges[3]):
        await run.run(other.id, "w3")

    handed = run.handed_on()
    expected = sorted(set(FLAT) - set(done))
    assert sorted(handed) == expected and set(handed.values()) == {1}
    # The ranges split the keys above the cut evenly enough.
    assert all(u.listed > 0 for u in run.of_kind(RANGE))
    # Each range handed on only keys of its own range; the listing progress adds up to the keys handed on.
    assert sum(u.listed for u in run.of_kind(RANGE)) == len(expected)


async def test_a_small_or_unordered_prefix_is_not_cut(engine: Engine, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = JobRepo(engine)
    # A small prefix; an unordered source; an unordered destination (each range would read all of it).
    for src, dst in ((await _bucket("small", FLAT[:1000]), await _bucket("dst", [])),
                     (Unordered(await _bucket("src", FLAT)), await _bucket("dst", [])),
                     (await _bucket("src", FLAT), Unordered(await _bucket("dst", [])))):
        job = jobs.create(f"task:{id(src)}", "{}")
        run = _Run(engine, tmp_path, src, dst, job.id)
        run.install(monkeypatch)
        with engine.begin() as conn:
            conn.execute(work_units.delete())
        (parent,) = run.units.add("task", "9", 1, [UnitDraft(RANGE, spec={"items": [["flat/", True]]})])
        got = await run.run(parent, "w1")
        assert got.end_key is None and len(run.of_kind(RANGE)) == 1
        assert sum(run.handed_on().values()) == len([k async for k in src.list("flat/")])


async def test_the_objects_directly_in_a_folder_are_cut_after_its_sub_folders(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folders = [f"flat/sub{i}/{j:02d}" for i in range(3) for j in range(5)]
    src = await _bucket("src", FLAT + folders + OUTSIDE, paged=True)
    dst = await _bucket("dst", FLAT[::5], paged=True)  # some there already: compared, skipped
    job = JobRepo(engine).create("task:9", "{}")
    run = _Run(engine, tmp_path, src, dst, job.id)
    run.install(monkeypatch)
    (parent,) = run.units.add("task", "9", 1, [UnitDraft(RANGE, spec={"items": [["flat/", True]]})])
    await run.run(parent, "w1")
    units = run.of_kind(RANGE)
    subs = [u for u in units if u.spec["items"][0][0] != "flat/"]
    cut = [u for u in units if u.spec["items"][0][0] == "flat/"]
    assert sorted(u.spec["items"][0][0] for u in subs) == ["flat/sub0/", "flat/sub1/", "flat/sub2/"]
    assert len(cut) == 4 and all(u.spec["direct"] for u in cut)
    assert all(u.start_after is None and u.end_key is None for u in subs)
    for unit in units[1:]:
        await run.run(unit.id, "w2")
    handed = run.handed_on()
    # What the destination has (same size, not older) is skipped and recorded, not handed on.
    assert sorted(handed) == sorted(set(FLAT + folders) - set(FLAT[::5])) and set(handed.values()) == {1}
    assert JobRepo(engine).tally(job.id).skipped == len(FLAT[::5])


async def test_a_listing_is_cut_once_not_again_by_itself_nor_by_its_ranges(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [f"big/{c}{i:03d}" for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn" for i in range(100)]
    job = JobRepo(engine).create("task:9", "{}")
    run = _Run(engine, tmp_path, await _bucket("src", keys), await _bucket("dst", []), job.id)
    run.settings["list_ranges"] = 2
    run.install(monkeypatch)
    (parent,) = run.units.add("task", "9", 1, [UnitDraft(RANGE, spec={"items": [["big/", True]]})])
    # Both halves of the 4,000 keys left at the cut hold more than a page: neither is cut again, nor is the
    # first one when its unit runs again after a kill.
    first = await run.run(parent, "w1", kill_at_cut=True)
    assert len(run.of_kind(RANGE)) == 2
    assert first.end_key is not None and sum(first.watermark < k <= first.end_key for k in keys) > 1000
    await run.run(parent, "w2")
    (child,) = [u for u in run.of_kind(RANGE) if u.id != parent]
    await run.run(child.id, "w2")
    assert len(run.of_kind(RANGE)) == 2
    handed = run.handed_on()
    assert sorted(handed) == keys and set(handed.values()) == {1}


async def test_a_prefix_whose_folder_view_is_long_is_cut_by_key_not_by_folder(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folders = [f"flat/sub{i}/{j:02d}" for i in range(3) for j in range(5)]
    src = await _bucket("src", FLAT + folders, paged=True)
    job = JobRepo(engine).create("task:9", "{}")
    run = _Run(engine, tmp_path, src, await _bucket("dst", [], paged=True), job.id)
    run.install(monkeypatch)
    monkeypatch.setattr(task_units, "FOLDER_PAGES", 2)  # the folder view of flat/ takes 3 pages
    (parent,) = run.units.add("task", "9", 1, [UnitDraft(RANGE, spec={"items": [["flat/", True]]})])
    await run.run(parent, "w1")
    units = run.of_kind(RANGE)
    assert len(units) == 4 and not any(u.spec.get("direct") for u in units)
    for unit in units[1:]:
        await run.run(unit.id, "w2")
    handed = run.handed_on()
    assert sorted(handed) == sorted(FLAT + folders) and set(handed.values()) == {1}
