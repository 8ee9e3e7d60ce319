"""The in-process runners share one loop-thread base: start, notify and stop from any thread, in any order."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.runner.loop_thread import LoopThread
from ferry.serve import Service, build

NAMES = {"ferry-runner", "ferry-sync", "ferry-groups"}


# Threads of these names that other tests in this process left behind (a runner stopped with a timeout may
# still be ending): only the threads this test's own runners start are counted.
_OTHERS: set[threading.Thread] = set()


def _running() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name in NAMES and t not in _OTHERS)


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    monkeypatch.delenv("FERRY_SYNC_WORKERS", raising=False)  # the sync workers in a thread of this process
    monkeypatch.delenv("FERRY_ENDPOINT_OVERRIDES", raising=False)
    svc = build(tmp_path, f"sqlite:///{tmp_path / 'ferry.db'}")
    try:
        yield svc
    finally:
        for r in (svc.groups, svc.sync, svc.runner):
            if r is not None:
                r.stop()
        svc.engine.dispose()


def test_every_runner_stops_before_start_starts_once_and_restarts(service: Service) -> None:
    runners = [service.runner, service.sync, service.groups]
    _OTHERS.update(t for t in threading.enumerate() if t.name in NAMES)
    assert _running() == []
    for r in runners:
        assert r is not None
        r.stop()  # never started: nothing to stop
        r.notify()  # nor to wake
    for _ in range(2):  # a stopped runner starts again
        for r in runners:
            assert r is not None
            r.start()
            r.start()  # already running: no second thread
            r.notify()
        assert _running() == sorted(NAMES)
        for r in runners:
            assert r is not None
            r.stop(timeout=30)
            r.notify()  # stopped: nothing to wake, and no error
        assert _running() == []  # stop() returns once the thread has ended


class _Probe(LoopThread):
    thread_name = "ferry-probe"

    def __init__(self) -> None:
        super().__init__()
        self.woken = threading.Event()
        self.cancelled = threading.Event()

    async def run(self) -> None:
        try:
            await self._wake_event().wait()
            self.woken.set()
            await asyncio.Event().wait()  # until stopped
        finally:
            self.cancelled.set()


def test_notify_wakes_the_loop_and_stop_cancels_it() -> None:
    probe = _Probe().start()
    probe.notify()
    assert probe.woken.wait(10)
    probe.stop(timeout=10)
    assert probe.cancelled.is_set() and "ferry-probe" not in {t.name for t in threading.enumerate()}


class _Broken(LoopThread):
    thread_name = "ferry-broken"

    async def run(self) -> None:
        raise RuntimeError("boom")


def test_a_loop_that_fails_is_logged_and_ends(caplog: pytest.LogCaptureFixture) -> None:
    broken = _Broken()
    with caplog.at_level(logging.ERROR, logger="ferry.runner"):
        broken.start()
        broken.stop(timeout=10)
    assert "ferry-broken stopped with an error" in caplog.text and "boom" in caplog.text
    broken.notify()  # its loop is closed: nothing to wake
