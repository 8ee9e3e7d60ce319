"""The coordinator of distributed mode: claims migration tasks as the embedded runner does, and has workers run them.

`DistributedRunner` is the LocalRunner (claiming by priority under a lease, progress written to the task row
every second, pause and stop, retries, settling: object lists, failed-object list, SMN notice), except for how
a claimed task's objects are moved: instead of a Transfer in this process, the task's selection becomes work
units (runner.task_units: a `range` unit per prefix, `keys` units of at most `unit_keys` single keys) under a new
run number, their ids go to the broker, and the run waits until no unit of it is open. Counters shown meanwhile
come from the shared database: the job's results (JobRepo.tally) and the range units' listing progress. A stop
or pause cancels the units (workers stop at their next heartbeat); the next start carries the unfinished ones
over from their watermarks, so nothing is listed or copied again. A URL-list task's list file is read here, as
a list task's is, and its `(key, URL)` pairs go out in keys units of at most `unit_keys` (spec `urls`): the
worker fetches them through the same UrlSource, under the allow-list stored with the task.

Beside the tasks it resends, every `tick`, what needs a message (UnitRepo.due_again): units whose worker died
(their lease ran out: picked up within lease TTL + tick), and queued units whose message may be lost (a broker
restarted empty) once no worker holds any unit for `resend_after` seconds, or after `queued_horizon` anyway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from ferry.aio import wait_event
from ferry.db.unit_repo import CANCELLED, DONE, FAILED, UnitDraft, UnitRepo
from ferry.engine.progress import Counters
from ferry.errors import UsageError
from ferry.runner.broker import Sender, redact
from ferry.runner.migration import LocalRunner, RunnerSettings, RunResult, TaskFailure
from ferry.runner.notices import EndNotifier
from ferry.runner.task_units import KEYS, RANGE, UNIT_KEYS
from ferry.storage.base import Backend
from ferry.storage.selection import SelectedBackend
from ferry.storage.url_source import UrlSource
from ferry.storage.wrappers import unwrap

if TYPE_CHECKING:
    from ferry.db.task_repo import TaskRow
    from ferry.secrets import SecretBox

log = logging.getLogger("ferry.runner")
_CODE = re.compile(r"^([A-Z]+\.\d{4}) (.*)$", re.DOTALL)


@dataclass(frozen=True)
class DispatchSettings:
    """How the coordinator talks to the workers."""

    tick: float = 1.0  # seconds between looks at the units (progress, due messages)
    resend_after: float = 10.0  # a queued unit's message is sent again when no worker has held a unit this long
    queued_horizon: float = 600.0  # ... and after this long in any case
    unit_keys: int = UNIT_KEYS  # single keys per coordinator-made keys unit

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DispatchSettings:
        """FERRY_DISPATCH_TICK and FERRY_RESEND_SECONDS (seconds), else the defaults."""
        env = os.environ if environ is None else environ
        out = cls()
        for name, attr in (("FERRY_DISPATCH_TICK", "tick"), ("FERRY_RESEND_SECONDS", "resend_after")):
            raw = env.get(name, "").strip()
            if raw:
                try:
                    value = float(raw)
                except ValueError:
                    raise UsageError(f"{name} must be a number of seconds") from None
                if not 0 < value <= 3600:
                    raise UsageError(f"{name} must be between 0 and 3600 seconds")
                out = dataclasses.replace(out, **{attr: value})  # type: ignore[arg-type]
        return out


def _pending(draft: UnitDraft) -> int:
    """How many objects a keys unit still has to do (those after where it got to)."""
    after = draft.start_after
    keys = ([str(k) for k in draft.spec.get("keys", ())] + [e["o"]["key"] for e in draft.spec.get("objects", ())]
            + [str(k) for k, _ in draft.spec.get("urls", ())])
    return sum(1 for k in keys if after is None or k > after)


class DistributedRunner(LocalRunner):
    """Runs migration tasks on workers (see the module docstring)."""

    thread_name = "ferry-coordinator"

    def __init__(self, engine: Engine, box: SecretBox, data_dir: Path, settings: RunnerSettings | None = None, *,
                 publish_end: EndNotifier, broker_url: str, dispatch: DispatchSettings | None = None) -> None:
        super().__init__(engine, box, data_dir, settings, publish_end=publish_end)
        self.broker_url = broker_url
        self.dispatch = dispatch or DispatchSettings()
        self.units = UnitRepo(engine)
        self._sender: Sender | None = None
        self._idle_since: float | None = None
        self._send_failed: str | None = None
        self._resend_wake: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"DistributedRunner(owner={self.owner!r}, broker={redact(self.broker_url)!r})"

    # -- sending --------------------------------------------------------------------------------------------------

    def send(self, unit_ids: list[int]) -> None:
        """Send messages for these units (from any thread) and note them as sent."""
        if not unit_ids:
            return
        if self._sender is None:
            self._sender = Sender(self.broker_url)
        self._sender.send(unit_ids)
        self.units.mark_sent(unit_ids)

    def wake_units(self) -> None:
        """Look for units to send now (another runner added some)."""
        wake = self._resend_wake
        if wake is not None:
            self._call_soon(wake.set)

    async def run(self) -> None:
        self._resend_wake = asyncio.Event()
        resend = asyncio.create_task(self._resend_loop(self._resend_wake), name="ferry-resend")
        try:
            await super().run()
        finally:
            resend.cancel()
            await asyncio.gather(resend, return_exceptions=True)
            if self._sender is not None:
                self._sender.close()

    async def _resend_loop(self, wake: asyncio.Event) -> None:
        d = self.dispatch
        while True:
            try:
                await asyncio.to_thread(self._resend_due)
            except Exception as exc:
                said = f"{type(exc).__name__}: {redact(str(exc))[:200]}"
                if said != self._send_failed:  # said once, not every tick
                    log.warning("units not sent (they wait in the database): %s", said)
                self._send_failed = said
            else:
                if self._send_failed is not None:
                    log.warning("units are sent again")
                self._send_failed = None
            await wait_event(wake, d.tick)
            wake.clear()

    def _resend_due(self) -> None:
        d = self.dispatch
        now = time.monotonic()
        if self.units.any_held():
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now
        idle = self._idle_since is not None and now - self._idle_since >= d.resend_after
        # While some worker holds a unit, queued units are waiting their turn in the broker: sending them again
        # would only pile up duplicates. With every worker idle and units queued, their messages are lost.
        queued_after = d.resend_after if idle else d.queued_horizon
        ids = self.units.due_again(d.resend_after, queued_after=queued_after)
        if ids:
            self.send(ids)
            log.info("sent %d units again", len(ids))

    # -- one task's run on the workers ---------------------------------------------------------------------------

    async def _transfer(self, row: TaskRow, source: Backend, target: Backend, counters: Counters) -> RunResult:
        if not isinstance(source, SelectedBackend):
            return await super()._transfer(row, source, target, counters)
        urls = unwrap(source)
        jobs, tasks = self.jobs, self.tasks
        job_id = await self._job_id(row)
        mode = row.run_mode
        if mode == "full":
            await asyncio.to_thread(tasks.heartbeat, row.id, self.owner, self.settings.lease_ttl,
                                    {"run_mode": "resume"})
        prior = await asyncio.to_thread(jobs.tally, job_id)
        if mode != "resume":
            prior = dataclasses.replace(prior, failed=0, failed_bytes=0)
        await asyncio.to_thread(jobs.set_status, job_id, "running")
        owner = str(row.id)
        last = await asyncio.to_thread(self.units.last_run, "task", owner)
        run = (last or 0) + 1
        carried = await asyncio.to_thread(self._carried, owner, last) if mode == "resume" and last else None
        if carried is not None:
            drafts = carried
        elif isinstance(urls, UrlSource):
            # In a thread: cutting a list file of up to 100 MB must not stall the progress of every task here.
            drafts = await asyncio.to_thread(lambda: self._url_units(urls.entries()))
        else:
            drafts = self._initial(source.items)
        direct = sum(_pending(d) for d in drafts if d.kind == KEYS)
        await asyncio.to_thread(self.units.cancel, "task", owner, run)
        ids = await asyncio.to_thread(self.units.add, "task", owner, run, drafts)
        log.info("task %d: run %d on workers: %d units (%s)", row.id, run, len(ids),
                 "carried over" if carried is not None else "new")
        try:
            try:
                await asyncio.to_thread(self.send, ids)
            except Exception as exc:  # the resend loop sends them once the broker is back
                log.warning("task %d: units not sent yet: %s", row.id, type(exc).__name__)
            await self._wait(row, owner, run, job_id, prior, direct, counters)
        except BaseException:
            # Stopped, paused, failed or shutting down: the workers stop at their next heartbeat, and the next
            # start carries the unfinished units over from their watermarks.
            await asyncio.shield(asyncio.to_thread(self.units.cancel, "task", owner))
            raise
        tally = await asyncio.to_thread(jobs.tally, job_id)
        return RunResult(tally, (tally.success + tally.skipped + tally.failed) > 0)

    def _initial(self, items: list[tuple[str, bool]]) -> list[UnitDraft]:
        """A range unit per chosen prefix, and keys units of at most `unit_keys` single keys."""
        drafts = [UnitDraft(RANGE, spec={"items": [[text, True]]}) for text, is_prefix in items if is_prefix]
        keys = [text for text, is_prefix in items if not is_prefix]
        n = self.dispatch.unit_keys
        drafts.extend(UnitDraft(KEYS, spec={"keys": keys[i:i + n]}) for i in range(0, len(keys), n))
        return drafts

    def _url_units(self, entries: list[tuple[str, str]]) -> list[UnitDraft]:
        """Keys units of at most `unit_keys` `(key, URL)` pairs of a URL list (sorted by key)."""
        n = self.dispatch.unit_keys
        return [UnitDraft(KEYS, spec={"urls": [list(e) for e in entries[i:i + n]]}) for i in range(0, len(entries), n)]

    def _carried(self, owner: str, last: int) -> list[UnitDraft]:
        """The unfinished units of the last run, each from where it got to."""
        drafts: list[UnitDraft] = []
        while True:
            rows = self.units.of_owner("task", owner, last, ("queued", "running", CANCELLED, FAILED), limit=100_000)
            for u in rows:
                drafts.append(UnitDraft(u.kind, u.watermark or u.start_after, u.end_key, u.spec))
            if len(rows) < 100_000:
                return drafts

    async def _wait(self, row: TaskRow, owner: str, run: int, job_id: str, prior: Any, direct: int,
                    counters: Counters) -> None:
        tally_every, next_tally = self.dispatch.tick, 0.0
        while True:
            summary = await asyncio.to_thread(self.units.summary, "task", owner, run)
            ranges = await asyncio.to_thread(self.units.summary, "task", owner, run, RANGE)
            if time.monotonic() >= next_tally or summary.open == 0:
                # The job's tally is one GROUP BY over its results: on a huge job it is taken less often.
                started = time.monotonic()
                t = await asyncio.to_thread(self.jobs.tally, job_id)
                spent = time.monotonic() - started
                next_tally = time.monotonic() + max(tally_every, 20 * spent)
                counters.success, counters.skipped, counters.failed = t.success, t.skipped, t.failed
                counters.size_only, counters.restoring = t.size_only, t.restoring
                counters.bytes_copied, counters.bytes_skipped = t.success_bytes, t.skipped_bytes
            base = prior.success + prior.skipped + prior.failed
            base_bytes = prior.success_bytes + prior.skipped_bytes + prior.failed_bytes
            counters.listed = max(base + ranges.listed + direct, counters.finished)
            counters.listed_bytes = max(base_bytes + ranges.listed_bytes,
                                        counters.bytes_copied + counters.bytes_skipped)
            counters.listing_done = ranges.open == 0
            if summary.by_state.get(FAILED):
                raise await asyncio.to_thread(self._failure, owner, run)
            if summary.open == 0:
                log.info("task %d: run %d: all %d units done", row.id, run, summary.by_state.get(DONE, 0))
                return
            await asyncio.sleep(self.dispatch.tick)

    def _failure(self, owner: str, run: int) -> TaskFailure:
        failed = self.units.of_owner("task", owner, run, (FAILED,), limit=1)
        error = (failed[0].error if failed else None) or "TRF.0001 a work unit failed"
        found = _CODE.match(error)
        return TaskFailure(found.group(1), found.group(2)) if found else TaskFailure("TRF.0001", error)
