"""Sync reconciliation as range units: the ranges cover every key once, and three workers running them give the
same copies, statistics, failures and reconciled time as one embedded reconciliation."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine
from test_sync_runner import FAST, Flaky, _exists, _put, _stores, _task, _until
from test_sync_runner import engine as engine

from ferry.db.sync_repo import SyncRepo, SyncTaskRow
from ferry.db.unit_repo import DONE, FAILED, UnitRepo
from ferry.runner.sync import KeyRange, SyncBackground, SyncWorkers
from ferry.runner.sync_units import (
    OWNER_KIND,
    RangeSettings,
    ReconcileDispatcher,
    plan_ranges,
    reconcile_handler,
)
from ferry.runner.units import UnitContext, UnitFailed
from ferry.secrets import SecretBox
from ferry.storage.base import Backend, Capabilities, ListOrder
from ferry.storage.memory import MemoryBackend
from ferry.storage.wrappers import BackendWrapper

KEYS = ([f"logs/2024/{m:02d}/{d:02d}.gz" for m in range(1, 13) for d in range(1, 11)]
        + [f"img/{c}{i:03d}.jpg" for c in "abcdef" for i in range(20)] + ["README", "z", "z/deep/key", "é/ü"])


class Unordered(BackendWrapper):
    """The same bucket, declared to list in no particular order (as an operator-mapped store is)."""

    @property
    def capabilities(self) -> Capabilities:
        return replace(self.inner.capabilities, list_order=ListOrder.UNORDERED)


def _covered_once(spans: list[KeyRange], keys: list[str]) -> list[int]:
    """How many keys each range holds; fails unless every key is in exactly one."""
    counts = [0] * len(spans)
    for key in keys:
        hits = [i for i, (a, b) in enumerate(spans) if (a is None or key > a) and (b is None or key <= b)]
        assert len(hits) == 1, (key, hits, spans)
        counts[hits[0]] += 1
    return counts


@pytest.mark.parametrize("ordered", [True, False])
async def test_ranges_are_contiguous_cover_every_key_once_and_spread_the_keys(ordered: bool) -> None:
    src = MemoryBackend(bucket="src")
    for key in KEYS:
        await _put(src, key, b"x")
    backend: Backend = src if ordered else Unordered(src)
    spans = await plan_ranges(backend, RangeSettings(units=4, probes=200, sample=1000))
    assert spans[0][0] is None and spans[-1][1] is None
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
    counts = _covered_once(spans, KEYS)
    assert 3 <= len(spans) <= 4, spans
    assert max(counts) <= len(KEYS) * 0.6, counts  # no range holds most of the bucket
    # One unit, or an empty bucket: one open range.
    assert await plan_ranges(backend, RangeSettings(units=1)) == [(None, None)]
    assert await plan_ranges(MemoryBackend(bucket="empty"), RangeSettings(units=4)) == [(None, None)]


async def test_the_skip_scan_stays_within_its_probes() -> None:
    src = MemoryBackend(bucket="src")
    for key in KEYS:
        await _put(src, key, b"x")
    calls = 0

    class Counting(BackendWrapper):
        def list(self, prefix: str = "", start_after: str | None = None):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            return self.inner.list(prefix, start_after)

    spans = await plan_ranges(Counting(src), RangeSettings(units=8, probes=10))
    assert calls <= 10
    _covered_once(spans, KEYS)


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(b"k" * 32)


def _background(engine: Engine, src: Backend, dst: Backend, node: str) -> SyncBackground:
    settings = replace(FAST, reconcile_here=False, node_id=node)
    return SyncBackground(SyncWorkers(engine, lambda _row: (src, dst), settings))


async def _run_units(engine: Engine, box: SecretBox, tmp: Path, task_id: str,
                     workers: list[SyncBackground]) -> dict[str, int]:
    """Claim and run every open unit of the task's reconciliation, each worker in turn, as `ferry worker`
    does (claim, handler, finish or fail); how many ended in each state."""
    units = UnitRepo(engine)
    ends: dict[str, int] = {}
    run = units.last_run(OWNER_KIND, task_id)
    assert run is not None
    pending = units.of_owner(OWNER_KIND, task_id, run)
    for i, unit in enumerate(pending):
        owner = f"worker-{i % len(workers)}"
        row = units.claim(unit.id, owner, 30)
        assert row is not None
        ctx = UnitContext(engine, box, owner, tmp)
        try:
            await reconcile_handler(workers[i % len(workers)], beat_seconds=0.05)(row, ctx)
            state, values = DONE, {**ctx.progress.values()}
        except UnitFailed as exc:
            state, values = FAILED, {**ctx.progress.values(), "error": str(exc)}
        assert units.finish(row.id, owner, state, values)
        ends[state] = ends.get(state, 0) + 1
    return ends


async def test_three_workers_reconcile_ranges_as_one_embedded_reconciliation(
        engine: Engine, box: SecretBox, tmp_path: Path) -> None:
    repo = SyncRepo(engine)
    src, _unused = _stores()
    for i, key in enumerate(KEYS):
        await _put(src, key, b"y" * (i % 7 + 1))
    # The embedded reference: one SyncWorkers reconciling the whole task.
    embedded_dst = MemoryBackend(bucket="ref")
    ref_id = _task(repo, reconciled=False)
    ref_dst = Flaky(embedded_dst, {"img/c005.jpg": -1})
    embedded = SyncBackground(SyncWorkers(engine, lambda _row: (src, ref_dst), replace(FAST, node_id="embedded")))
    embedded.start()
    try:
        await _until(lambda: (r := repo.get_task(ref_id)) is not None and r.reconciled_at is not None)
    finally:
        embedded.stop(10)

    # Distributed: the dispatcher cuts the task into ranges; three workers run them.
    task_id = _task(repo, reconciled=False)
    dst = MemoryBackend(bucket="dst")
    failing = Flaky(dst, {"img/c005.jpg": -1})
    dispatcher = ReconcileDispatcher(engine, lambda _row: (src, dst), replace(FAST, node_id="server"),
                                     RangeSettings(units=3))
    await dispatcher.tick()
    units = UnitRepo(engine)
    run = units.last_run(OWNER_KIND, task_id)
    assert run is not None
    made = units.of_owner(OWNER_KIND, task_id, run)
    assert len(made) == 3 and made[0].start_after is None and made[-1].end_key is None
    row = repo.get_task(task_id)
    assert row is not None and row.reconciled_at is None  # claimed, not finished: the units are open
    workers = [_background(engine, src, failing, f"node-{i}") for i in range(3)]
    for w in workers:
        w.start()
    try:
        ends = await _run_units(engine, box, tmp_path, task_id, workers)
        await dispatcher.tick()
    finally:
        for w in workers:
            w.stop(10)
    assert ends == {DONE: 3}
    row = repo.get_task(task_id)
    assert row is not None and row.reconciled_at is not None and row.last_error is None
    for key in KEYS:
        assert await _exists(dst, key) == (key != "img/c005.jpg"), key
    ours, ref = repo.stat_totals(task_id, 0, 2e10), repo.stat_totals(ref_id, 0, 2e10)
    assert (ours.success, ours.size) == (ref.success, ref.size)
    assert ours.success == len(KEYS) - 1
    # The key that failed joined the event queue to be retried and listed, as after an embedded reconciliation.
    for tid in (task_id, ref_id):
        assert repo.pending_count(tid) + len(repo.given_up(tid, None, 10)) == 1
    summary = units.summary(OWNER_KIND, task_id, run)
    assert summary.listed == len(KEYS) and summary.objects_done == len(KEYS) - 1
    # Not due again for reconcile_seconds: the next pass makes no new units.
    await dispatcher.tick()
    assert units.last_run(OWNER_KIND, task_id) == run


async def test_a_stopped_task_has_its_range_units_cancelled_and_a_failed_range_is_the_last_error(
        engine: Engine, box: SecretBox, tmp_path: Path) -> None:
    repo = SyncRepo(engine)
    src, dst = _stores()
    for key in KEYS[:20]:
        await _put(src, key, b"z")
    task_id = _task(repo, reconciled=False)
    dispatcher = ReconcileDispatcher(engine, lambda _row: (src, dst), replace(FAST, node_id="server"),
                                     RangeSettings(units=2))
    await dispatcher.tick()
    units = UnitRepo(engine)
    run = units.last_run(OWNER_KIND, task_id)
    assert run is not None and units.summary(OWNER_KIND, task_id, run).open == 2
    assert repo.stop_task("project", task_id, time.time())
    await dispatcher.tick()
    assert units.summary(OWNER_KIND, task_id, run).by_state == {"cancelled": 2}

    # Started again: a new run; one range fails (its worker cannot open the stores), the others are done.
    assert repo.start_task("project", task_id, "sealed", time.time())
    await dispatcher.tick()
    run2 = units.last_run(OWNER_KIND, task_id)
    assert run2 == run + 1

    def broken(_row: SyncTaskRow) -> tuple[Backend, Backend]:
        raise RuntimeError("no keys here")

    worker = SyncBackground(SyncWorkers(engine, broken, replace(FAST, reconcile_here=False, node_id="w")))
    worker.start()
    try:
        ends = await _run_units(engine, box, tmp_path, task_id, [worker])
    finally:
        worker.stop(10)
    assert ends == {FAILED: 2}
    await dispatcher.tick()
    row = repo.get_task(task_id)
    assert row is not None and row.reconciled_at is not None
    assert "could not be opened" in (row.last_error or "")


async def test_a_unit_whose_worker_stops_ends_at_once(engine: Engine, box: SecretBox,
                                                      tmp_path: Path) -> None:
    """A lost lease or a drain stops the range on the sync loop too; its outcomes so far stay recorded."""
    repo = SyncRepo(engine)
    src, dst = _stores()
    for i in range(200):
        await _put(src, f"k{i:04d}", b"q")

    class Slow(BackendWrapper):
        async def put(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            await asyncio.sleep(0.05)
            return await self.inner.put(*args, **kwargs)

    task_id = _task(repo, reconciled=False)
    dispatcher = ReconcileDispatcher(engine, lambda _row: (src, Slow(dst)), replace(FAST, node_id="server"),
                                     RangeSettings(units=1))
    await dispatcher.tick()
    units = UnitRepo(engine)
    run = units.last_run(OWNER_KIND, task_id)
    assert run is not None
    [unit] = units.of_owner(OWNER_KIND, task_id, run)
    worker = SyncBackground(SyncWorkers(engine, lambda _row: (src, Slow(dst)),
                                        replace(FAST, reconcile_here=False, node_id="w", reconcile_concurrency=2)))
    worker.start()
    try:
        row = units.claim(unit.id, "w", 30)
        assert row is not None
        ctx = UnitContext(engine, box, "w", tmp_path)
        handling = asyncio.create_task(reconcile_handler(worker, beat_seconds=0.05)(row, ctx))
        await _until(lambda: ctx.progress.objects_done >= 5)
        ctx.stop.set()
        await asyncio.wait_for(handling, 10)
        copied = ctx.progress.objects_done
        assert copied < 200
        await _until(lambda: repo.stat_totals(task_id, 0, 2e10).success >= copied)
    finally:
        worker.stop(10)
