"""Faults of Ferry's own state store (a full disk, a lock held too long, a database restarting, the SQLite file
deleted under a run) told apart from bugs, each as one LocalStateError that says what to fix."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ferry.errors import LocalStateError

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.engine import ExceptionContext

_T = TypeVar("_T")
MiB: Final = 1024 * 1024
# What a full disk is asked to give back before the run goes on: room for a few thousand results, the WAL
# and a checkpoint, with margin. Less would let the next batch fill it again at once.
MIN_FREE: Final = 64 * MiB

_SQLITE_FULL, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CANTOPEN = 13, 5, 6, 14
_SQLITE_READONLY_DBMOVED = 1032
# PostgreSQL SQLSTATEs: 53100 disk_full (class 53: insufficient resources), 40001/40P01 a transaction that lost
# a race and may simply run again; class 08 and 57P0x are the server going away (a restart as a client sees it).
_PG_DISK_FULL = "53100"
_PG_RETRY = ("40001", "40P01")


@dataclass(frozen=True)
class StateStore:
    """Where Ferry's state lives, as a message names it: an SQLite file (and the data directory that holds it)
    or a PostgreSQL database (host and name, never its password)."""

    label: str
    file: Path | None = None

    @classmethod
    def of_sqlite(cls, path: str | Path) -> StateStore:
        file = Path(path).absolute()
        return cls(f"the database {file}", file)

    @classmethod
    def of_engine(cls, engine: Engine) -> StateStore:
        url = engine.url
        if engine.dialect.name == "sqlite" and url.database not in (None, "", ":memory:"):
            return cls.of_sqlite(str(url.database))
        return cls(f"the {engine.dialect.name} database {url.database or ''} at {url.host or 'localhost'}"
                   f"{f':{url.port}' if url.port else ''}")


def _free(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n < 1024 * MiB else f"{n / (1024 * MiB):.1f} GiB"


def disk_full(store: StateStore) -> LocalStateError:
    if store.file is None:
        return LocalStateError(f"{store.label} reports its disk full: free space on the database server",
                               kind="disk_full")
    directory = store.file.parent
    free = _free(directory)
    have = f"{_size(free)} free" if free is not None else "free space unknown"
    return LocalStateError(
        f"the disk of the data directory {directory} is full ({have}; {store.file.name} cannot grow): free at "
        f"least {_size(MIN_FREE)} there", kind="disk_full")


def gone(store: StateStore) -> LocalStateError:
    return LocalStateError(
        f"{store.label} was deleted or replaced while Ferry was using it: the state it held (tasks, jobs, "
        "progress) is gone with it, and Ferry stops rather than start over on an empty one without saying so. "
        "Restore the file and restart, or restart to begin with a new database", kind="gone")


def classify(exc: BaseException, store: StateStore) -> LocalStateError | None:
    """The LocalStateError that `exc` (a driver's, SQLAlchemy's, or an OSError) stands for; None when it is
    something else (a bug, a constraint, a schema to upgrade)."""
    if isinstance(exc, LocalStateError):
        return exc
    orig = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's
    if isinstance(orig, BaseException):
        found = classify(orig, store)
        if found is not None or not getattr(exc, "connection_invalidated", False):
            return found
        return LocalStateError(f"{store.label} dropped the connection; the work is retried", kind="unavailable")
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None:
            return None
        if code == _SQLITE_READONLY_DBMOVED:
            return gone(store)
        primary = code & 0xFF
        if primary == _SQLITE_FULL:
            return disk_full(store)
        if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return LocalStateError(f"{store.label} is locked by another process for longer than its busy "
                                   "timeout; the work is retried", kind="locked")
        if primary == _SQLITE_CANTOPEN:
            return LocalStateError(f"{store.label} cannot be opened", kind="unavailable")
        return None
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full(store)
    if type(exc).__module__.startswith("psycopg"):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if sqlstate == _PG_DISK_FULL:
            return disk_full(store)
        if sqlstate in _PG_RETRY:
            return LocalStateError(f"{store.label} rolled a transaction back (conflict); it is retried",
                                   kind="locked")
        names = {c.__name__ for c in type(exc).__mro__}
        if sqlstate[:2] in ("08", "57") or (not sqlstate and names & {"OperationalError", "InterfaceError"}):
            return LocalStateError(f"{store.label} cannot be reached or restarted "
                                   f"({sqlstate or type(exc).__name__}); the work is retried", kind="unavailable")
    return None


class FileGuard:
    """Notices that an open SQLite file was deleted or replaced: SQLite keeps writing to the unlinked file
    without a word, and the next start would begin again on an empty database."""

    def __init__(self, path: str | Path) -> None:
        self.store = StateStore.of_sqlite(path)
        assert self.store.file is not None
        self.path = self.store.file
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)

    def check(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise gone(self.store) from None
        if (st.st_dev, st.st_ino) != self._identity:
            raise gone(self.store)


def install(engine: Engine) -> StateStore:
    """Make `engine` raise LocalStateError for the faults above (the pool still invalidates what it must), and,
    on an SQLite file, refuse every checkout once the file is deleted or replaced."""
    from sqlalchemy import event

    store = StateStore.of_engine(engine)

    def on_error(ctx: ExceptionContext) -> BaseException | None:
        if ctx.is_pre_ping:  # the pool reconnects on its own after a failed ping
            return None
        return classify(ctx.original_exception, store)

    event.listen(engine, "handle_error", on_error)
    if store.file is not None and store.file.exists():
        guard = FileGuard(store.file)

        def check(*_args: Any) -> None:
            guard.check()

        # Before a new connection (which would create an empty file in its place) and on every checkout.
        event.listen(engine, "do_connect", check)
        event.listen(engine, "checkout", check)
    return store


def patiently(fn: Callable[[], _T], patience: float, *, what: str = "", log: Callable[[str], None] | None = None,
              sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> _T:
    """`fn()`, called again while it fails with a LocalStateError that passes, for up to `patience` seconds
    (backing off from 0.1 s to 2 s); then that error. For the writes that must not be lost to a database
    restart or a lock held a little too long: a run's final state, a lease given back."""
    deadline = clock() + patience
    delay = 0.1
    told = False
    while True:
        try:
            return fn()
        except LocalStateError as exc:
            if not exc.passes or clock() + delay > deadline:
                raise
            if log is not None and not told:
                log(f"{what or 'a database write'} waits: {exc.message}")
                told = True
            sleep(delay)
            delay = min(delay * 2, 2.0)
