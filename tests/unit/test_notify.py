"""PostgreSQL LISTEN/NOTIFY wake-ups: a poke from one engine reaches a listener of another within moments."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.db.database import open_database
from ferry.db.notify import Listener, Notifier
from pgdb import pg_database


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from pg_database()


def _until(check: threading.Event | None, cond: object = None, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (check is not None and check.is_set()) or (callable(cond) and cond()):
            return True
        time.sleep(0.01)
    return False


def test_a_poke_wakes_a_listener_of_another_process_engine(pg_url: str) -> None:
    server, worker = open_database(pg_url), open_database(pg_url)
    calls: list[float] = []
    listener = Listener(worker, lambda: calls.append(time.monotonic()), channel="ferry_test_wake").start()
    notifier = Notifier(server, channel="ferry_test_wake")
    try:
        assert _until(listener.listening)
        assert _until(None, lambda: len(calls) >= 1)  # the call made on connecting
        before = len(calls)
        sent = time.monotonic()
        notifier.poke()
        assert _until(None, lambda: len(calls) > before, 5.0)
        assert calls[-1] - sent < 2.0
        # A burst of pokes is a few notifications, not one each.
        before = len(calls)
        for _ in range(500):
            notifier.poke()
        assert _until(None, lambda: len(calls) > before, 5.0)
        time.sleep(0.3)
        assert len(calls) - before < 100
    finally:
        listener.stop()
        notifier.close()
        server.dispose()
        worker.dispose()


def test_nothing_happens_on_sqlite(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'x.db'}")
    calls: list[int] = []
    listener = Listener(engine, lambda: calls.append(1)).start()
    notifier = Notifier(engine)
    notifier.poke()
    listener.stop()
    notifier.close()
    assert not notifier.enabled and calls == []
    engine.dispose()
