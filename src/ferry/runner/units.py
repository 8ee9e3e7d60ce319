"""What a worker does with a claimed work unit: one handler per unit kind, all under the same context.

The generic part (claim by id, heartbeat the lease from inside the unit, finish or hand back) lives with the
worker; each kind of unit (a key range of a migration task, a group split, a sync reconciliation, ...) only
registers a handler here. A handler must be idempotent: a unit may run again after its worker died, so it
resumes after `unit.watermark` and skips what is already recorded as verified.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from ferry.db.unit_repo import UnitRow
from ferry.secrets import SecretBox


@dataclass
class UnitProgress:
    """What a running unit has done so far; the worker writes it with every heartbeat (`watermark` = the last
    key whose result is recorded)."""

    listed: int = 0
    listed_bytes: int = 0
    objects_done: int = 0
    bytes_done: int = 0
    watermark: str | None = None

    def values(self) -> dict[str, Any]:
        out: dict[str, Any] = {"listed": self.listed, "listed_bytes": self.listed_bytes,
                               "objects_done": self.objects_done, "bytes_done": self.bytes_done}
        if self.watermark is not None:
            out["watermark"] = self.watermark
        return out


@dataclass
class UnitContext:
    """Everything a handler may use: the shared database, the master key's box (task credentials are sealed
    in the database; a message never carries them), this worker's lease owner name, a scratch directory, the
    unit's progress (written at each heartbeat) and `stop`, set when the lease is lost or the worker drains."""

    engine: Engine
    box: SecretBox
    owner: str
    scratch: Path
    progress: UnitProgress = field(default_factory=UnitProgress)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    settings: Mapping[str, Any] = field(default_factory=dict)


class UnitFailed(Exception):
    """The unit cannot succeed (e.g. the task's keys are refused): it is finished as failed with this reason."""


class UnitCancelled(Exception):
    """The unit's owner no longer wants it (stopped, deleted): it is finished as cancelled, doing nothing."""


Handler = Callable[[UnitRow, UnitContext], Awaitable[None]]
HANDLERS: dict[str, Handler] = {}


def handles(kind: str) -> Callable[[Handler], Handler]:
    """Register the handler of a unit kind (at import of its module)."""
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        return fn
    return register
