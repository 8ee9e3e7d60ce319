"""Wake-ups between processes over PostgreSQL's LISTEN/NOTIFY: the API server tells the workers events wait.

Embedded, an API request that commits sync events wakes the sync loop in the same process. In distributed mode
the loops run in the workers, which would otherwise find new events only at their next poll; the server sends
a NOTIFY (coalesced: at most one per `min_gap`, from a thread of its own, so a request never waits on it) and
every worker LISTENs. A lost notification only costs the poll interval: the queue itself is the table.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Final

from sqlalchemy import Engine, text

log = logging.getLogger("ferry.db.notify")

SYNC_EVENTS: Final = "ferry_sync_events"


def _dsn(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class Notifier:
    """Sends NOTIFY `channel` after `poke()` (from any thread), at most once per `min_gap` seconds. Does
    nothing on a database other than PostgreSQL."""

    def __init__(self, engine: Engine, channel: str = SYNC_EVENTS, min_gap: float = 0.02) -> None:
        self.engine = engine
        self.channel = channel
        self.min_gap = min_gap
        self._pending = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.enabled = engine.dialect.name == "postgresql"

    def poke(self) -> None:
        if not self.enabled or self._closed.is_set():
            return
        self._pending.set()
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="ferry-notify", daemon=True)
                    self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._pending.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while True:
            self._pending.wait()
            if self._closed.is_set():
                return
            self._pending.clear()
            try:
                with self.engine.begin() as conn:
                    conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": self.channel})
            except Exception as exc:  # the workers' poll finds the events anyway
                log.debug("NOTIFY %s not sent: %s", self.channel, type(exc).__name__)
            self._closed.wait(self.min_gap)


class Listener:
    """LISTENs on `channel` in a thread of its own and calls `callback` for every notification (and once on
    each (re)connection, for what was sent while nobody listened); reconnects after a fault. A worker service:
    `start()` and `stop()`."""

    thread_name = "ferry-listen"

    def __init__(self, engine: Engine, callback: Callable[[], None], channel: str = SYNC_EVENTS,
                 retry_seconds: float = 2.0) -> None:
        self.engine = engine
        self.callback = callback
        self.channel = channel
        self.retry_seconds = retry_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()

    def start(self) -> Listener:
        if self.engine.dialect.name == "postgresql" and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(min(timeout, 5.0))
            self._thread = None

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(_dsn(self.engine), autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {self.channel}")
                    self.listening.set()
                    self.callback()
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self.callback()
            except Exception as exc:
                # The URL may hold a password: only the kind of failure is told.
                log.warning("listening for %s waits: %s", self.channel, type(exc).__name__)
            finally:
                self.listening.clear()
            self._stop.wait(self.retry_seconds)
