"""The group runner: splits task groups into list tasks under a lease and rolls their outcome up.

One thread with its own event loop, like the task runner. Every `poll_interval` (or when woken) it claims
groups waiting to be split (status 0/1, lease free or its owner dead) and splits them, and it settles groups
whose tasks decide their status: 2 -> 5/6 (a completed group's list files are removed), 7 -> 3 once every task
paused, 8 -> 9 once the list files of a deleted group are gone. A paused or failed group keeps only its sealed
destination keys (for that clean-up); the source keys are dropped.

Splitting (see `ferry.service.groups` for the why): the source listing is streamed prefix by prefix; a chunk
is closed at `SplitSettings` objects or bytes, written as `oms/taskgroup/<group>/part_NNNNNN.txt` into the
destination bucket, and a `list` task is created over it (skipped when a task of that name exists, so a split
redone after a crash creates no twin). The checkpoint written with each chunk is the prefix index and the
position in its listing: the last key for stores that list in byte order, else the number of keys already
taken (such stores list in a stable order, e.g. SeaweedFS's directory order). A LIST group is split the same
way over the lines of its list file (URL_LIST groups too, into url_list tasks), with the byte offset after the
last line taken as the checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from ferry import oms as s
from ferry.aio import wait_event
from ferry.db.group_repo import (
    G_COMPLETED,
    G_CREATE_FAILED,
    G_DELETED,
    G_DELETING,
    G_EXECUTING,
    G_MIGRATE_FAILED,
    G_MONITORING,
    G_PAUSED,
    G_PAUSING,
    G_WAITING,
    GroupRepo,
    GroupRow,
    effective_status,
)
from ferry.db.task_repo import owner_id
from ferry.db.unit_repo import UnitDraft, UnitRepo, UnitRow
from ferry.errors import FatalError, FerryError, LocalStateError, NotFoundError, UsageError
from ferry.objects import ObjectMeta
from ferry.runner.loop_thread import LoopThread
from ferry.runner.migration import TaskFailure, failure_for, open_store
from ferry.runner.notices import EndNotifier, RunEnd
from ferry.runner.units import Handler, UnitContext
from ferry.storage.base import Backend, ListOrder, listing, ranged_lines
from ferry.storage.profiles import get_profile
from ferry.storage.selection import normalise
from ferry.storage.stores import StoreKeys
from ferry.storage.wrappers import RetryingBackend

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ferry.secrets import SecretBox

log = logging.getLogger("ferry.runner.groups")

LIST_DIR: Final = "oms/taskgroup"
_MiB: Final = 1024 * 1024
# The group task types (as stored) whose split reads a list file rather than the source listing.
_LIST_FILE_TYPES: Final = frozenset({s.GroupTaskType.LIST.value, s.GroupTaskType.URL_LIST.value})


def list_file_key(group_id: str, chunk: int) -> str:
    """Where chunk `chunk` of a group's split lives in the destination bucket."""
    return f"{LIST_DIR}/{group_id}/part_{chunk:06d}.txt"


def task_name(group_id: str, chunk: int) -> str:
    """The name of the task of chunk `chunk`; fixed width, so a re-run split recognises tasks it created."""
    return f"group_{group_id[:8]}_part_{chunk:06d}"


@dataclass(frozen=True)
class SplitSettings:
    """How the source is cut into tasks: a task is closed at `objects_per_task` objects or `bytes_per_task`
    bytes, whichever comes first (and before its list file outgrows `list_file_bytes`, well under the 100 MB
    list-file limit). 100,000 objects keep a task's own bookkeeping small and its list file near 10 MB; 500 GiB
    keeps one task of huge objects to a few hours at OMS's bandwidth cap."""

    objects_per_task: int = 100_000
    bytes_per_task: int = 500 * 1024**3
    list_file_bytes: int = 32 * _MiB

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SplitSettings:
        """The defaults, or the operator's FERRY_GROUP_TASK_OBJECTS / FERRY_GROUP_TASK_BYTES (positive ints)."""
        env = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for name, attr in (("FERRY_GROUP_TASK_OBJECTS", "objects_per_task"), ("FERRY_GROUP_TASK_BYTES",
                                                                               "bytes_per_task")):
            raw = env.get(name, "").strip()
            if not raw:
                continue
            if not raw.isdigit() or int(raw) < 1:
                raise UsageError(f"{name} must be a positive whole number")
            values[attr] = int(raw)
        return cls(**values)


class TaskQuotaFull(Exception):
    """The project's task quota is full: the split keeps its checkpoint and creates the chunk's task later."""


@dataclass(frozen=True)
class GroupPorts:
    """What the group runner needs from the layers above it, as values and callables wired in one place
    (`ferry.service.groups.runner_ports`): the runner imports no service and no API model."""

    engine: Engine
    box: SecretBox  # opens and seals the keys a group stores
    split: SplitSettings
    # (cloud type, region) of a source -> its endpoint spec as tasks store it ({"endpoint", "profile",
    # "from_override"}); FerryError when there is none.
    source_endpoint: Callable[[str, str], dict[str, Any]]
    destination_endpoint: Callable[[str], dict[str, Any]]  # the same for a destination region (OMS writes to OBS)
    # (group, its keys, chunk, task name): create the list task of a chunk; TaskQuotaFull, or a FerryError why not.
    create_task: Callable[[GroupRow, dict[str, str], int, str], None]
    stop_tasks: Callable[[str, str], None]  # (project id, group id): ask every unfinished task to pause
    wake_tasks: Callable[[], None]  # the task runner's doorbell
    publish_end: EndNotifier


@dataclass(frozen=True)
class GroupRunnerSettings:
    """How many groups split at once and how often the runner talks to the database."""

    max_splits: int = 2
    poll_interval: float = 2.0
    heartbeat_interval: float = 5.0
    lease_ttl: float = 30.0
    quota_backoff: float = 60.0  # the task quota is full: try the next chunk again after this
    retry_delay: float = 10.0  # an unexpected failure: split again after this (doubling), then fail
    retry_attempts: int = 3


class SplitFailure(TaskFailure):
    """The split cannot go on: a TRF code and a message for the group's `error_reason` (never a secret)."""


class _Stop(Exception):
    """The group left status 1 (paused or deleted) or the lease was lost: stop splitting, keep the checkpoint."""


@dataclass
class _Chunk:
    """The chunk being filled: list-file lines and what they add up to."""

    lines: list[str]
    objects: int = 0
    size: int = 0
    text_bytes: int = 0


def _no_wake() -> None:
    return None


# Groups handed to workers per poll in distributed mode: making a unit is one insert, not a split.
_DISPATCH_BATCH: Final = 50
SPLIT_KIND: Final = "group_split"


class GroupRunner(LoopThread):
    """Runs task-group splits and settles group statuses in this process (see the module docstring).

    In distributed mode (`units` given) the splits run on workers instead: a group due for its split gets a
    `group_split` work unit (one open at a time), which a worker runs with `split_unit`; settling statuses,
    removing list files and SMN notices stay here."""

    thread_name = "ferry-groups"

    def __init__(self, ports: GroupPorts, settings: GroupRunnerSettings | None = None, *,
                 units: UnitRepo | None = None, wake_units: Callable[[], None] = _no_wake) -> None:
        super().__init__()
        self.ports = ports
        self.settings = settings or GroupRunnerSettings()
        self.repo = GroupRepo(ports.engine)
        self.owner = owner_id()
        self.units = units
        self.wake_units = wake_units
        # Called after every chunk a split writes, with the group's objects, bytes and tasks so far.
        self.on_progress: Callable[[int, int, int], None] | None = None

    def __repr__(self) -> str:
        return f"GroupRunner(owner={self.owner!r})"

    # start(), notify() (a group was created, started, stopped, retried or deleted) and stop() come from
    # LoopThread; stopping cancels every split, and each keeps its checkpoint for the next runner.

    async def run(self) -> None:
        """Claim splits and settle groups until cancelled; on cancellation every split is released."""
        wake = self._wake_event()
        try:
            while True:
                wake.clear()
                free = self.settings.max_splits - len(self._active) if self.units is None else _DISPATCH_BATCH
                if free > 0:
                    try:
                        claimed = await asyncio.to_thread(
                            self.repo.claim, self.owner, self.settings.lease_ttl, (G_WAITING, G_EXECUTING), free)
                    except LocalStateError as exc:
                        log.warning("claiming task groups waits: %s", exc.message)
                        claimed = []
                    except Exception:
                        log.exception("claiming task groups failed")
                        claimed = []
                    for row in claimed:
                        if self.units is not None:
                            await asyncio.to_thread(self._dispatch, row, self.units)
                        else:
                            self._spawn(row.id, self._split_guarded(row), f"group-{row.id}")
                try:
                    await self.settle()
                except LocalStateError as exc:
                    log.warning("settling task groups waits: %s", exc.message)
                except Exception:
                    log.exception("settling task groups failed")
                await wait_event(wake, self.settings.poll_interval)
        finally:
            await self._cancel_active()

    # -- distributed mode ----------------------------------------------------------------------------------

    def _dispatch(self, row: GroupRow, units: UnitRepo) -> None:
        """Give a group due for its split to the workers: a `group_split` unit unless one is open already (the
        unit's message carries its id only; the worker reads the group, and its keys, from the database)."""
        try:
            if units.open_count("group", row.id, SPLIT_KIND) == 0:
                run = (units.last_run("group", row.id) or 0) + 1
                units.add("group", row.id, run, [UnitDraft(SPLIT_KIND)])
                log.info("task group %s: split handed to the workers (run %d)", row.id, run)
                self.wake_units()
        finally:
            self.repo.release(row.id, self.owner, {})

    async def split_unit(self, group_id: str, stop: asyncio.Event) -> None:
        """Run one `group_split` unit on a worker: take the group's lease (a dead holder's runs out first) and
        split from the group's checkpoint, as in-process. `stop` (the unit's lease lost, the worker draining)
        ends the split; the checkpoint is kept and the next run of the unit goes on from it."""
        statuses = (G_WAITING, G_EXECUTING)
        while True:
            row = await asyncio.to_thread(self.repo.take, group_id, self.owner, self.settings.lease_ttl, statuses)
            if row is not None:
                break
            current = await asyncio.to_thread(self.repo.get, group_id)
            if current is None or current.deleted_at is not None or current.status not in statuses:
                return  # split, stopped or deleted meanwhile: nothing left for this unit
            if await wait_event(stop, self.settings.poll_interval):
                return
        split = asyncio.create_task(self._split_guarded(row), name=f"group-{group_id}")
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({split, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not split.done():
                split.cancel()  # releases the lease, keeps the checkpoint
            await asyncio.gather(split, return_exceptions=True)

    # -- settling statuses ---------------------------------------------------------------------------------

    async def settle(self) -> None:
        """Persist what the roll-up of each watched group says (see the module docstring)."""
        rows = await asyncio.to_thread(self.repo.in_status, (G_MONITORING, G_MIGRATE_FAILED, G_PAUSING, G_DELETING))
        if not rows:
            return
        stats = await asyncio.to_thread(self._stats, rows)
        for row in rows:
            derived = effective_status(row, stats[row.id])
            if row.status == G_DELETING:
                await self._remove_list_files(row)
                await asyncio.to_thread(self.repo.transition, row.id, (G_DELETING,), {
                    "status": G_DELETED, "deleted_at": time.time(), "secrets": None})
            elif row.status == G_PAUSING:
                if row.lease_owner is None:
                    # Tasks created by a split that was still running when the stop came are paused now.
                    await asyncio.to_thread(self.ports.stop_tasks, row.project_id, row.id)
                if derived == G_PAUSED:
                    await asyncio.to_thread(self.repo.transition, row.id, (G_PAUSING,), {
                        "status": G_PAUSED, "secrets": self._cleanup_keys(row)})
            elif derived == G_COMPLETED:
                await self._remove_list_files(row)
                await asyncio.to_thread(self.repo.transition, row.id, (row.status,), {
                    "status": G_COMPLETED, "finished_at": time.time(), "secrets": None})
                log.info("task group %s: completed", row.id)
                await asyncio.to_thread(self._notify, row.id, stats[row.id].complete_size)
            elif derived != row.status:
                values: dict[str, Any] = {"status": derived}
                if derived == G_MIGRATE_FAILED:
                    # The list files stay for a retry, which brings the keys again.
                    values.update(finished_at=time.time(), secrets=self._cleanup_keys(row))
                    log.info("task group %s: migration failed", row.id)
                else:
                    values["finished_at"] = None
                await asyncio.to_thread(self.repo.transition, row.id, (row.status,), values)
                if derived == G_MIGRATE_FAILED:
                    await asyncio.to_thread(self._notify, row.id, stats[row.id].complete_size)

    def _notify(self, group_id: str, complete_size: int = 0) -> None:
        """Publish the group-end SMN message once per finish, if the group asked for one."""
        row = self.repo.get(group_id)
        config = row.options.get("smn_config") if row is not None else None
        finished = (G_COMPLETED, G_MIGRATE_FAILED, G_CREATE_FAILED)
        if row is None or not config or row.status not in finished or row.smn_result is not None:
            return
        end = row.finished_at or time.time()
        outcome = self.ports.publish_end(RunEnd(
            project_id=row.project_id, config=config, succeeded=row.status == G_COMPLETED, name=row.id,
            started_at=row.started_at, seconds=end - row.started_at if row.started_at else 0.0,
            bytes_done=complete_size, src_bucket=row.src_spec.get("bucket"), dst_bucket=row.dst_spec["bucket"],
            list_file=row.src_spec.get("list_file")))
        self.repo.transition(group_id, (row.status,), {"smn_result": outcome})

    def _stats(self, rows: list[GroupRow]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        by_project: dict[str, list[str]] = {}
        for row in rows:
            by_project.setdefault(row.project_id, []).append(row.id)
        for project_id, ids in by_project.items():
            out.update(self.repo.task_stats(project_id, ids))
        return out

    async def _remove_list_files(self, row: GroupRow) -> None:
        """Delete the group's list files from the destination bucket; without keys (a group paused, or failed,
        before it was deleted) they stay, and the log says where."""
        keys = self._keys(row)
        if keys is None:
            log.info("task group %s: no keys to remove %s/%s/ from the destination bucket", row.id, LIST_DIR, row.id)
            return
        store = self._dst_store(row, keys)
        try:
            iterator = store.list(f"{LIST_DIR}/{row.id}/")
            names = [info.key async for info in iterator]
            for name in names:
                await store.delete(name)
        except FerryError as exc:
            log.warning("task group %s: list files not removed (%s)", row.id, type(exc).__name__)
        finally:
            await store.close()

    # -- the split ---------------------------------------------------------------------------------------

    def _cleanup_keys(self, row: GroupRow) -> str | None:
        """The sealed destination keys alone, kept while the group's list files exist so that deleting the
        group can remove them; the source keys are dropped as soon as nothing needs them."""
        keys = self._keys(row)
        if keys is None or not keys.get("dst_ak") or not keys.get("dst_sk"):
            return None
        return self.ports.box.seal({"dst_ak": keys["dst_ak"], "dst_sk": keys["dst_sk"]})

    def _keys(self, row: GroupRow) -> dict[str, str] | None:
        if not row.secrets:
            return None
        try:
            return self.ports.box.unseal(row.secrets)
        except FerryError:
            return None

    def _endpoint_spec(self, cloud: str | None, region: str) -> dict[str, Any]:
        """The endpoint of a source's `cloud` (None: of the destination) in `region`, as tasks store it."""
        try:
            if cloud is None:
                return self.ports.destination_endpoint(region)
            return self.ports.source_endpoint(cloud, region)
        except FerryError as exc:
            where = f"{cloud}/{region}" if cloud is not None else f"the destination region {region}"
            raise SplitFailure("TRF.0001", f"the endpoint of {where} is not available: {exc.message}") from None

    def _dst_store(self, row: GroupRow, keys: dict[str, str]) -> Backend:
        dst = row.dst_spec
        spec = self._endpoint_spec(None, dst["region"])
        return RetryingBackend(open_store(spec, dst["region"], dst["bucket"], "", StoreKeys.of(keys, "dst")))

    async def _split_guarded(self, row: GroupRow) -> None:
        try:
            await self._split(row)
        except asyncio.CancelledError:
            await asyncio.to_thread(self.repo.release, row.id, self.owner, {})
            raise
        except Exception:
            log.exception("task group %s: split crashed", row.id)
            await asyncio.to_thread(self._retry_later, row)

    def _retry_later(self, row: GroupRow) -> None:
        attempts = int(row.split_state.get("attempts", 0)) + 1
        fresh = self.repo.get(row.id) or row
        state = {**fresh.split_state, "attempts": attempts}
        if attempts >= self.settings.retry_attempts:
            self.repo.release(row.id, self.owner, {
                "status": G_CREATE_FAILED, "error_code": "TRF.0001", "error_msg": "System error. Retry the task group.",
                "finished_at": time.time(), "secrets": self._cleanup_keys(fresh), "split_state": state})
            self._notify(row.id)
        else:
            self.repo.release(row.id, self.owner, {
                "split_state": state, "retry_at": self.repo.db_time(self.settings.retry_delay * 2 ** (attempts - 1))})

    async def _split(self, row: GroupRow) -> None:
        now = time.time()
        started = await asyncio.to_thread(self.repo.transition, row.id, (G_WAITING, G_EXECUTING), {
            "status": G_EXECUTING, "started_at": row.started_at or now, "retry_at": None})
        if not started:
            await asyncio.to_thread(self.repo.release, row.id, self.owner, {})
            return
        keys = self._keys(row)
        if keys is None:
            await self._fail(row, SplitFailure("TRF.0001", "The task group has no keys; retry it with its keys."))
            return
        log.info("task group %s: splitting (chunk %d)", row.id, row.split_state.get("chunk", 0))
        dst = self._dst_store(row, keys)
        splitter = _Splitter(self, row, keys, dst)
        try:
            await splitter.run()
        except SplitFailure as exc:
            await self._fail(row, exc)
            return
        except _Stop:
            await asyncio.to_thread(self.repo.release, row.id, self.owner, {})
            log.info("task group %s: split stopped at chunk %d", row.id, splitter.chunk)
            return
        except TaskQuotaFull:
            await asyncio.to_thread(self.repo.release, row.id, self.owner, {
                "retry_at": self.repo.db_time(self.settings.quota_backoff)})
            log.info("task group %s: task quota full; the split goes on later", row.id)
            return
        finally:
            await dst.close()
        if splitter.chunk == 0:
            await self._fail(row, SplitFailure("TRF.0012", "No objects were found for the chosen method."))
            return
        state = {**splitter.state, "done": True}
        await asyncio.to_thread(self._finish_split, row, state)
        self.ports.wake_tasks()
        log.info("task group %s: split into %d tasks", row.id, splitter.chunk)

    def _finish_split(self, row: GroupRow, state: dict[str, Any]) -> None:
        # The keys stay (sealed) until the group completes, to remove its list files then.
        if self.repo.transition(row.id, (G_EXECUTING,), {"status": G_MONITORING, "split_state": state}):
            self.repo.release(row.id, self.owner, {})
        else:
            self.repo.release(row.id, self.owner, {"split_state": state})

    async def _fail(self, row: GroupRow, exc: SplitFailure) -> None:
        log.info("task group %s: split failed %s", row.id, exc.code)
        await asyncio.to_thread(self.repo.release, row.id, self.owner, {
            "status": G_CREATE_FAILED, "error_code": exc.code, "error_msg": exc.message[:1024],
            "finished_at": time.time(), "secrets": self._cleanup_keys(row)})
        await asyncio.to_thread(self._notify, row.id)


class _Splitter:
    """One run of one group's split, from its checkpoint to the end of the source (or a stop)."""

    def __init__(self, runner: GroupRunner, row: GroupRow, keys: dict[str, str], dst: Backend) -> None:
        self.runner = runner
        self.row = row
        self.keys = keys
        self.dst = dst
        self.split = runner.ports.split
        self.state: dict[str, Any] = dict(row.split_state)
        self.chunk = int(self.state.get("chunk", 0))
        self.objects = row.objects
        self.bytes = row.bytes
        self.last_beat = time.monotonic()

    async def run(self) -> None:
        if self.row.task_type in _LIST_FILE_TYPES:
            await self._split_list_file()
        else:
            await self._split_listing()

    # -- prefix groups: the source listing -------------------------------------------------------------------

    async def _split_listing(self) -> None:
        src_spec = self.row.src_spec
        spec = self.runner._endpoint_spec(src_spec["cloud_type"], src_spec["region"])
        profile = get_profile(spec["profile"])
        bucket = profile.bucket_name(src_spec["bucket"], src_spec.get("app_id"))
        # Resuming by key needs a byte-ordered listing; an operator-mapped store is not trusted to give one.
        by_key = profile.list_order is ListOrder.LEXICOGRAPHIC and not spec["from_override"]
        store = RetryingBackend(open_store(spec, src_spec["region"], bucket, "", StoreKeys.of(self.keys, "src")))
        prefixes = [p for p, _ in normalise(src_spec.get("object_key") or [""], ())]
        chunk = _Chunk([])
        try:
            index = int(self.state.get("index", 0))
            while index < len(prefixes):
                after = self.state.get("after") if by_key else None
                skip = 0 if by_key else int(self.state.get("skip", 0))
                taken = skip
                async for info in listing(store, prefixes[index], after):
                    if skip:
                        skip -= 1
                        continue
                    taken += 1
                    line = quote(info.key, safe="/")
                    chunk.lines.append(line)
                    chunk.objects += 1
                    chunk.size += info.size
                    chunk.text_bytes += len(line) + 1
                    if self._full(chunk):
                        await self._flush(chunk, {"index": index, "after": info.key, "skip": taken})
                        chunk = _Chunk([])
                    else:
                        await self._beat()
                index += 1
                self.state = {**self.state, "index": index, "after": None, "skip": 0}
            if chunk.objects:
                await self._flush(chunk, {"index": index, "after": None, "skip": 0})
        except FatalError as exc:
            raise _split_failure("source", exc) from None
        finally:
            await store.close()

    # -- LIST groups: the lines of the list file -------------------------------------------------------------

    async def _split_list_file(self) -> None:
        list_file = self.row.src_spec["list_file"]
        dst = self.row.dst_spec
        spec = self.runner._endpoint_spec(None, dst["region"])
        store = RetryingBackend(open_store(spec, dst["region"], list_file["obs_bucket"], "",
                                           StoreKeys.of(self.keys, "dst")))
        key = list_file["list_file_key"]
        try:
            try:
                info = await store.head(key)
            except NotFoundError:
                raise SplitFailure("TRF.0013", "The object list file does not exist.") from None
            if info.size > s.LIST_FILE_MAX_BYTES:
                raise SplitFailure("TRF.0014", "The object list file is larger than 100 MB.")
            start = int(self.state.get("offset", 0))
            consumed = start  # bytes of the file up to the end of the last line taken
            chunk = _Chunk([])
            async for raw, consumed in ranged_lines(store, key, info.size, info.etag, offset=start):
                await self._take_line(raw, chunk, consumed)
                if self._full(chunk):
                    await self._flush(chunk, {"offset": consumed})
                    chunk = _Chunk([])
            if chunk.objects:
                await self._flush(chunk, {"offset": consumed})
        except FatalError as exc:
            raise _split_failure("destination", exc) from None
        finally:
            await store.close()

    async def _take_line(self, raw: bytes, chunk: _Chunk, consumed: int) -> None:
        try:
            line = raw.decode("utf-8").strip().lstrip("\ufeff")
        except UnicodeDecodeError:
            raise SplitFailure("TRF.0016", f"The object list file is not UTF-8 text (byte {consumed}).") from None
        if not line:
            return
        chunk.lines.append(line)
        chunk.objects += 1
        chunk.text_bytes += len(line) + 1
        await self._beat()

    # -- chunks ----------------------------------------------------------------------------------------------

    def _full(self, chunk: _Chunk) -> bool:
        sp = self.split
        return (chunk.objects >= sp.objects_per_task or chunk.size >= sp.bytes_per_task
                or chunk.text_bytes >= sp.list_file_bytes)

    async def _beat(self) -> None:
        if time.monotonic() - self.last_beat < self.runner.settings.heartbeat_interval:
            return
        await self._heartbeat({})

    async def _heartbeat(self, values: dict[str, Any]) -> None:
        r = self.runner
        fresh = await asyncio.to_thread(r.repo.heartbeat, self.row.id, r.owner, r.settings.lease_ttl, values)
        self.last_beat = time.monotonic()
        if fresh is None or fresh.status != G_EXECUTING:
            raise _Stop()
        self.row = fresh

    async def _flush(self, chunk: _Chunk, position: dict[str, Any]) -> None:
        # Still ours and still splitting? A stop or delete between chunks ends the split here.
        await self._heartbeat({})
        body = ("\n".join(chunk.lines) + "\n").encode("utf-8")
        try:
            await self.dst.put(list_file_key(self.row.id, self.chunk), body, ObjectMeta(content_type="text/plain"))
        except FatalError as exc:
            raise _split_failure("destination", exc) from None
        await asyncio.to_thread(self._create_task)
        self.chunk += 1
        self.objects += chunk.objects
        self.bytes += chunk.size
        self.state = {**self.state, **position, "chunk": self.chunk, "attempts": 0}
        await self._heartbeat({"split_state": self.state, "objects": self.objects, "bytes": self.bytes,
                               "task_count": self.chunk})
        if self.runner.on_progress is not None:
            self.runner.on_progress(self.objects, self.bytes, self.chunk)
        self.runner.ports.wake_tasks()

    def _create_task(self) -> None:
        row = self.row
        name = task_name(row.id, self.chunk)
        if self.runner.repo.task_named(row.project_id, row.id, name) is not None:
            return  # created before a crash; its chunk was written again, identically
        try:
            self.runner.ports.create_task(row, self.keys, self.chunk, name)
        except FerryError as exc:
            raise SplitFailure("TRF.0001", f"A task of the group could not be created: {exc.message}") from None


def _split_failure(side: str, exc: FatalError) -> SplitFailure:
    failure = failure_for(side, exc)
    return SplitFailure(failure.code, failure.message)


def split_handler(ports: GroupPorts, settings: GroupRunnerSettings | None = None) -> Handler:
    """The handler of `group_split` units on a worker (register it with `units.handles(SPLIT_KIND)`): the split
    of the unit's group, its progress (objects and bytes put into tasks; the watermark names the chunks written)
    written with the unit's heartbeats."""

    async def handle(unit: UnitRow, ctx: UnitContext) -> None:
        runner = GroupRunner(ports, settings)

        def progress(objects: int, size: int, chunks: int) -> None:
            ctx.progress.listed = objects
            ctx.progress.objects_done = objects
            ctx.progress.bytes_done = size
            ctx.progress.watermark = f"chunk {chunks}"

        runner.on_progress = progress
        await runner.split_unit(unit.owner_id, ctx.stop)

    return handle
