"""API service tables: credentials, tokens, privacy-agreement records and migration tasks."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_api"
# A branch of its own off the jobs schema (sync tasks are another); open_database upgrades every head.
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_credentials",
        sa.Column("access_key", sa.String(64), nullable=False),
        sa.Column("project_id", sa.String(32), nullable=False),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("access_key", name="pk_api_credentials"),
    )
    op.create_index("ix_api_credentials_project_id", "api_credentials", ["project_id"])
    op.create_table(
        "api_tokens",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("project_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name="pk_api_tokens"),
    )
    op.create_index("ix_api_tokens_project_id", "api_tokens", ["project_id"])
    op.create_table(
        "privacy_agreements",
        sa.Column("project_id", sa.String(32), nullable=False),
        sa.Column("accepted_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("project_id", name="pk_privacy_agreements"),
    )
    op.create_table(
        "migration_tasks",
        sa.Column("id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("project_id", sa.String(32), nullable=False),
        sa.Column("group_id", sa.String(100), nullable=True),
        sa.Column("group_type", sa.String(16), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("task_type", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("src_spec", sa.Text, nullable=False),
        sa.Column("dst_spec", sa.Text, nullable=False),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("bandwidth_policy", sa.Text, nullable=False),
        sa.Column("secrets", sa.Text, nullable=True),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("run_mode", sa.String(16), nullable=False),
        sa.Column("total_num", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("total_size", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("success_num", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("skip_num", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("fail_num", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("complete_size", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("real_size", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("speed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("left_time", sa.BigInteger, nullable=True),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("is_query_over", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("run_started_at", sa.Float, nullable=True),
        sa.Column("elapsed", sa.Float, nullable=False, server_default="0"),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("error_code", sa.String(16), nullable=True),
        sa.Column("error_msg", sa.Text, nullable=True),
        sa.Column("records", sa.Text, nullable=True),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires", sa.Float, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("retry_at", sa.Float, nullable=True),
        sa.Column("deleted_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_migration_tasks"),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], ondelete="SET NULL", name="fk_migration_tasks_job_id_jobs"
        ),
    )
    op.create_index("ix_migration_tasks_project", "migration_tasks", ["project_id", "created_at"])
    op.create_index("ix_migration_tasks_group", "migration_tasks", ["project_id", "group_id"])
    op.create_index("ix_migration_tasks_pickup", "migration_tasks", ["status", "priority", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_migration_tasks_pickup", table_name="migration_tasks")
    op.drop_index("ix_migration_tasks_group", table_name="migration_tasks")
    op.drop_index("ix_migration_tasks_project", table_name="migration_tasks")
    op.drop_table("migration_tasks")
    op.drop_table("privacy_agreements")
    op.drop_index("ix_api_tokens_project_id", table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_index("ix_api_credentials_project_id", table_name="api_credentials")
    op.drop_table("api_credentials")
