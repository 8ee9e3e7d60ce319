"""The newest SQLite schema as checked-in DDL, so a fresh job database needs no SQLAlchemy; regenerate it with
`python -m ferry.db.schema_sqlite` after changing a model (tests/unit/test_database.py fails until then)."""

from __future__ import annotations

from pathlib import Path

DDL = Path(__file__).with_name("schema_sqlite.sql")
_HEADER = "-- Generated from the models by `python -m ferry.db.schema_sqlite`: do not edit by hand.\n"


def statements() -> list[str]:
    """The checked-in CREATE TABLE / CREATE INDEX statements, in order, alembic_version's last."""
    text = DDL.read_text(encoding="utf-8").removeprefix(_HEADER)
    return [s.strip() for s in text.split(";\n") if s.strip()]


def generate() -> str:
    """What SQLAlchemy compiles on SQLite for every model (tables in dependency order, each followed by its
    indexes by name: create_all's own index order varies from run to run), plus Alembic's version table."""
    from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, String, Table
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.schema import CreateIndex, CreateTable, ExecutableDDLElement

    from ferry.db.database import _all_tables

    # Alembic's own definition of its table (alembic.runtime.migration), so that a file stamped here is the
    # same as one Alembic stamped.
    version = Table("alembic_version", MetaData(), Column("version_num", String(32), nullable=False),
                    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"))
    ddl: list[ExecutableDDLElement] = []
    for table in [*_all_tables().sorted_tables, version]:
        ddl.append(CreateTable(table))
        ddl.extend(CreateIndex(index) for index in sorted(table.indexes, key=lambda i: str(i.name)))
    dialect = sqlite.dialect()
    return _HEADER + "".join(f"{str(d.compile(dialect=dialect)).strip()};\n\n" for d in ddl)


if __name__ == "__main__":
    DDL.write_text(generate(), encoding="utf-8")
