"""SQLAlchemy table of event tallies published by processes that serve no `/metrics` of their own."""

from __future__ import annotations

from sqlalchemy import Column, Float, String, Table, Text

from ferry.db.models import metadata

# One row per publishing process role and place (the sync worker process of a data directory, say): its
# `ferry.metrics.snapshot()` as JSON, rewritten every few seconds. A restarted process overwrites its row, so
# its counters start again from zero, as a restarted exporter's would; rows not written for a day are dropped.
metric_snapshots = Table(
    "metric_snapshots",
    metadata,
    Column("source", String(160), primary_key=True),
    Column("updated_at", Float, nullable=False),
    Column("samples", Text, nullable=False),
)
