"""SQLAlchemy tables of distributed mode: work units, the live workers, shared rate budgets, cluster settings."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, String, Table, Text

from ferry.db.models import metadata

# One unit of work of a migration task, a task group or a sync task: a key range (start_after exclusive, end
# inclusive; NULL = open), a batch of keys (`spec`), a group split or a reconciliation. A queue message carries
# only a unit's id; whoever claims it does so with one conditional UPDATE on (state, lease), so a duplicate or
# late delivery finds the lease taken and does nothing. `run` is the owner's run number when the unit was made:
# units of an older run (the task was stopped and started again) are never worked on. `watermark` is the last
# key whose result is recorded, so a redelivered unit resumes after it instead of starting over.
work_units = Table(
    "work_units",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # range | keys | group_split | reconcile
    Column("owner_kind", String(16), nullable=False),  # task | group | sync
    Column("owner_id", String(64), nullable=False),
    Column("run", Integer, nullable=False, default=0),
    Column("start_after", Text, nullable=True),
    Column("end_key", Text, nullable=True),
    Column("spec", Text, nullable=False, default="{}"),  # JSON: a batch of keys, a prefix, options; no secrets
    Column("state", String(16), nullable=False),  # queued | running | done | failed | cancelled
    Column("attempts", Integer, nullable=False, default=0),
    # When a message for it was last sent (database clock): a queued unit whose message was lost (a broker
    # restarted without persistence) is sent again after a while; a duplicate message is harmless.
    Column("sent_at", Float, nullable=True),
    Column("lease_owner", String(128), nullable=True),
    Column("lease_expires", Float, nullable=True),  # database clock
    Column("heartbeat_at", Float, nullable=True),  # database clock
    Column("watermark", Text, nullable=True),
    Column("listed", BigInteger, nullable=False, default=0),
    Column("listed_bytes", BigInteger, nullable=False, default=0),  # the bytes of the objects in `listed`
    Column("objects_done", BigInteger, nullable=False, default=0),
    Column("bytes_done", BigInteger, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Index("ix_work_units_owner", "owner_kind", "owner_id", "run", "state"),
    Index("ix_work_units_lease", "state", "lease_expires"),
    # The coordinator's resend scan (UnitRepo.due_again) every tick: queued units by when they were sent.
    Index("ix_work_units_sent", "state", "sent_at"),
)

# One row per live worker process (`ferry worker`) and per dispatching server: what `ferry workers` and the
# workers API show. A row whose heartbeat is older than a few heartbeats is a dead worker; its units' leases
# run out and the units are claimed by others.
cluster_workers = Table(
    "cluster_workers",
    metadata,
    Column("id", String(128), primary_key=True),  # host/pid/random
    Column("role", String(16), nullable=False),  # worker | server
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("state", String(16), nullable=False),  # running | draining | stopped
    Column("units_in_flight", Integer, nullable=False, default=0),
    Column("units_done", BigInteger, nullable=False, default=0),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),  # database clock
    Column("version", String(32), nullable=False, default=""),
    Column("info", Text, nullable=False, default="{}"),  # JSON: queues, concurrency; never a URL with a password
)

# Token buckets shared by every worker: a task's bandwidth (bytes/s) and a source's request rate (requests/s)
# are one budget for the whole cluster, not one per worker. Taking tokens is one conditional UPDATE that
# refills by the database clock's elapsed time, so workers on hosts with skewed clocks still agree.
cluster_budgets = Table(
    "cluster_budgets",
    metadata,
    Column("name", String(255), primary_key=True),  # e.g. task:12:bytes, endpoint:<host>:requests
    Column("rate", Float, nullable=False),  # tokens per second; 0 = unlimited
    Column("burst", Float, nullable=False),
    Column("tokens", Float, nullable=False),
    Column("updated_at", Float, nullable=False),  # database clock
)

# Facts every process of one cluster must agree on, e.g. the fingerprint of the master key (an HMAC, never the
# key), so a worker started with another FERRY_MASTER_KEY refuses to start instead of failing every unit.
cluster_settings = Table(
    "cluster_settings",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
