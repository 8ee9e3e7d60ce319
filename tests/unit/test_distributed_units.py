"""Distributed mode's small parts: broker URLs, a keys unit's entries, a unit's view of the job's results, and the
unit-table operations the coordinator and the range units rely on (SQLite and PostgreSQL)."""

from __future__ import annotations

import random
import time

import pytest
from sqlalchemy import Engine, update

from ferry.db.cluster_models import work_units
from ferry.db.job_repo import JobRepo, ObjectResult, record_on
from ferry.db.unit_repo import QUEUED, RUNNING, UnitDraft, UnitRepo
from ferry.engine.compare import CopyReason, SkipReason
from ferry.engine.pipeline import TransferOptions
from ferry.engine.planner import Copy, Skip
from ferry.errors import UsageError
from ferry.objects import ObjectInfo
from ferry.runner.broker import QUEUE, BrokerSpec, redact
from ferry.runner.distributed import _pending
from ferry.runner.task_units import SORT_RUN, ScopedJobRepo, decode_action, encode_action, prefix_end, range_planner
from ferry.storage.base import ListOrder


def test_broker_urls_keep_their_namespace_apart_and_never_show_a_password() -> None:
    spec = BrokerSpec.parse("redis://:s3cret@127.0.0.1:6379/3?namespace=team-a&health=1")
    assert spec.url == "redis://:s3cret@127.0.0.1:6379/3?health=1" and spec.namespace == "team-a"
    assert spec.queue == QUEUE
    rabbit = BrokerSpec.parse("amqp://guest:guest@127.0.0.1:5672/ferry?namespace=b")
    assert rabbit.url == "amqp://guest:guest@127.0.0.1:5672/ferry" and rabbit.queue == f"b.{QUEUE}"
    assert BrokerSpec.parse("redis://127.0.0.1").namespace == "ferry"
    with pytest.raises(UsageError) as info:
        BrokerSpec.parse("http://user:pw@example.com/")
    assert "pw" not in info.value.message and "***" in info.value.message
    with pytest.raises(UsageError):
        BrokerSpec.parse("redis://127.0.0.1?namespace=a/b")
    text = "cannot reach redis://u:p%40ss@h:1/0 nor amqp://guest:guest@h/vh; redis://h:1/0 is fine"
    assert redact(text) == "cannot reach redis://u:***@h:1/0 nor amqp://guest:***@h/vh; redis://h:1/0 is fine"


def test_keys_unit_entries_keep_what_the_listing_said() -> None:
    obj = ObjectInfo("a/é b", 12, 1700000000.25, etag="0123", storage_class="STANDARD", crc64=77)
    for action in (Copy(obj, None, CopyReason.SOURCE_NEWER), Skip(obj, SkipReason.SAME_SIZE_NOT_OLDER)):
        back = decode_action(encode_action(action))
        assert type(back) is type(action) and back.src == obj and back.reason is action.reason
    assert "meta" not in encode_action(Copy(obj, None, CopyReason.MISSING))["o"]


def test_prefix_end_bounds_exactly_the_keys_under_a_prefix() -> None:
    assert prefix_end("") is None
    assert prefix_end("a/") == "a0"
    assert prefix_end("z\U0010ffff") == "{"
    assert prefix_end("\U0010ffff") is None
    for key in ("a/", "a/b", "a/\U0010ffff"):
        assert "a/" <= key < "a0"


def test_pending_counts_what_a_carried_unit_has_left() -> None:
    entry = {"o": {"key": "k3", "size": 1, "mtime": 0.0}, "a": "copy", "r": "missing"}
    assert _pending(UnitDraft("keys", spec={"keys": ["k1", "k2", "k4"]})) == 3
    assert _pending(UnitDraft("keys", "k2", spec={"keys": ["k1", "k2", "k4"], "objects": [entry]})) == 2


async def test_a_range_unit_sorts_an_unordered_listing_in_runs_of_sort_run_records() -> None:
    # A worker runs several range units at once, each sorting both sides: each holds 20,000 records a side at
    # most (the embedded 100,000 took a worker over 150 MB: bench/huge_bucket.py worker), and the plan is still
    # every key once, in order.
    assert SORT_RUN <= 20_000
    keys = [f"data/{i:07d}" for i in range(40_001)]
    shuffled = random.Random(7).sample(keys, len(keys))
    src = [ObjectInfo(k, 1, 1.0) for k in shuffled]
    dst = [ObjectInfo(k, 1, 2.0) for k in shuffled[:20_005]]
    planner = range_planner(src, ListOrder.UNORDERED, dst, ListOrder.UNORDERED, TransferOptions(), finished=[],
                            max_key_bytes=None)
    actions = [a async for a in planner]
    assert [a.src.key for a in actions] == keys
    assert sum(isinstance(a, Skip) for a in actions) == 20_005
    assert planner.stats.source.spilled_runs >= 3 and planner.stats.destination.spilled_runs >= 2


def _running_unit(units: UnitRepo, owner: str) -> int:
    (unit_id,) = units.add("task", "7", 1, [UnitDraft("range", spec={"items": [["a/", True]]})])
    assert units.claim(unit_id, owner, 30) is not None
    return unit_id


def test_a_unit_sees_only_its_own_finished_keys_and_writes_its_own_watermark(engine: Engine) -> None:
    jobs, units = JobRepo(engine), UnitRepo(engine)
    job = jobs.create("task:7", "{}")
    jobs.record(job.id, [ObjectResult(k, st, 1, None, None) for k, st in (
        ("a/1", "success"), ("a/2", "failed"), ("a/3", "skipped"), ("a0", "success"), ("b/1", "success"))],
        watermark="b/1")
    unit_id = _running_unit(units, "w1")
    scoped = ScopedJobRepo(engine, unit_id, "w1", prefix="a/")
    assert list(scoped.iter_finished_keys(job.id)) == ["a/1", "a/3"]
    assert list(scoped.iter_finished_keys(job.id, after="a/1", batch=1)) == ["a/3"]
    keyed = ScopedJobRepo(engine, unit_id, "w1", keys=["a/2", "a/3", "b/1", "zz"])
    assert list(keyed.iter_finished_keys(job.id)) == ["a/3", "b/1"]
    assert [r.key for r in keyed.iter_results(job.id, "failed")] == ["a/2"]
    # Results land in the job; the watermark in the unit's row, and only while the unit is ours.
    scoped.record(job.id, [ObjectResult("a/4", "success", 1, None, None)], "a/4")
    assert units.get(unit_id).watermark == "a/4"  # type: ignore[union-attr]
    assert jobs.get(job.id).watermark == "b/1"  # type: ignore[union-attr]
    ScopedJobRepo(engine, unit_id, "someone-else").record(job.id, [ObjectResult("a/5", "success", 1, None, None)],
                                                          "a/5")
    assert units.get(unit_id).watermark == "a/4"  # type: ignore[union-attr]
    assert jobs.tally(job.id).success == 5


def test_a_split_is_all_or_nothing_under_the_parents_lease(engine: Engine) -> None:
    jobs, units = JobRepo(engine), UnitRepo(engine)
    job = jobs.create("task:7", "{}")
    parent = _running_unit(units, "w1")
    drafts = [UnitDraft("keys", spec={"objects": []})]

    def skip(conn: object) -> None:
        record_on(conn, job.id, [ObjectResult("a/1", "skipped", 3, None, "exists")])  # type: ignore[arg-type]

    ids = units.split(parent, "w1", drafts, {"watermark": "a/1", "listed": 1, "listed_bytes": 3}, skip)
    assert ids is not None and len(ids) == 1
    child = units.get(ids[0])
    assert child is not None and (child.kind, child.owner_id, child.run, child.state) == ("keys", "7", 1, QUEUED)
    got = units.get(parent)
    assert got is not None and (got.watermark, got.listed, got.listed_bytes) == ("a/1", 1, 3)
    assert jobs.tally(job.id).skipped == 1
    # Someone who no longer holds the parent writes nothing at all.
    assert units.split(parent, "w2", drafts, {"watermark": "a/9"}, skip) is None
    assert units.get(parent).watermark == "a/1"  # type: ignore[union-attr]
    assert units.summary("task", "7", 1).total == 2 and units.summary("task", "7", 1, "keys").total == 1
    assert units.summary("task", "7", 1, "range").listed_bytes == 3


def test_queued_units_are_sent_again_on_their_own_horizon(engine: Engine) -> None:
    units = UnitRepo(engine)
    queued = units.add("task", "8", 1, [UnitDraft("keys", spec={"keys": ["k"]})])
    units.mark_sent(queued)
    held = _running_unit(units, "w1")
    units.mark_sent([held])
    assert units.any_held()
    assert units.due_again(5.0) == []
    with engine.begin() as conn:  # both messages went out a minute ago; the lease ran out meanwhile
        conn.execute(update(work_units).values(sent_at=work_units.c.sent_at - 60))
        conn.execute(update(work_units).where(work_units.c.id == held).values(lease_expires=time.time() - 100))
    assert not units.any_held()
    # A dead worker's unit is due at once; a queued one only once its own horizon has passed.
    assert units.due_again(5.0, queued_after=600.0) == [held]
    assert sorted(units.due_again(5.0, queued_after=30.0)) == sorted([*queued, held])
    assert units.get(held).state == RUNNING  # type: ignore[union-attr]
