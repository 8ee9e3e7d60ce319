"""Task groups and sync tasks in distributed mode, wired to the services: what a worker runs, what the server runs.

A worker (`install_worker`) registers the handlers of `group_split` and `reconcile` units and the sync event
loop as a background service (`ferry.runner.worker_services`), woken by PostgreSQL notifications that the
server sends when events are committed (`sync_wake`); the server (`server_runners`) runs the group
runner in dispatch mode (it settles statuses and sends SMN notices as embedded, but hands splits to workers)
and the reconciliation dispatcher instead of any sync worker. Credentials stay sealed in the database: the
handlers open them with the worker's own master key.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

from sqlalchemy import Engine

from ferry import metrics
from ferry.db.metric_repo import SnapshotPublisher
from ferry.db.notify import Listener, Notifier
from ferry.db.unit_repo import UnitRepo
from ferry.errors import UsageError
from ferry.runner import worker_services
from ferry.runner.distributed import DispatchSettings
from ferry.runner.groups import SPLIT_KIND, GroupRunner, GroupRunnerSettings, split_handler
from ferry.runner.sync import SyncBackground, SyncSettings, SyncWorkers
from ferry.runner.sync_units import RECONCILE_KIND, RangeSettings, ReconcileDispatcher, reconcile_handler
from ferry.runner.units import handles
from ferry.secrets import SecretBox
from ferry.service.groups import GroupContext, runner_ports
from ferry.service.sync import open_task_backends
from ferry.service.tasks import TaskContext
from ferry.settings import MetricsSettings


def _noop() -> None:
    return None


def range_settings(environ: Mapping[str, str] | None = None) -> RangeSettings:
    """How many ranges a reconciliation is cut into at most: FERRY_SYNC_RECONCILE_UNITS for a byte-ordered
    source (default 8), FERRY_SYNC_RECONCILE_UNITS_UNORDERED for any other (default 1: each of its ranges
    lists both buckets whole)."""
    env = os.environ if environ is None else environ
    values: dict[str, int] = {}
    for name, attr in (("FERRY_SYNC_RECONCILE_UNITS", "units"),
                       ("FERRY_SYNC_RECONCILE_UNITS_UNORDERED", "unordered_units")):
        raw = (env.get(name) or "").strip()
        if not raw:
            continue
        if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
            raise UsageError(f"{name} must be a whole number from 1 to 10000")
        values[attr] = int(raw)
    return RangeSettings(**values)


def worker_sync_settings(settings: SyncSettings | None = None) -> SyncSettings:
    """The sync settings of a worker: the environment's, running no whole reconciliation (the server splits
    them into units), under a node id of this process alone (`host/pid`): several workers of one host must not
    take back each other's event leases when one of them starts, but one started after a crash takes back
    those of the dead processes of its host at once."""
    base = settings or SyncSettings.from_env()
    return dataclasses.replace(base, reconcile_here=False, reclaim_dead=True,
                               node_id=f"{base.node_id}/{os.getpid()}")


def install_worker(engine: Engine, box: SecretBox, data_dir: Path, *, sync: SyncSettings | None = None,
                   groups: GroupRunnerSettings | None = None) -> SyncBackground:
    """Register this worker's `group_split` and `reconcile` handlers and its sync event loop (a background
    service, started by `worker_services.start_all()`); the sync loop's handle."""
    group_ctx = GroupContext(tasks=TaskContext(engine=engine, box=box, data_dir=data_dir))
    handles(SPLIT_KIND)(split_handler(runner_ports(group_ctx), groups))
    workers = SyncWorkers(engine, partial(open_task_backends, box), worker_sync_settings(sync))
    background = SyncBackground(workers)
    handles(RECONCILE_KIND)(reconcile_handler(background))
    worker_services.add(background)
    # Events committed by the API wake this worker's loop at once rather than at its next poll.
    worker_services.add(Listener(engine, background.notify))
    # A worker serves no /metrics: its tallies (store errors and retries, event latency) reach the server's
    # through the database, one row per worker process.
    worker_services.add(SnapshotPublisher(engine, f"worker@{socket.gethostname()}/{os.getpid()}", metrics.snapshot,
                                          time.time, MetricsSettings.from_env().publish_seconds))
    return background


def sync_wake(engine: Engine, dispatcher: ReconcileDispatcher) -> Callable[[], None]:
    """What the API calls after writing to a sync task in distributed mode: the dispatcher reconciles a task
    created or started at once, and a NOTIFY wakes the workers' event loops."""
    notifier = Notifier(engine)

    def wake() -> None:
        dispatcher.notify()
        notifier.poke()

    return wake


def server_runners(engine: Engine, box: SecretBox, group_ctx: GroupContext, *,
                   sync: SyncSettings | None = None, wake_units: Callable[[], None] = _noop,
                   ranges: RangeSettings | None = None) -> tuple[GroupRunner, ReconcileDispatcher]:
    """What `ferry serve` runs for groups and sync tasks in distributed mode (not started)."""
    groups = GroupRunner(runner_ports(group_ctx), units=UnitRepo(engine), wake_units=wake_units)
    # The coordinator's tick (FERRY_DISPATCH_TICK) is also how soon a finished reconciliation is recorded.
    dispatcher = ReconcileDispatcher(engine, partial(open_task_backends, box), sync or SyncSettings.from_env(),
                                     ranges or range_settings(), wake_units=wake_units,
                                     poll_seconds=DispatchSettings.from_env().tick)
    return groups, dispatcher
