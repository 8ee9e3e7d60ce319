"""Tokens record the access key they live with; signatures of accepted write requests are kept for the window."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_auth"
down_revision = "0005_smn"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_tokens", sa.Column("access_key", sa.String(64), nullable=True))
    op.create_table(
        "api_seen_signatures",
        sa.Column("signature", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("signature", name="pk_api_seen_signatures"),
    )
    op.create_index("ix_api_seen_signatures_expires_at", "api_seen_signatures", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_api_seen_signatures_expires_at", "api_seen_signatures")
    op.drop_table("api_seen_signatures")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("access_key")
