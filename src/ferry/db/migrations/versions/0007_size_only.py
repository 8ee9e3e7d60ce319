"""Migration tasks count the objects verified by their size only (their source gave no checksum)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_size_only"
down_revision = "0006_auth"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("migration_tasks",
                  sa.Column("size_only_num", sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("migration_tasks") as batch:
        batch.drop_column("size_only_num")
