"""On PostgreSQL, job_objects.key collates in byte order ("C"), so its primary key serves the paging by key."""

from __future__ import annotations

from alembic import op

revision = "0011_job_keys_in_byte_order"
down_revision = "0010_metric_snapshots"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every page of a job's results or finished keys asks `ORDER BY key COLLATE "C"` after the last key: with
    # the primary key in the database's collation each page sorted the job's remaining rows again (settling
    # a 1M-key task: 178 s of 394 s, `bench/huge_bucket.py worker --keys 1000000 --in-place`). Rebuilds the
    # primary key; SQLite's BINARY collation is byte order already.
    if op.get_bind().dialect.name == "postgresql":
        op.execute('ALTER TABLE job_objects ALTER COLUMN key TYPE TEXT COLLATE "C"')


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute('ALTER TABLE job_objects ALTER COLUMN key TYPE TEXT COLLATE "default"')
