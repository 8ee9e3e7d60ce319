"""Jobs and their resumable per-object state."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("watermark", sa.Text, nullable=True),
        sa.Column("listing_done", sa.Integer, nullable=False, server_default="0"),
        sa.Column("total_num", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("total_size", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_fingerprint", "jobs", ["fingerprint"])
    op.create_table(
        "job_objects",
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("etag", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("job_id", "key", name="pk_job_objects"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE", name="fk_job_objects_job_id_jobs"),
    )
    op.create_index("ix_job_objects_status", "job_objects", ["job_id", "status"])
    op.create_table(
        "job_uploads",
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("upload_id", sa.Text, nullable=False),
        sa.Column("src_etag", sa.Text, nullable=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("part_size", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("job_id", "key", name="pk_job_uploads"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE", name="fk_job_uploads_job_id_jobs"),
    )
    op.create_table(
        "job_parts",
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("part_number", sa.Integer, nullable=False),
        sa.Column("etag", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("crc64", sa.String(16), nullable=True),
        sa.Column("md5", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "key", "part_number", name="pk_job_parts"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE", name="fk_job_parts_job_id_jobs"),
    )


def downgrade() -> None:
    op.drop_table("job_parts")
    op.drop_table("job_uploads")
    op.drop_index("ix_job_objects_status", table_name="job_objects")
    op.drop_table("job_objects")
    op.drop_index("ix_jobs_fingerprint", table_name="jobs")
    op.drop_table("jobs")
