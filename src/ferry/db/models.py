"""SQLAlchemy tables: jobs (one execution of a transfer) and the per-object state that makes them resumable."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# A job is the unit of work any runner can pick up by id. `spec` is JSON describing source, destination and
# options with secrets only in encrypted form; `fingerprint` identifies "the same transfer" so a re-run of an
# unfinished one resumes it.
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("fingerprint", String(64), nullable=False, index=True),
    Column("spec", Text, nullable=False),
    Column("status", String(16), nullable=False),  # pending, running, succeeded, failed, stopped
    Column("watermark", Text, nullable=True),  # every source key <= this (byte order) is finished
    Column("listing_done", Integer, nullable=False, default=0),
    Column("total_num", BigInteger, nullable=False, default=0),
    Column("total_size", BigInteger, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("error", Text, nullable=True),
)

# One row per source key the job has finished with (copied, skipped or failed), written in batches.
job_objects = Table(
    "job_objects",
    metadata,
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    # Byte order on PostgreSQL too (SQLite's BINARY already is): the results are paged by key in byte order
    # (job_repo._byte_order), which an index in the database's own collation cannot serve.
    Column("key", Text().with_variant(Text(collation="C"), "postgresql"), primary_key=True),
    Column("status", String(8), nullable=False),  # success, skipped, failed
    Column("size", BigInteger, nullable=False),
    Column("etag", Text, nullable=True),
    Column("reason", Text, nullable=True),
    Column("updated_at", Float, nullable=False),
)
Index("ix_job_objects_status", job_objects.c.job_id, job_objects.c.status)

# Multipart uploads in flight, so a restarted job resumes them instead of starting at 0 %.
job_uploads = Table(
    "job_uploads",
    metadata,
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("key", Text, primary_key=True),
    Column("upload_id", Text, nullable=False),
    Column("src_etag", Text, nullable=True),
    Column("size", BigInteger, nullable=False),
    Column("part_size", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
)

job_parts = Table(
    "job_parts",
    metadata,
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("key", Text, primary_key=True),
    Column("part_number", Integer, primary_key=True),
    Column("etag", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("crc64", String(16), nullable=True),  # hex; parts combine into the object's CRC64
    Column("md5", String(32), nullable=True),
)
