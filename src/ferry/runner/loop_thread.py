"""The base of the in-process runners: an asyncio event loop in a daemon thread of its own, woken from any thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Self

log = logging.getLogger("ferry.runner")


class LoopThread(ABC):
    """Runs `run()` on an event loop in a daemon thread of its own, so its work never stalls the API's loop.

    `start()`, `notify()` and `stop()` may be called from any thread, in any order, any number of times: stop
    before start and notify after stop do nothing. `stop()` asks the loop to end (`_request_stop`: cancel `run()`
    unless a subclass drains more gently) and waits for the thread up to `timeout`. A subclass's `run()` may also
    be awaited on a loop of the caller's (the tests drive runners so); it then makes its own wake event.
    """

    thread_name = "ferry-loop"

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._ready = threading.Event()
        self._active: dict[Hashable, asyncio.Task[None]] = {}

    @abstractmethod
    async def run(self) -> None:
        """The runner's main loop, until cancelled."""

    # -- control, from any thread ------------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is None:
            self._ready.clear()
            self._thread = threading.Thread(target=self._thread_main, name=self.thread_name, daemon=True)
            self._thread.start()
            self._ready.wait(10)
        return self

    def notify(self) -> None:
        """Wake the loop (new work may be waiting)."""
        wake = self._wake
        if wake is not None:
            self._call_soon(wake.set)

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the loop to end and wait (up to `timeout`) for its thread."""
        self._call_soon(self._request_stop)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _call_soon(self, callback: Callable[[], object]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing left to tell
                loop.call_soon_threadsafe(callback)

    # -- in the loop -------------------------------------------------------------------------------------

    def _request_stop(self) -> None:
        if self._main is not None:
            self._main.cancel()

    def _wake_event(self) -> asyncio.Event:
        """The loop's wake event (made here when `run()` is awaited without the thread)."""
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._run_main())
        except BaseException:
            log.exception("%s stopped with an error", self.thread_name)
        finally:
            self._ready.set()

    async def _run_main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._main = asyncio.current_task()
        self._ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self.run()

    # -- claimed work, for runners that run several units at once ----------------------------------------

    def _spawn(self, key: Hashable, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run `work` as the unit `key`; when it ends its slot is free and the loop is woken to fill it."""
        task = asyncio.create_task(work, name=name)
        self._active[key] = task

        def done(_task: asyncio.Task[None]) -> None:
            self._active.pop(key, None)
            if self._wake is not None:
                self._wake.set()

        task.add_done_callback(done)

    async def _cancel_active(self) -> None:
        """Cancel every unit still running and wait until each has released what it held."""
        tasks = list(self._active.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
