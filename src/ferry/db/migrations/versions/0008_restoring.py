"""How many objects of a migration task wait for the restore of an archived source object (enable_restore)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_restoring"
down_revision = "0007_size_only"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("migration_tasks", sa.Column("restoring_num", sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("migration_tasks", "restoring_num")
