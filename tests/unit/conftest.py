"""Fixtures shared by the unit tests: a fresh Ferry database on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from ferry.db.database import open_database
from pgdb import pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The newest schema on SQLite, then on PostgreSQL (a module may define its own `engine` instead)."""
    if request.param == "sqlite":
        eng = open_database(f"sqlite:///{tmp_path / 'ferry.db'}")
        yield eng
        eng.dispose()
        return
    gen = pg_database()
    eng = open_database(next(gen))
    try:
        yield eng
    finally:
        eng.dispose()
        gen.close()
