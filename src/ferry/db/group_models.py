"""SQLAlchemy table of task groups: a source split into migration tasks (rows of migration_tasks with group_id)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, String, Table, Text

from ferry.db.models import metadata

# One row per group. Its tasks' counters are not copied here: list/show sum them from migration_tasks (by the
# (project_id, group_id) index), so the roll-up can never drift from the tasks. What only the group knows is
# kept: the split checkpoint (`split_state`, JSON: prefix index, listing position, chunk number, done) and what
# the split assigned so far (`objects`, `bytes`, `task_count`). `secrets` is one SecretBox token of the group's
# keys, held while the split runs and for the clean-up of its list files, wiped when paused or finished.
# The splitter claims a group with a lease (owner, expiry) through a conditional UPDATE, as tasks are claimed.
task_groups = Table(
    "task_groups",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(32), nullable=False),
    Column("status", Integer, nullable=False),  # GROUP_STATUS 0..9 as stored; 5/6 and 7->3 are rolled up
    Column("description", Text, nullable=False),
    Column("task_type", String(16), nullable=False),  # PREFIX | LIST | URL_LIST
    Column("src_spec", Text, nullable=False),
    Column("dst_spec", Text, nullable=False),
    Column("options", Text, nullable=False),
    Column("bandwidth_policy", Text, nullable=False),
    Column("secrets", Text, nullable=True),
    Column("split_state", Text, nullable=False),
    Column("objects", BigInteger, nullable=False, default=0),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("task_count", Integer, nullable=False, default=0),
    Column("error_code", String(16), nullable=True),
    Column("error_msg", Text, nullable=True),
    Column("smn_result", Text, nullable=True),  # JSON: what became of the group-end SMN notification
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
    Column("lease_owner", String(128), nullable=True),
    Column("lease_expires", Float, nullable=True),
    Column("retry_at", Float, nullable=True),
    Column("deleted_at", Float, nullable=True),
)
Index("ix_task_groups_project", task_groups.c.project_id, task_groups.c.created_at)
Index("ix_task_groups_status", task_groups.c.status)
