"""Background services a `ferry worker` process runs beside its units: started with it, stopped as it drains.

A unit is sent to one worker; a service runs in every worker all the time. The sync event loop is one: sync
events are rows claimed under leases (`sync_events`), so each worker claims its share directly from
PostgreSQL, with no message per event. The worker calls `start_all()` once its handlers are registered and
`stop_all()` when it drains (after its units are finished or handed back).
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

log = logging.getLogger("ferry.worker")


class WorkerService(Protocol):
    """Something that runs in a thread of its own (a LoopThread, say) for as long as the worker does."""

    thread_name: str

    def start(self) -> object: ...

    def stop(self, timeout: float = 30.0) -> None: ...


_lock = threading.Lock()
_services: list[WorkerService] = []


def add(service: WorkerService) -> None:
    """Register a service for this process (before `start_all`)."""
    with _lock:
        _services.append(service)


def registered() -> list[WorkerService]:
    with _lock:
        return list(_services)


def start_all() -> None:
    """Start every registered service."""
    for service in registered():
        log.info("worker: starting %s", service.thread_name)
        service.start()


def stop_all(timeout: float = 30.0) -> None:
    """Stop every registered service, last started first; each finishes what it holds within `timeout`."""
    for service in reversed(registered()):
        try:
            service.stop(timeout)
        except Exception:
            log.exception("worker: stopping %s failed", service.thread_name)


def clear() -> None:
    """Forget every service (a process that builds its worker anew, a test)."""
    with _lock:
        _services.clear()
