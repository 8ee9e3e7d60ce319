"""Where each finished task and task group records what became of its SMN notification."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_smn"
down_revision = "0004_groups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("migration_tasks", sa.Column("smn_result", sa.Text, nullable=True))
    op.add_column("task_groups", sa.Column("smn_result", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("task_groups", "smn_result")
    op.drop_column("migration_tasks", "smn_result")
