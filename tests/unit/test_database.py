"""A fresh database built from the models equals one built by replaying the Alembic migrations (SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text

from ferry.db import database
from pgdb import pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def two_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}", f"sqlite:///{tmp_path / 'replayed.db'}"
        return
    fresh, replayed = pg_database(), pg_database()
    try:
        yield next(fresh), next(replayed)
    finally:
        fresh.close()
        replayed.close()


def _engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url)


def _shape(engine: Engine) -> dict[str, Any]:
    """Tables with their columns (name, type, nullability; in any order, as later revisions append theirs),
    primary keys, indexes and foreign keys, as the database reports them."""
    found = inspect(engine)
    shape: dict[str, Any] = {}
    for table in sorted(found.get_table_names()):
        shape[table] = {
            "columns": sorted((c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)),
            "pk": found.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                              for i in found.get_indexes(table)),
            "fks": sorted((tuple(f["constrained_columns"]), f["referred_table"])
                          for f in found.get_foreign_keys(table)),
        }
    return shape


def test_models_and_migrations_build_the_same_schema(two_urls: tuple[str, str]) -> None:
    fresh_url, replayed_url = two_urls
    fresh = database.open_database(fresh_url)  # empty: built from the models and stamped
    replayed = _engine(replayed_url)
    database.migrate(replayed)  # every Alembic revision, one after the other
    try:
        assert _shape(fresh) == _shape(replayed)
        metadata = database._all_tables()
        with replayed.connect() as conn:
            # Alembic's own comparison: the migrations leave nothing the models lack, nor the reverse.
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        for engine in (fresh, replayed):
            with engine.connect() as conn:
                stamped = {r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))}
            assert stamped == database._heads()
        # Opening again finds the schema at the heads and changes nothing.
        assert database._at_heads(database.open_database(fresh_url))
        assert database._at_heads(database.open_database(replayed_url))
    finally:
        fresh.dispose()
        replayed.dispose()


def test_a_database_with_tables_is_migrated_not_recreated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE unrelated (x INTEGER)"))
    assert database._create_fresh(engine) is False
    engine.dispose()
    opened = database.open_database(url)
    assert database._at_heads(opened) and "unrelated" in inspect(opened).get_table_names()
    opened.dispose()
