"""Event tallies that processes without an API of their own publish for `/metrics`."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_metric_snapshots"
# A branch of its own, as the sync and API areas are: nothing here depends on their tables.
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metric_snapshots",
        sa.Column("source", sa.String(160), primary_key=True),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("samples", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("metric_snapshots")
