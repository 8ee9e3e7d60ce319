"""Opening the CLI's job database: an SQLite file that is fresh or at the newest schema needs no SQLAlchemy."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ferry.db import schema_sqlite
from ferry.db.heads import heads
from ferry.db.job_repo import JobRepo
from ferry.db.sqlconn import SqliteConn, private_sqlite_file


def open_job_repo(url: str) -> JobRepo:
    """A JobRepo on `url`, its schema brought to the newest revision. An SQLite file runs over stdlib sqlite3
    (SQLAlchemy's import and engine cost ~0.15 CPU-s, on a short run most of its CPU), and only a schema to
    upgrade goes through Alembic; other databases go through SQLAlchemy."""
    path = _sqlite_file(url)
    if path is None:
        from ferry.db.database import open_database

        return JobRepo(open_database(url))
    return JobRepo(open_sqlite(path))


def _sqlite_file(url: str) -> str | None:
    """The file of an sqlite:/// URL; None for anything else, in memory or with options, left to SQLAlchemy."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///")
    return None if path in ("", ":memory:") or "?" in path else path


def open_sqlite(path: str) -> SqliteConn:
    """The SQLite file at `path`, created from the checked-in DDL when new or empty, upgraded by Alembic when
    its schema is older."""
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_sqlite_file(path)
    conn = SqliteConn(path)
    if _create_or_current(conn):
        return conn
    conn.close()
    from ferry.db.database import open_database

    open_database(f"sqlite:///{path}").dispose()
    return SqliteConn(path)


def _create_or_current(conn: SqliteConn) -> bool:
    """Create the newest schema, stamped with the Alembic heads, if the file holds no table; otherwise whether
    it is at the heads already. One immediate transaction, so two processes do not both create it."""
    with conn.begin(immediate=True) as tx:
        if not tx.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1"):
            for statement in schema_sqlite.statements():
                tx.execute(statement)
            tx.executemany("INSERT INTO alembic_version (version_num) VALUES (:head)",
                           [{"head": head} for head in sorted(heads())])
            return True
        try:
            stored = {row[0] for row in tx.execute("SELECT version_num FROM alembic_version")}
        except sqlite3.OperationalError:  # tables but no version: Alembic decides what to do with them
            return False
    return stored == heads()
