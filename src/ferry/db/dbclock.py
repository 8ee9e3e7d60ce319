"""The database's own clock, as SQL: leases and retry times that several servers write and compare then agree
whatever their own clocks say, and a server's clock stepping back does not stretch them."""

from __future__ import annotations

from sqlalchemy import Float, cast, func
from sqlalchemy.sql.elements import ColumnElement


def db_epoch(dialect: str) -> ColumnElement[float]:
    """Seconds since the epoch by the database server's clock (SQLite's is this host's)."""
    if dialect == "postgresql":
        return cast(func.extract("epoch", func.clock_timestamp()), Float)
    return cast((func.julianday("now") - 2440587.5) * 86400.0, Float)
