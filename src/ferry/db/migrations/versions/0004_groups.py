"""Task groups: one row per group; its tasks are migration_tasks rows carrying the group id."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_groups"
# Groups create rows of migration_tasks (0002_api), so this branch starts there.
down_revision = "0002_api"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_groups",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("project_id", sa.String(32), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("task_type", sa.String(16), nullable=False),
        sa.Column("src_spec", sa.Text, nullable=False),
        sa.Column("dst_spec", sa.Text, nullable=False),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("bandwidth_policy", sa.Text, nullable=False),
        sa.Column("secrets", sa.Text, nullable=True),
        sa.Column("split_state", sa.Text, nullable=False),
        sa.Column("objects", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("task_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error_code", sa.String(16), nullable=True),
        sa.Column("error_msg", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires", sa.Float, nullable=True),
        sa.Column("retry_at", sa.Float, nullable=True),
        sa.Column("deleted_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_task_groups"),
    )
    op.create_index("ix_task_groups_project", "task_groups", ["project_id", "created_at"])
    op.create_index("ix_task_groups_status", "task_groups", ["status"])


def downgrade() -> None:
    op.drop_index("ix_task_groups_status", table_name="task_groups")
    op.drop_index("ix_task_groups_project", table_name="task_groups")
    op.drop_table("task_groups")
