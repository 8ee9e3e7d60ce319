"""SQLAlchemy tables of sync tasks: the tasks, their durable per-key event queue, and 5-minute statistics."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, ForeignKey, Index, Integer, String, Table, Text

from ferry.db.models import metadata

# Width of one statistics bucket. Both list_sync_task_statistic (FIVE_MINUTES, or ONE_HOUR by summing twelve)
# and show_sync_task's monthly counters are sums over these rows, so the two can never disagree.
STAT_BUCKET_SECONDS = 300

# One row per sync task. `spec` is JSON of everything the API echoes back (no secrets); `secrets` is one
# SecretBox token of the JSON {src_ak, src_sk, dst_ak, dst_sk, cdn_key}. `generation` grows whenever the
# task is started or stopped, so workers know to rebuild their clients with the new credentials.
sync_tasks = Table(
    "sync_tasks",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(64), nullable=False, index=True),
    Column("status", String(16), nullable=False),  # SYNCHRONIZING | STOPPED
    Column("spec", Text, nullable=False),
    Column("secrets", Text, nullable=False),
    Column("options", Text, nullable=False, default="{}"),  # Ferry extensions (JSON), e.g. notification token
    Column("generation", Integer, nullable=False, default=1),
    Column("created_at", Float, nullable=False),  # epoch seconds
    Column("last_start_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # Reconciliation bookkeeping: when the last full comparison finished, and who is running one now.
    Column("reconciled_at", Float, nullable=True),
    Column("reconcile_owner", String(128), nullable=True),
    Column("reconcile_lease_until", Float, nullable=True),
    Column("last_error", Text, nullable=True),
    # Why the workers stopped the task (its keys or a bucket no longer work): a TRF code and a message naming
    # the side and the store's answer; cleared when the task is started again.
    Column("error_code", String(16), nullable=True),
    Column("error_msg", Text, nullable=True),
    # SHA-256 (hex) of the per-task notification token; the token itself is shown once and never stored.
    Column("notify_token_hash", String(64), nullable=True, unique=True),
)

# The durable event queue: one row per (task, key) that still needs work, so a burst of events for one key
# coalesces into one row (upsert). `version` grows with every event for the key; a worker that finishes
# version v deletes the row only if no newer event arrived meanwhile, otherwise the key runs again.
# state: pending (due at next_attempt_at, unless leased) | failed (gave up; kept to list it with its reason).
sync_events = Table(
    "sync_events",
    metadata,
    Column("task_id", String(36), ForeignKey("sync_tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("key", Text, primary_key=True),
    Column("state", String(8), nullable=False),
    Column("version", Integer, nullable=False, default=1),
    Column("attempts", Integer, nullable=False, default=0),
    Column("received_at", Float, nullable=False),  # first acceptance of the pending version (latency origin)
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_owner", String(128), nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("last_reason", Text, nullable=True),
    Column("updated_at", Float, nullable=False),
)
Index("ix_sync_events_due", sync_events.c.state, sync_events.c.next_attempt_at)
# Pending keys per task (and, through the tasks, per project): the event limits count them.
Index("ix_sync_events_task_state", sync_events.c.task_id, sync_events.c.state)
Index("ix_sync_events_owner", sync_events.c.lease_owner)

# Per-task counters in STAT_BUCKET_SECONDS buckets (bucket_start = epoch seconds, a multiple of the width).
sync_stats = Table(
    "sync_stats",
    metadata,
    Column("task_id", String(36), ForeignKey("sync_tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("bucket_start", BigInteger, primary_key=True),
    Column("request", BigInteger, nullable=False, default=0),
    Column("success", BigInteger, nullable=False, default=0),
    Column("failure", BigInteger, nullable=False, default=0),
    Column("skip", BigInteger, nullable=False, default=0),
    Column("size", BigInteger, nullable=False, default=0),
)
