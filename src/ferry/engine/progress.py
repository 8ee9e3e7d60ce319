"""Live counters of a running transfer, and their rendering as a terminal progress bar."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import ProgressColumn


# rich (~70 ms to import) is loaded by TerminalProgress only: `--no-progress`, `--json` and the service never
# draw a bar.
@dataclass(slots=True)
class Counters:
    """Updated by the pipeline; read by whoever reports progress (terminal bar, API, console)."""

    listed: int = 0
    listed_bytes: int = 0
    listing_done: bool = False
    success: int = 0
    skipped: int = 0
    failed: int = 0
    size_only: int = 0  # of `success`: verified by their size only (the source gave no checksum)
    # Bytes of copied objects, and of objects being copied as their bytes move (see ObjectProgress): what a
    # failed or restarted attempt had moved is taken back out, so once a run ends this is the bytes of the
    # objects it copied.
    bytes_copied: int = 0
    bytes_skipped: int = 0
    restoring: int = 0  # archived objects waiting for their restore (counted in `listed`, not yet finished)
    started: float = field(default_factory=time.monotonic)
    # Why the run is paused where it is (results cannot be recorded: a full disk, a database restarting), or
    # None while it moves.
    waiting_on: str | None = None

    @property
    def finished(self) -> int:
        return self.success + self.skipped + self.failed

    @property
    def speed(self) -> float:
        """Bytes per second copied so far."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return self.bytes_copied / elapsed


class ObjectProgress:
    """One object's bytes counted into `Counters.bytes_copied` while they move, taken back out if the attempt
    that moved them restarts or fails, and settled to the object's size once it is copied."""

    __slots__ = ("_counters", "_moved", "_open")

    def __init__(self, counters: Counters) -> None:
        self._counters = counters
        self._moved = 0
        self._open = True

    def add(self, n: int) -> None:
        if self._open:
            self._moved += n
            self._counters.bytes_copied += n

    def restart(self) -> None:
        """An attempt starts again from its first byte: what it had moved no longer counts."""
        self._counters.bytes_copied -= self._moved
        self._moved = 0

    def finish(self, size: int) -> None:
        """The object is copied: it counts as `size` bytes, whatever was reported on the way."""
        self._counters.bytes_copied += size - self._moved
        self._moved = 0
        self._open = False

    def close(self) -> None:
        """No more of this object counts (it failed, or the run stops); a late report is ignored."""
        self.restart()
        self._open = False


class TerminalProgress:
    """A rich progress bar (objects, bytes, speed, ETA) refreshed from Counters until stopped."""

    def __init__(self, counters: Counters, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            DownloadColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.counters = counters
        self.console = Console(file=stream)
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            _bar_column(),
            TaskProgressColumn(),
            TextColumn("{task.fields[objects]}"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._task = self.bar.add_task("listing", total=None, objects="")
        self._runner: asyncio.Task[None] | None = None

    def _refresh(self) -> None:
        c = self.counters
        done_bytes = c.bytes_copied + c.bytes_skipped
        total = c.listed_bytes if c.listing_done else None
        objects = f"{c.finished:,}/{c.listed:,}{'' if c.listing_done else '+'} objects"
        notes = [f"{n:,} {what}" for n, what in ((c.failed, "failed"), (c.restoring, "waiting for a restore")) if n]
        if notes:
            objects += f" ({', '.join(notes)})"
        self.bar.update(
            self._task, completed=done_bytes, total=total, objects=objects,
            description="copying" if c.listing_done else "listing+copying",
        )

    async def _loop(self) -> None:
        while True:
            self._refresh()
            await asyncio.sleep(0.2)

    def start(self) -> None:
        self.bar.start()
        self._runner = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._refresh()
        self.bar.stop()


def _bar_column() -> ProgressColumn:
    from rich.progress import BarColumn, Task
    from rich.progress_bar import ProgressBar

    class KnownTotalBar(BarColumn):
        """rich draws a bar whose total is unknown as a pulse, which on a terminal without colours (and in a
        captured log) is a full bar: while the listing goes on it is drawn empty instead."""

        def render(self, task: Task) -> ProgressBar:
            bar = super().render(task)
            if task.total is None:
                bar.total, bar.completed, bar.pulse = 1, 0, False
            return bar

    return KnownTotalBar()
