"""Opening the database: engine creation, SQLite tuning, and schema upgrade through Alembic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event

MIGRATIONS = Path(__file__).parent / "migrations"


def _tune_sqlite(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the progress reader and the batch writer work side by side; NORMAL sync is crash-safe in WAL
    # (a power cut may lose the last batch, which the resume logic simply redoes).
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def open_database(url: str) -> Engine:
    """Connect and bring the schema to the newest revision."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        Path(str(engine.url.database)).parent.mkdir(parents=True, exist_ok=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _tune_sqlite)
    upgrade(engine)
    return engine


def upgrade(engine: Engine) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"
