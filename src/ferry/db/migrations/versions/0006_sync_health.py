"""Sync tasks: an index to count each task's pending events (the event limits)."""

from __future__ import annotations

from alembic import op

revision = "0006_sync_health"
# The sync branch (0003_sync) goes on by itself, as the API areas do.
down_revision = "0003_sync"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_sync_events_task_state", "sync_events", ["task_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_sync_events_task_state", table_name="sync_events")
