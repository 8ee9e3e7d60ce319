"""Distributed mode: work units, live workers, shared rate budgets and cluster settings."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_cluster"
down_revision = "0008_restoring"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "work_units",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("owner_kind", sa.String(16), nullable=False),
        sa.Column("owner_id", sa.String(64), nullable=False),
        sa.Column("run", sa.Integer, nullable=False),
        sa.Column("start_after", sa.Text, nullable=True),
        sa.Column("end_key", sa.Text, nullable=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("sent_at", sa.Float, nullable=True),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires", sa.Float, nullable=True),
        sa.Column("heartbeat_at", sa.Float, nullable=True),
        sa.Column("watermark", sa.Text, nullable=True),
        sa.Column("listed", sa.BigInteger, nullable=False),
        sa.Column("listed_bytes", sa.BigInteger, nullable=False),
        sa.Column("objects_done", sa.BigInteger, nullable=False),
        sa.Column("bytes_done", sa.BigInteger, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
    )
    op.create_index("ix_work_units_owner", "work_units", ["owner_kind", "owner_id", "run", "state"])
    op.create_index("ix_work_units_lease", "work_units", ["state", "lease_expires"])
    op.create_index("ix_work_units_sent", "work_units", ["state", "sent_at"])
    op.create_table(
        "cluster_workers",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("units_in_flight", sa.Integer, nullable=False),
        sa.Column("units_done", sa.BigInteger, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("info", sa.Text, nullable=False),
    )
    op.create_table(
        "cluster_budgets",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("rate", sa.Float, nullable=False),
        sa.Column("burst", sa.Float, nullable=False),
        sa.Column("tokens", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "cluster_settings",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for name in ("cluster_settings", "cluster_budgets", "cluster_workers"):
        op.drop_table(name)
    op.drop_index("ix_work_units_sent", "work_units")
    op.drop_index("ix_work_units_lease", "work_units")
    op.drop_index("ix_work_units_owner", "work_units")
    op.drop_table("work_units")
