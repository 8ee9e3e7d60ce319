"""A small DB-API seam for plain SQL: stdlib sqlite3 for the CLI, or an existing SQLAlchemy Engine."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferry.db.faults import FileGuard, classify
from ferry.settings import make_private

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

# WAL lets the progress reader and the batch writer work side by side; NORMAL sync is crash-safe in WAL
# (a power cut may lose the last batch, which the resume logic simply redoes).
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=30000",
)



def private_sqlite_file(path: str) -> None:
    """Create the database file 0600 when it is new (SQLite gives its -wal and -shm files the permissions of the
    database file), or take group and other permissions off an existing one and its companions."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
            with contextlib.suppress(FileNotFoundError):
                make_private(Path(name))


Params = Mapping[str, Any]
Row = tuple[Any, ...]

_NAMED = re.compile(r"(?<![:\w]):(\w+)")


def to_pyformat(sql: str) -> str:
    """`:name` placeholders as `%(name)s` (psycopg's style); a literal % is doubled so that it stays one."""
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))


class Tx(ABC):
    """One transaction's statements, written once with `:name` placeholders."""

    @abstractmethod
    def execute(self, sql: str, params: Params | None = None) -> list[Row]:
        """Run one statement; the rows it returns, if any."""

    @abstractmethod
    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        """Run one statement once per parameter set."""


class SqlConn(ABC):
    """A database on which each `begin()` block is one transaction, committed unless it raises."""

    dialect: str  # "sqlite" or "postgresql": the SQL the repositories write differs only by collation

    @abstractmethod
    def begin(self) -> AbstractContextManager[Tx]:
        """A transaction, usable from any thread."""


class _SqliteTx(Tx):
    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    def execute(self, sql: str, params: Params | None = None) -> list[Row]:
        return self._cur.execute(sql, params or {}).fetchall()

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        self._cur.executemany(sql, rows)


class SqliteConn(SqlConn):
    """One stdlib sqlite3 connection shared by every thread, one transaction at a time (sqlite3 supports
    named placeholders as they are). Cheaper to import and open than SQLAlchemy by ~0.15 CPU-s."""

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        # Autocommit mode (isolation_level=None): the transactions are ours, BEGIN to COMMIT, reads included.
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        for pragma in SQLITE_PRAGMAS:
            self._conn.execute(pragma)
        self.guard = FileGuard(path)

    @contextmanager
    def begin(self, immediate: bool = False) -> Iterator[Tx]:
        """A transaction; `immediate` takes the write lock at once (for a check followed by a write). A full
        disk, a lock held too long or the file deleted under it raise LocalStateError."""
        try:
            with self._transaction(immediate) as tx:
                yield tx
        except sqlite3.Error as exc:
            found = classify(exc, self.guard.store)
            if found is None:
                raise
            raise found from exc

    @contextmanager
    def _transaction(self, immediate: bool) -> Iterator[Tx]:
        self.guard.check()
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield _SqliteTx(cur)
            except BaseException:
                if self._conn.in_transaction:  # some errors have rolled it back already
                    cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _EngineTx(Tx):
    def __init__(self, conn: Connection, pyformat: bool) -> None:
        self._conn = conn
        self._pyformat = pyformat

    def _sql(self, sql: str) -> str:
        return to_pyformat(sql) if self._pyformat else sql

    def execute(self, sql: str, params: Params | None = None) -> list[Row]:
        result = self._conn.exec_driver_sql(self._sql(sql), dict(params or {}))
        return [tuple(r) for r in result.fetchall()] if result.returns_rows else []

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        self._conn.exec_driver_sql(self._sql(sql), [dict(r) for r in rows])


class EngineConn(SqlConn):
    """Plain SQL over an SQLAlchemy Engine and its pool (`ferry serve`, PostgreSQL), handed to the driver
    as it is apart from the placeholders."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._pyformat = getattr(engine.dialect.dbapi, "paramstyle", None) == "pyformat"

    @contextmanager
    def begin(self) -> Iterator[Tx]:
        with self.engine.begin() as conn:
            yield _EngineTx(conn, self._pyformat)
