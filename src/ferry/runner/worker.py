"""The worker process of distributed mode (`ferry worker`): takes unit ids from the broker and runs their units.

Dramatiq's worker threads receive the messages; each hands its unit to one asyncio loop (a LoopThread) and
waits for it there, so all units of the process share one loop, one connection pool and one memory budget.
Running a unit: claim it in the database (one conditional UPDATE; a duplicate or late message claims nothing
and is simply acknowledged), run its kind's handler (runner.units.HANDLERS), renew the lease every few seconds
from inside the unit while writing its progress (so a long multipart copy is never taken for dead, whatever
the broker thinks of this process), and finish it as done or failed. A unit whose lease is refused (cancelled,
or taken over after this process stalled) is stopped at once. An error that may pass hands the unit back to be
tried again, up to `max_attempts` times.

SIGTERM (or SIGINT) drains: no new message is taken, running units get `drain_timeout` seconds to finish, and
those still running then are stopped and handed back with their watermark, for another worker to resume.
The process says who it is, what it runs and whether it drains in `cluster_workers` every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import dramatiq
from sqlalchemy import Engine

from ferry import __version__
from ferry.db.cluster_repo import WorkerRepo
from ferry.db.unit_repo import CANCELLED, DONE, FAILED, UnitRepo, UnitRow
from ferry.errors import FerryError
from ferry.runner import worker_services
from ferry.runner.broker import make_broker, redact, unit_actor
from ferry.runner.loop_thread import LoopThread
from ferry.runner.units import HANDLERS, UnitCancelled, UnitContext, UnitFailed
from ferry.secrets import SecretBox

log = logging.getLogger("ferry.worker")
# The modules whose import registers unit handlers (a new kind of unit adds its module here).
HANDLER_MODULES: list[str] = ["ferry.runner.task_units"]
MiB: Final = 1024 * 1024


@dataclass(frozen=True)
class WorkerSettings:
    """How much one worker process runs at once and how it keeps its leases."""

    threads: int = 4  # units at once
    concurrency: int = 64  # objects in flight in this process, shared by the units it runs
    memory_limit: int = 128 * MiB  # object data held in memory per unit
    lease_ttl: float = 30.0  # a unit not renewed for this long is taken for dead and sent again
    heartbeat: float = 3.0  # seconds between lease renewals (progress written with each)
    beat_interval: float = 5.0  # seconds between this process's heartbeats in cluster_workers
    drain_timeout: float = 30.0
    max_attempts: int = 5  # a unit failing this many times (not a TaskFailure) fails for good
    extra: dict[str, Any] = field(default_factory=dict)  # handler settings (ctx.settings)


def worker_id() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"


class UnitWorker(LoopThread):
    """One worker process's units (see the module docstring)."""

    thread_name = "ferry-units"

    def __init__(self, engine: Engine, box: SecretBox, broker_url: str, scratch: Path,
                 settings: WorkerSettings | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.box = box
        self.broker_url = broker_url
        self.scratch = scratch
        self.settings = settings or WorkerSettings()
        self.owner = worker_id()
        self.units = UnitRepo(engine)
        self.workers = WorkerRepo(engine)
        self.draining = False
        self.drain_deadline: float | None = None
        self.units_done = 0
        self._contexts: dict[int, UnitContext] = {}
        self._handed: set[int] = set()
        self._drain_requested = threading.Event()
        self._dramatiq: dramatiq.Worker | None = None
        self._actor: dramatiq.Actor[Any, Any] | None = None
        self._slots: asyncio.Semaphore | None = None

    def __repr__(self) -> str:
        return f"UnitWorker(owner={self.owner!r})"

    # -- the loop: this process's heartbeat ------------------------------------------------------------------

    async def run(self) -> None:
        s = self.settings
        info = {"threads": s.threads, "concurrency": s.concurrency, "kinds": sorted(HANDLERS)}
        host, pid = socket.gethostname(), os.getpid()
        registered = False
        while True:
            try:
                if not registered:
                    await asyncio.to_thread(self.workers.register, self.owner, "worker", host, pid, __version__,
                                            info)
                    registered = True
                else:
                    registered = await asyncio.to_thread(
                        self.workers.beat, self.owner, len(self._contexts), self.units_done,
                        "draining" if self.draining else "running")
            except Exception as exc:  # the database may be restarting: beat again later
                log.warning("worker heartbeat not written: %s", redact(str(exc))[:300])
            await asyncio.sleep(s.beat_interval)

    # -- one unit ----------------------------------------------------------------------------------------------

    def on_message(self, unit_id: int) -> None:
        """The actor (in a Dramatiq worker thread): run the unit on the loop and wait for it."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the worker's loop is not running")
        asyncio.run_coroutine_threadsafe(self.run_unit(int(unit_id)), loop).result()

    async def run_unit(self, unit_id: int) -> None:
        s = self.settings
        if self.draining:
            # Taken just as the drain began: back to the queue for a worker that is not stopping.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.send_units, [unit_id])
            return
        try:
            row = await asyncio.to_thread(self.units.claim, unit_id, self.owner, s.lease_ttl)
        except Exception as exc:
            log.warning("unit %d: not claimed (%s); it is sent again later", unit_id, redact(str(exc))[:300])
            return
        if row is None:
            log.debug("unit %d: already taken or finished", unit_id)
            return
        handler = HANDLERS.get(row.kind)
        if handler is None:
            await self._end(row, FAILED, {"error": f"no handler for units of kind {row.kind!r} in this worker"})
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(s.concurrency)  # made on the loop it is used on
        ctx = UnitContext(self.engine, self.box, self.owner, self.scratch,
                          settings={"concurrency": s.concurrency, "memory_limit": s.memory_limit,
                                    "slots": self._slots, "send": self.send_units, **s.extra})
        self._contexts[unit_id] = ctx
        log.info("unit %d (%s of %s %s, attempt %d): started", unit_id, row.kind, row.owner_kind, row.owner_id,
                 row.attempts)
        try:
            await self._drive(row, ctx, handler(row, ctx))
        finally:
            self._contexts.pop(unit_id, None)
            self._handed.discard(unit_id)

    async def _drive(self, row: UnitRow, ctx: UnitContext, work: Any) -> None:
        s = self.settings
        task: asyncio.Task[None] = asyncio.create_task(work, name=f"unit-{row.id}")
        lost = handed = False
        while not task.done():
            await asyncio.wait({task}, timeout=s.heartbeat)
            if task.done():
                break
            if self.drain_deadline is not None and time.monotonic() >= self.drain_deadline:
                handed = True
                ctx.stop.set()
                task.cancel()
                break
            try:
                ok = await asyncio.to_thread(self.units.heartbeat, row.id, self.owner, s.lease_ttl,
                                             ctx.progress.values())
            except Exception as exc:
                # The database is away: keep going while the lease may still hold; the unit's results wait.
                log.warning("unit %d: lease not renewed: %s", row.id, redact(str(exc))[:300])
                continue
            if not ok:
                lost = True
                ctx.stop.set()
                task.cancel()
                break
        try:
            await task
        except asyncio.CancelledError:
            if lost:
                log.info("unit %d: lease lost (cancelled or taken over): stopped", row.id)
                return
            if handed:
                await self._hand_back(row, ctx, None)
                return
            raise
        except UnitCancelled:
            await self._end(row, CANCELLED, ctx.progress.values())
            return
        except UnitFailed as exc:
            await self._end(row, FAILED, {**ctx.progress.values(), "error": str(exc)[:1024]})
            return
        except Exception as exc:
            why = exc.message if isinstance(exc, FerryError) else f"{type(exc).__name__}: {exc}"
            why = redact(why)[:1024]
            if row.attempts >= s.max_attempts:
                log.warning("unit %d: failed after %d attempts: %s", row.id, row.attempts, why)
                await self._end(row, FAILED, {**ctx.progress.values(),
                                              "error": f"TRF.0001 System error after {row.attempts} attempts: {why}"})
            else:
                log.warning("unit %d: attempt %d failed, handed back: %s", row.id, row.attempts, why)
                # Tried again after a pause that grows with each attempt (plus the coordinator's resend interval).
                await self._hand_back(row, ctx, why, delay=min(2.0 ** row.attempts, 60.0))
            return
        if ctx.stop.is_set() and self.draining:
            await self._hand_back(row, ctx, None)  # the handler stopped early on the drain
            return
        await self._end(row, DONE, ctx.progress.values())

    async def _end(self, row: UnitRow, state: str, values: dict[str, Any]) -> None:
        try:
            ok = await asyncio.to_thread(self.units.finish, row.id, self.owner, state, values)
        except Exception as exc:
            log.warning("unit %d: its end was not written (%s); it runs again when its lease runs out", row.id,
                        redact(str(exc))[:300])
            return
        if ok:
            self.units_done += 1
            log.info("unit %d: %s", row.id, state)

    async def _hand_back(self, row: UnitRow, ctx: UnitContext, error: str | None, delay: float = 0.0) -> None:
        values = ctx.progress.values()
        if error is not None:
            values["error"] = error
        try:
            await asyncio.to_thread(self.units.hand_back, row.id, self.owner, values, delay)
            log.info("unit %d: handed back at %r", row.id, ctx.progress.watermark)
        except Exception as exc:
            log.warning("unit %d: not handed back (%s); it is sent again when its lease runs out", row.id,
                        redact(str(exc))[:300])

    # -- the process ---------------------------------------------------------------------------------------------

    def send_units(self, unit_ids: list[int]) -> None:
        """Send messages for units a handler made (in a thread): they are not left for the coordinator's resend."""
        actor = self._actor
        if actor is None:
            return
        for unit_id in unit_ids:
            actor.send(int(unit_id))
        self.units.mark_sent(unit_ids)

    def request_drain(self) -> None:
        """From a signal handler: stop taking units and drain (see the module docstring)."""
        self._drain_requested.set()

    def serve(self) -> None:
        """Run until a drain is requested and done."""
        self.start()
        broker, spec = make_broker(self.broker_url)
        self._actor = unit_actor(broker, spec, self.on_message)
        # A thread that finished its unit polls for the next message within 0.1 s (Dramatiq backs off to this).
        worker = dramatiq.Worker(broker, worker_threads=self.settings.threads, worker_timeout=100)
        # One message waiting per thread at most: a unit is long, and a message parked here is one another,
        # idle worker could have run.
        worker.queue_prefetch = self.settings.threads
        self._dramatiq = worker
        worker.start()
        log.info("worker %s: taking units from %s (%d at once)", self.owner, redact(self.broker_url),
                 self.settings.threads)
        self._drain_requested.wait()
        self._drain(worker)
        broker.close()

    def _drain(self, worker: dramatiq.Worker) -> None:
        s = self.settings
        log.info("worker %s: draining (%d units running; %g s to finish)", self.owner, len(self._contexts),
                 s.drain_timeout)
        self.draining = True
        self.drain_deadline = time.monotonic() + s.drain_timeout
        with contextlib.suppress(Exception):
            self.workers.beat(self.owner, len(self._contexts), self.units_done, "draining")
        # The worker threads finish their units (or hand them back at the deadline); the messages this process
        # holds but has not started go back to the queue.
        worker.stop(timeout=int((s.drain_timeout + s.heartbeat + 30) * 1000))
        self.stop(10)
        with contextlib.suppress(Exception):
            self.workers.stopped(self.owner)
        log.info("worker %s: stopped", self.owner)


def run_worker(engine: Engine, box: SecretBox, broker_url: str, scratch: Path,
               settings: WorkerSettings | None = None) -> int:
    """`ferry worker`: serve until SIGTERM/SIGINT, then drain."""
    for name in HANDLER_MODULES:
        importlib.import_module(name)  # each registers its kinds' handlers in runner.units.HANDLERS
    worker = UnitWorker(engine, box, broker_url, scratch, settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.request_drain())
    # The background services (the sync event loop) run beside the units, and stop once they are drained.
    worker_services.start_all()
    try:
        worker.serve()
    finally:
        worker_services.stop_all()
    engine.dispose()
    return 0
