"""Live counters of a running transfer, and their rendering as a terminal progress bar."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import IO


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
    bytes_copied: int = 0
    bytes_skipped: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> int:
        return self.success + self.skipped + self.failed

    @property
    def speed(self) -> float:
        """Bytes per second copied so far."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return self.bytes_copied / elapsed


class TerminalProgress:
    """A rich progress bar (objects, bytes, speed, ETA) refreshed from Counters until stopped."""

    def __init__(self, counters: Counters, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
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
            BarColumn(),
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
        if c.failed:
            objects += f" ({c.failed:,} failed)"
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
