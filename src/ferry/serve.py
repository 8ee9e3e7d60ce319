"""Assembles the service — database, master key, ApiServices, the task runner — and runs it under uvicorn."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine

from ferry.api.app import create_app
from ferry.api.deps import ApiServices
from ferry.api.http_edge import QuerySecretFilter, protocol_class
from ferry.db.database import open_database
from ferry.errors import UsageError
from ferry.runner.broker import broker_url
from ferry.runner.distributed import DispatchSettings, DistributedRunner
from ferry.runner.groups import GroupRunner
from ferry.runner.migration import LocalRunner, RunnerSettings
from ferry.runner.sync import SyncBackground
from ferry.runner.sync_units import ReconcileDispatcher
from ferry.secrets import KEY_FILE_NAME, SecretBox
from ferry.service import credentials
from ferry.service.cluster_work import server_runners
from ferry.service.credentials import DbCredentialStore
from ferry.service.endpoints import load_overrides
from ferry.service.groups import GroupContext, runner_ports
from ferry.service.smn import publish_end
from ferry.service.sync import SyncContext, SyncProcess, build_sync_runtime
from ferry.service.tasks import TaskContext, TaskLimits
from ferry.settings import HttpLimits, make_private, public_url

DEFAULT_HOST: Final = "127.0.0.1"
# Not 80/443 (no TLS here, and no root needed) nor the crowded 8000/8080; free on common installs.
DEFAULT_PORT: Final = 8780
log = logging.getLogger("ferry.serve")


@dataclass
class Service:
    """Everything `ferry serve` runs; tests build one too and drive it in-process."""

    engine: Engine
    box: SecretBox
    data_dir: Path
    services: ApiServices
    app: FastAPI
    runner: LocalRunner | None
    # The sync-task workers (event queue and reconciliation; their own process unless FERRY_SYNC_WORKERS=thread),
    # or in distributed mode the dispatcher of reconciliation ranges to the workers,
    # settings from FERRY_SYNC_* variables.
    sync: SyncBackground | SyncProcess | ReconcileDispatcher | None = None
    # The task-group runner (splits groups into tasks, settles their status).
    groups: GroupRunner | None = None

    def start_runner(self) -> None:
        if self.runner is not None:
            self.runner.start()
        if self.sync is not None:
            self.sync.start()
        if self.groups is not None:
            self.groups.start()

    def close(self) -> None:
        if self.groups is not None:
            # A split in progress keeps its checkpoint and goes on at the next start.
            self.groups.stop()
        if self.sync is not None:
            # In-flight keys finish and are recorded; queued ones wait in the database for the next start.
            self.sync.stop()
        if self.runner is not None:
            self.runner.stop()
        self.engine.dispose()


def _warn_if_database_vanished(data_dir: Path, database_url: str) -> None:
    """Say so when a data directory that was used (its master key is there) has lost its SQLite file: the
    server then starts on a new, empty database, and every task it knew is gone."""
    if not database_url.startswith("sqlite:///"):
        return
    path = Path(database_url.removeprefix("sqlite:///"))
    if not path.exists() and (data_dir / KEY_FILE_NAME).exists():
        log.warning("no database at %s, though %s was used before (its %s is there): starting on a new, empty "
                    "one; tasks, credentials and progress kept in the old one are not in it. Stop the server and "
                    "restore the file to keep them.", path, data_dir, KEY_FILE_NAME)


def _task_runner(engine: Engine, box: SecretBox, data_dir: Path, settings: RunnerSettings | None) -> LocalRunner:
    """The embedded runner; with FERRY_BROKER_URL (and a shared database), the coordinator of the workers."""
    url = broker_url()
    if url is None:
        return LocalRunner(engine, box, data_dir, settings, publish_end=publish_end)
    if engine.dialect.name == "sqlite":
        raise UsageError("FERRY_BROKER_URL needs FERRY_DATABASE_URL to name the PostgreSQL database the workers "
                         "share; an SQLite file is this server's alone")
    return DistributedRunner(engine, box, data_dir, settings, publish_end=publish_end, broker_url=url,
                             dispatch=DispatchSettings.from_env())


def build(
    data_dir: Path,
    database_url: str,
    *,
    run_tasks: bool = True,
    runner_settings: RunnerSettings | None = None,
    limits: TaskLimits | None = None,
    sync_workers: str = "thread",
    http_limits: HttpLimits | None = None,
    public_url: str | None = None,
) -> Service:
    """Open (and upgrade) the database, load the master key, and wire the API over them.

    `sync_workers` (thread | process) is where the sync-task workers run unless FERRY_SYNC_WORKERS says;
    `public_url` roots the links the API hands out (else the address each request came in on).
    """
    load_overrides()  # a malformed FERRY_ENDPOINT_OVERRIDES is refused now, not by the first task that needs it
    _warn_if_database_vanished(data_dir, database_url)
    engine = open_database(database_url)
    box = SecretBox.load(data_dir)
    runner = _task_runner(engine, box, data_dir, runner_settings) if run_tasks else None
    ctx = TaskContext(engine=engine, box=box, data_dir=data_dir, limits=limits or TaskLimits())
    if runner is not None:
        ctx = dataclasses.replace(ctx, notify=runner.notify)
    group_ctx = GroupContext(tasks=ctx)
    sync_runtime: SyncBackground | SyncProcess | ReconcileDispatcher | None
    group_runner: GroupRunner | None
    if run_tasks and os.environ.get("FERRY_BROKER_URL", "").strip():
        # Distributed: workers split groups, run sync events (polling the database: no wake-up to send) and
        # reconcile ranges; this server hands the splits and reconciliations out and settles group statuses.
        # Their units are sent by the task coordinator, woken as soon as they are made.
        wake = runner.wake_units if isinstance(runner, DistributedRunner) else None
        group_runner, sync_runtime = (server_runners(engine, box, group_ctx, wake_units=wake) if wake is not None
                                      else server_runners(engine, box, group_ctx))
        # A task created or started is reconciled at once; its events are found by the workers' next poll.
        sync_ctx = SyncContext(engine, box, wake=sync_runtime.notify)
    else:
        sync_ctx, sync_runtime = (
            build_sync_runtime(engine, box, database_url, str(data_dir), default_mode=sync_workers)
            if run_tasks else (SyncContext(engine, box), None)
        )
        group_runner = GroupRunner(runner_ports(group_ctx)) if run_tasks else None
    if group_runner is not None:
        group_ctx = dataclasses.replace(group_ctx, notify=group_runner.notify)
    services = ApiServices(
        credentials=DbCredentialStore(engine, box),
        record_privacy_agreement=lambda project_id: credentials.record_privacy_agreement(engine, project_id),
        tasks=ctx,
        sync=sync_ctx,
        groups=group_ctx,
        http_limits=http_limits or HttpLimits(),
        public_url=public_url,
    )
    app = create_app(services)
    return Service(engine, box, data_dir, services, app, runner, sync=sync_runtime, groups=group_runner)


class _Server(uvicorn.Server):
    """uvicorn, minus its habit of re-raising SIGTERM/SIGINT after a graceful shutdown: that would kill the
    process before the runner is stopped and its leases released."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


def serve(data_dir: Path, database_url: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          runner_settings: RunnerSettings | None = None) -> int:
    """Run the API and the runner until SIGINT/SIGTERM; running tasks are left to resume at the next start."""
    limits = HttpLimits.from_env()
    # Whatever the server writes (the database and its WAL, object lists, logs of a sync process) is its own.
    os.umask(0o077)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    make_private(data_dir)
    # The sync workers get a process of their own: copying must not hold up API requests on the GIL.
    service = build(data_dir, database_url, runner_settings=runner_settings, sync_workers="process",
                    http_limits=limits, public_url=public_url())
    if not _is_loopback(host):
        print(f"ferry: warning: serving plain HTTP on {host}; put a TLS proxy in front of it", file=sys.stderr)
    config = uvicorn.Config(service.app, host=host, port=port, lifespan="off", log_config=None,
                            access_log=True, server_header=False, http=protocol_class(limits),
                            timeout_keep_alive=limits.keep_alive)  # type: ignore[arg-type]
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, QuerySecretFilter) for f in access.filters):
        access.addFilter(QuerySecretFilter())
    server = _Server(config)
    service.start_runner()
    dialect = service.engine.dialect.name
    # The database URL is not printed: a PostgreSQL URL may carry a password.
    print(f"ferry: OMS v2 API on http://{host}:{port} (state in {data_dir}, {dialect} database)",
          file=sys.stderr, flush=True)
    try:
        server.run()
    finally:
        log.info("shutting down: stopping runs (they resume at the next start)")
        service.close()
    if not server.started:
        print(f"ferry: error: could not listen on {host}:{port}", file=sys.stderr)
        return 1
    return 0
