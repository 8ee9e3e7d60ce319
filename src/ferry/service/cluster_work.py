"""Task groups and sync tasks in distributed mode, wired to the services: what a worker runs, what the server runs.

A worker (`install_worker`) registers the handlers of `group_split` and `reconcile` units and the sync event
loop as a background service (`ferry.runner.worker_services`); the server (`server_runners`) runs the group
runner in dispatch mode (it settles statuses and sends SMN notices as embedded, but hands splits to workers)
and the reconciliation dispatcher instead of any sync worker. Credentials stay sealed in the database: the
handlers open them with the worker's own master key.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

from sqlalchemy import Engine

from ferry.db.unit_repo import UnitRepo
from ferry.errors import UsageError
from ferry.runner import worker_services
from ferry.runner.groups import SPLIT_KIND, GroupRunner, GroupRunnerSettings, split_handler
from ferry.runner.sync import SyncBackground, SyncSettings, SyncWorkers
from ferry.runner.sync_units import RECONCILE_KIND, RangeSettings, ReconcileDispatcher, reconcile_handler
from ferry.runner.units import handles
from ferry.secrets import SecretBox
from ferry.service.groups import GroupContext, runner_ports
from ferry.service.sync import open_task_backends
from ferry.service.tasks import TaskContext


def _noop() -> None:
    return None


def range_settings(environ: Mapping[str, str] | None = None) -> RangeSettings:
    """FERRY_SYNC_RECONCILE_UNITS: how many ranges a reconciliation is cut into at most (default 8)."""
    env = os.environ if environ is None else environ
    raw = (env.get("FERRY_SYNC_RECONCILE_UNITS") or "").strip()
    if not raw:
        return RangeSettings()
    if not raw.isdigit() or int(raw) < 1:
        raise UsageError("FERRY_SYNC_RECONCILE_UNITS must be a positive whole number")
    return RangeSettings(units=int(raw))


def worker_sync_settings(settings: SyncSettings | None = None) -> SyncSettings:
    """The sync settings of a worker: the environment's, running no whole reconciliation (the server splits
    them into units), under a node id of this process alone: several workers of one host must not take back
    each other's event leases when one of them starts."""
    base = settings or SyncSettings.from_env()
    return dataclasses.replace(base, reconcile_here=False, node_id=f"{base.node_id}/worker-{os.getpid()}")


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
    return background


def server_runners(engine: Engine, box: SecretBox, group_ctx: GroupContext, *,
                   sync: SyncSettings | None = None, wake_units: Callable[[], None] = _noop,
                   ranges: RangeSettings | None = None) -> tuple[GroupRunner, ReconcileDispatcher]:
    """What `ferry serve` runs for groups and sync tasks in distributed mode (not started)."""
    groups = GroupRunner(runner_ports(group_ctx), units=UnitRepo(engine), wake_units=wake_units)
    dispatcher = ReconcileDispatcher(engine, partial(open_task_backends, box), sync or SyncSettings.from_env(),
                                     ranges or range_settings(), wake_units=wake_units)
    return groups, dispatcher
