"""Work units, workers and shared budgets on SQLite and PostgreSQL: claims are exclusive, leases run out, a
duplicate message is a no-op, and a budget is one for all takers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, update

from ferry.db.cluster_models import work_units
from ferry.db.cluster_repo import BudgetRepo, SettingRepo, WorkerRepo
from ferry.db.database import migrate, open_database
from ferry.db.unit_repo import CANCELLED, DONE, QUEUED, RUNNING, UnitDraft, UnitRepo
from pgdb import pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = open_database(f"sqlite:///{tmp_path / 'ferry.db'}")
        migrate(eng)
        yield eng
        eng.dispose()
        return
    for url in pg_database():
        eng = open_database(url.replace("postgresql://", "postgresql+psycopg://", 1))
        migrate(eng)
        yield eng
        eng.dispose()


def test_a_unit_is_claimed_once_and_a_late_message_does_nothing(engine: Engine) -> None:
    units = UnitRepo(engine)
    [uid] = units.add("task", "7", 1, [UnitDraft("range", "a", "m")])
    first = units.claim(uid, "w1", 30)
    assert first is not None and first.state == RUNNING and first.attempts == 1
    assert (first.start_after, first.end_key) == ("a", "m")
    assert units.claim(uid, "w2", 30) is None  # a duplicate delivery while w1 holds it
    assert units.heartbeat(uid, "w1", 30, {"objects_done": 5, "watermark": "f"})
    assert not units.heartbeat(uid, "w2", 30)
    assert units.finish(uid, "w1", DONE, {"objects_done": 9})
    assert units.claim(uid, "w2", 30) is None  # a late delivery after it is done
    row = units.get(uid)
    assert row is not None and row.state == DONE and row.objects_done == 9 and row.watermark == "f"


def test_an_expired_lease_is_due_again_and_taken_over(engine: Engine) -> None:
    units = UnitRepo(engine)
    [uid] = units.add("task", "7", 1, [UnitDraft("range")])
    assert units.due_again(60) == [uid]  # never sent
    units.mark_sent([uid])
    assert units.due_again(60) == []
    assert units.claim(uid, "w1", 30) is not None
    with engine.begin() as conn:  # w1 died: its lease ran out and the message was sent long ago
        conn.execute(update(work_units).values(lease_expires=time.time() - 3600, sent_at=time.time() - 3600))
    assert units.due_again(60) == [uid]
    taken = units.claim(uid, "w2", 30)
    assert taken is not None and taken.lease_owner == "w2" and taken.attempts == 2
    assert not units.heartbeat(uid, "w1", 30)  # the dead owner, should it come back, must stop
    assert not units.finish(uid, "w1")


def test_hand_back_cancel_and_summary(engine: Engine) -> None:
    units = UnitRepo(engine)
    a, b2, c = units.add("task", "9", 2, [UnitDraft("range", None, "g"), UnitDraft("range", "g", "p"),
                                          UnitDraft("keys", spec={"keys": ["x"]})])
    [old] = units.add("task", "9", 1, [UnitDraft("range")])
    assert units.claim(a, "w1", 30) is not None
    assert units.hand_back(a, "w1", {"watermark": "c"})
    got = units.get(a)
    assert got is not None and got.state == QUEUED and got.watermark == "c" and got.lease_owner is None
    assert units.claim(b2, "w1", 30) is not None and units.finish(b2, "w1", DONE, {"objects_done": 4, "bytes_done": 40})
    assert units.cancel("task", "9", below_run=2) == 1
    assert (units.get(old) or got).state == CANCELLED
    s = units.summary("task", "9", 2)
    assert s.by_state == {QUEUED: 2, DONE: 1} and s.open == 2 and s.objects_done == 4 and s.bytes_done == 40
    assert [r.id for r in units.of_owner("task", "9", 2)] == [a, c]
    assert (units.get(c) or got).spec == {"keys": ["x"]}


def test_a_budget_is_shared_by_all_takers(engine: Engine) -> None:
    budgets = BudgetRepo(engine)
    assert budgets.take("task:1:bytes", 100, rate=1000, burst=1000) == 0  # from a full bucket
    assert budgets.take("task:1:bytes", 900, rate=1000, burst=1000) == pytest.approx(0, abs=0.05)
    # The bucket is empty: a second taker (another worker) owes, and waits for the refill.
    wait = BudgetRepo(engine).take("task:1:bytes", 500, rate=1000, burst=1000)
    assert 0.4 < wait <= 0.5
    assert budgets.take("other", 10**9, rate=0, burst=0) == 0  # unlimited
    budgets.drop("task:1:")
    assert budgets.take("task:1:bytes", 100, rate=1000, burst=1000) == 0


def test_workers_register_beat_and_are_listed(engine: Engine) -> None:
    workers = WorkerRepo(engine)
    workers.register("h/1/a", "worker", "h", 1, "0.1", {"concurrency": 4})
    assert workers.beat("h/1/a", 2, 10)
    [row] = workers.list()
    assert (row.id, row.units_in_flight, row.units_done, row.info) == ("h/1/a", 2, 10, {"concurrency": 4})
    assert row.age < 5
    assert workers.forget_dead(3600) == 0
    workers.stopped("h/1/a")
    assert workers.list() == [] and not workers.beat("h/1/a", 0, 0)


def test_settings_keep_the_first_value(engine: Engine) -> None:
    settings = SettingRepo(engine)
    assert settings.agree("master_key", "aa") == "aa"
    assert settings.agree("master_key", "bb") == "aa"
