"""Sync tasks, their durable per-key event queue, and their 5-minute statistics buckets."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_sync"
# An independent branch off the jobs schema: the API areas evolve separately and open_database upgrades
# every head.
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_tasks",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("secrets", sa.Text, nullable=False),
        sa.Column("options", sa.Text, nullable=False, server_default="{}"),
        sa.Column("generation", sa.Integer, nullable=False, server_default="1"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_start_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("reconciled_at", sa.Float, nullable=True),
        sa.Column("reconcile_owner", sa.String(128), nullable=True),
        sa.Column("reconcile_lease_until", sa.Float, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("notify_token_hash", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sync_tasks"),
        sa.UniqueConstraint("notify_token_hash", name="uq_sync_tasks_notify_token_hash"),
    )
    op.create_index("ix_sync_tasks_project_id", "sync_tasks", ["project_id"])
    op.create_table(
        "sync_events",
        sa.Column("task_id", sa.String(36), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_until", sa.Float, nullable=True),
        sa.Column("last_reason", sa.Text, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("task_id", "key", name="pk_sync_events"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["sync_tasks.id"], ondelete="CASCADE", name="fk_sync_events_task_id_sync_tasks"
        ),
    )
    op.create_index("ix_sync_events_due", "sync_events", ["state", "next_attempt_at"])
    op.create_index("ix_sync_events_owner", "sync_events", ["lease_owner"])
    op.create_table(
        "sync_stats",
        sa.Column("task_id", sa.String(36), nullable=False),
        sa.Column("bucket_start", sa.BigInteger, nullable=False),
        sa.Column("request", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("success", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("failure", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("skip", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("size", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("task_id", "bucket_start", name="pk_sync_stats"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["sync_tasks.id"], ondelete="CASCADE", name="fk_sync_stats_task_id_sync_tasks"
        ),
    )


def downgrade() -> None:
    op.drop_table("sync_stats")
    op.drop_index("ix_sync_events_owner", table_name="sync_events")
    op.drop_index("ix_sync_events_due", table_name="sync_events")
    op.drop_table("sync_events")
    op.drop_index("ix_sync_tasks_project_id", table_name="sync_tasks")
    op.drop_table("sync_tasks")
