"""A fresh database built from the models, or on SQLite from the checked-in DDL, equals one built by replaying the
Alembic migrations (SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text

from ferry.db import database, schema_sqlite
from ferry.db.heads import MIGRATIONS, heads
from ferry.db.job_repo import JobRepo
from ferry.db.jobdb import open_sqlite
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
            assert stamped == heads()
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


def test_the_checked_in_sqlite_ddl_is_what_the_models_generate() -> None:
    assert schema_sqlite.DDL.read_text(encoding="utf-8") == schema_sqlite.generate(), (
        f"{schema_sqlite.DDL.name} no longer matches the models: regenerate it with "
        "`python -m ferry.db.schema_sqlite` and commit the result"
    )


def _stamped(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))}


def test_a_database_from_the_sqlite_ddl_equals_the_models_and_the_migrations(tmp_path: Path) -> None:
    from_ddl, from_models, replayed = (f"sqlite:///{tmp_path / name}" for name in ("ddl.db", "models.db", "re.db"))
    open_sqlite(str(tmp_path / "ddl.db")).close()
    engines = [_engine(from_ddl), database.open_database(from_models), _engine(replayed)]
    database.migrate(engines[2])
    try:
        assert _shape(engines[0]) == _shape(engines[1]) == _shape(engines[2])
        assert _stamped(engines[0]) == heads()
        with engines[0].connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), database._all_tables()) == []
    finally:
        for engine in engines:
            engine.dispose()
    # Stamped at the heads: SQLAlchemy's opening finds nothing to do, neither creation nor migration.
    opened = database.open_database(from_ddl)
    try:
        assert database._at_heads(opened) and database._create_fresh(opened) is False
    finally:
        opened.dispose()


def test_an_older_sqlite_schema_is_upgraded_by_alembic_keeping_its_jobs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from alembic import command
    from alembic.config import Config

    path = tmp_path / "old.db"
    old = _engine(f"sqlite:///{path}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with old.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004_groups")  # the sync branch and 0005 are not there yet
    with old.begin() as conn:
        conn.execute(text("INSERT INTO jobs (id, fingerprint, spec, status, created_at, listing_done, total_num,"
                          " total_size) VALUES ('j1', 'fp', '{}', 'stopped', 1.0, 0, 0, 0)"))
    assert _stamped(old) != heads()
    old.dispose()

    migrated: list[str] = []
    real_migrate = database.migrate

    def migrate(engine: Engine) -> None:
        migrated.append(str(engine.url))
        real_migrate(engine)

    monkeypatch.setattr(database, "migrate", migrate)
    db = open_sqlite(str(path))
    try:
        job = JobRepo(db).get("j1")
        assert job is not None and job.status == "stopped"
    finally:
        db.close()
    assert migrated == [f"sqlite:///{path}"]
    upgraded = _engine(f"sqlite:///{path}")
    try:
        assert _stamped(upgraded) == heads() and "sync_tasks" in inspect(upgraded).get_table_names()
    finally:
        upgraded.dispose()
    open_sqlite(str(path)).close()  # at the heads now: opened directly, no migration
    assert len(migrated) == 1

