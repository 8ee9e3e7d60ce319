"""Sync tasks: an index to count each task's pending events (the event limits), and why a task was stopped."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_sync_health"
# The sync branch (0003_sync) goes on by itself, as the API areas do.
down_revision = "0003_sync"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_sync_events_task_state", "sync_events", ["task_id", "state"])
    op.add_column("sync_tasks", sa.Column("error_code", sa.String(16), nullable=True))
    op.add_column("sync_tasks", sa.Column("error_msg", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("sync_tasks", "error_msg")
    op.drop_column("sync_tasks", "error_code")
    op.drop_index("ix_sync_events_task_state", table_name="sync_events")
