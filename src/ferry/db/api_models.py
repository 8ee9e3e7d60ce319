"""SQLAlchemy tables of the API service: credentials, tokens, privacy records and migration tasks."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, ForeignKey, Index, Integer, String, Table, Text

from ferry.db.models import metadata

# One AK/SK pair per row. The SK must be recoverable (the SDK signature is an HMAC keyed by it), so it is a
# SecretBox token, never clear text; revoking keeps the row so the AK is never handed out again.
api_credentials = Table(
    "api_credentials",
    metadata,
    Column("access_key", String(64), primary_key=True),
    Column("project_id", String(32), nullable=False, index=True),
    Column("secret", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)

# X-Auth-Token tokens, kept only as their SHA-256: the table never holds a usable token. Its id (what
# `ferry tokens list` shows and `revoke` takes) is the first 16 hex digits of that hash. A token lives as long
# as the access key it was issued under; tokens from before keys were recorded (access_key NULL) as long as
# their project has an active key.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("project_id", String(32), nullable=False, index=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    Column("access_key", String(64), nullable=True),
)

# Signatures of accepted signed write requests, kept until their X-Sdk-Date leaves the 15-minute window, so
# that a captured request cannot be replayed within it; in the database so that every server sharing it (and a
# restarted one) refuses the replay.
api_seen_signatures = Table(
    "api_seen_signatures",
    metadata,
    Column("signature", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
)

# update_privacy_agreement_record: when each project last accepted the agreement.
privacy_agreements = Table(
    "privacy_agreements",
    metadata,
    Column("project_id", String(32), primary_key=True),
    Column("accepted_at", Float, nullable=False),
)

# A migration task is the unit of work any runner can pick up by its id: claimed with a lease (owner, expiry)
# through a conditional UPDATE, so two workers never run one task. The JSON specs hold no secrets; `secrets`
# is one SecretBox token of the task's keys, wiped when the task stops needing them (paused, failed, done).
# Counters are written by the runner about once a second, so list/show read progress straight from here.
migration_tasks = Table(
    "migration_tasks",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("project_id", String(32), nullable=False),
    Column("group_id", String(100), nullable=True),
    Column("group_type", String(16), nullable=False),  # NORMAL_TASK | GROUP_TASK | SYNC_TASK
    Column("name", String(255), nullable=False),
    Column("description", Text, nullable=False),
    Column("task_type", String(16), nullable=False),  # object | prefix | list | url_list
    Column("status", Integer, nullable=False),  # TASK_STATUS 1..7
    Column("priority", Integer, nullable=False),  # 3 HIGH, 2 MEDIUM, 1 LOW: pickup order
    Column("src_spec", Text, nullable=False),
    Column("dst_spec", Text, nullable=False),
    Column("options", Text, nullable=False),
    Column("bandwidth_policy", Text, nullable=False),
    Column("secrets", Text, nullable=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True),
    # How the next run of the job starts: resume (from the job's listing watermark), full (list everything,
    # skip what is finished), failed_only (just the objects that failed).
    Column("run_mode", String(16), nullable=False),
    Column("total_num", BigInteger, nullable=False, default=0),
    Column("total_size", BigInteger, nullable=False, default=0),
    Column("success_num", BigInteger, nullable=False, default=0),
    Column("skip_num", BigInteger, nullable=False, default=0),
    Column("fail_num", BigInteger, nullable=False, default=0),
    # Of success_num: objects verified by their size only, their source having given no checksum.
    Column("size_only_num", BigInteger, nullable=False, default=0),
    Column("complete_size", BigInteger, nullable=False, default=0),
    Column("real_size", BigInteger, nullable=False, default=0),
    # Archived objects waiting for their restore (enable_restore); a Ferry extension of the OMS counters.
    Column("restoring_num", BigInteger, nullable=False, default=0, server_default="0"),
    Column("speed", BigInteger, nullable=False, default=0),
    Column("left_time", BigInteger, nullable=True),  # ms; unknown until the listing is complete
    Column("progress", Float, nullable=False, default=0.0),
    Column("is_query_over", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),  # first start
    Column("run_started_at", Float, nullable=True),  # start of the current (or last) run
    Column("elapsed", Float, nullable=False, default=0.0),  # seconds spent running in earlier runs
    Column("finished_at", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
    Column("error_code", String(16), nullable=True),
    Column("error_msg", Text, nullable=True),
    Column("records", Text, nullable=True),  # JSON: paths of the failed/success/skip lists, errors
    Column("smn_result", Text, nullable=True),  # JSON: what became of the task-end SMN notification
    Column("lease_owner", String(128), nullable=True),
    Column("lease_expires", Float, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("retry_at", Float, nullable=True),
    # Deleted tasks stay as tombstones for a day: the 24-hour creation quota counts them.
    Column("deleted_at", Float, nullable=True),
)
Index("ix_migration_tasks_project", migration_tasks.c.project_id, migration_tasks.c.created_at)
Index("ix_migration_tasks_group", migration_tasks.c.project_id, migration_tasks.c.group_id)
Index("ix_migration_tasks_pickup", migration_tasks.c.status, migration_tasks.c.priority, migration_tasks.c.created_at)
