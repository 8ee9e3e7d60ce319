"""Opening the database: engine creation, SQLite tuning, and schema upgrade through Alembic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Column, Engine, MetaData, String, Table, create_engine, event, inspect, text
from sqlalchemy.exc import DBAPIError

from ferry.db import faults
from ferry.db.heads import MIGRATIONS, heads
from ferry.db.sqlconn import SQLITE_PRAGMAS, private_sqlite_file


def _tune_sqlite(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    for pragma in SQLITE_PRAGMAS:
        cur.execute(pragma)
    cur.close()


def open_database(url: str) -> Engine:
    """Connect and bring the schema to the newest revision."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        Path(str(engine.url.database)).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        private_sqlite_file(str(engine.url.database))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _tune_sqlite)
    faults.install(engine)
    upgrade(engine)
    return engine


def _at_heads(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            stored = {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}
    except DBAPIError:
        return False
    return stored == heads()


def _all_tables() -> MetaData:
    """The metadata of every table, each model module imported so that it registers its tables."""

    from ferry.db import api_models, cluster_models, group_models, metric_models, sync_models  # noqa: F401
    from ferry.db.models import metadata

    return metadata


def _create_fresh(engine: Engine) -> bool:
    """On a database holding no table at all, create the newest schema straight from the models and stamp it
    with the Alembic heads, sparing a first run Alembic's import and replay (~0.25 s). False when the database
    is not empty. tests/unit/test_database.py proves the models and the migrations build the same schema."""
    metadata = _all_tables()
    with engine.begin() as conn:
        if inspect(conn).get_table_names():
            return False
        metadata.create_all(conn)
        version = Table("alembic_version", MetaData(), Column("version_num", String(32), primary_key=True))
        version.create(conn)
        conn.execute(version.insert(), [{"version_num": head} for head in sorted(heads())])
    return True


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision. Importing Alembic costs ~0.4 s, so an up-to-date schema skips
    it, and an empty database gets the newest schema directly."""
    if _at_heads(engine) or _create_fresh(engine):
        return
    migrate(engine)


def migrate(engine: Engine) -> None:
    """Apply every pending Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")
