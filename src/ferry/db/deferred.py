"""A job repository opened in a background thread, so a CLI run starts moving data while it opens."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferry.db.job_repo import JobRepo


class DeferredRepo:
    """Stands in for a JobRepo while one is opened (import, connect, schema) in a thread of its own.

    Every method call waits until the repository is open, then runs on it. The engine calls the repository
    from worker threads (`asyncio.to_thread`), so that wait never blocks the event loop; the caller must
    not call from the loop itself before the repository is open. An error opening it is raised by every
    call.
    """

    def __init__(self, url: str) -> None:
        self._repo: Future[JobRepo] = Future()
        threading.Thread(target=self._open, args=(url,), name="ferry-db-open", daemon=True).start()

    def _open(self, url: str) -> None:
        try:
            from ferry.db.jobdb import open_job_repo

            self._repo.set_result(open_job_repo(url))
        except BaseException as exc:  # handed to every caller
            self._repo.set_exception(exc)

    def when_open(self, fn: Callable[[], None]) -> None:
        """Call `fn` (in whichever thread gets there) once the repository is open or has failed to open."""
        self._repo.add_done_callback(lambda _: fn())

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return getattr(self._repo.result(), name)(*args, **kwargs)

        return call
