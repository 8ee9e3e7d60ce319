"""Bytes damaged between a real source store and Ferry (the fault proxy) never land, whoever copies: `ferry migrate`,
a migration task's transfer, a sync reconciliation and sync events; on every path (read whole, streamed and spliced,
multipart in another part size than the source's, URL sources) and for the checksums a real store gives (the MD5
ETag, the multipart ETag, x-amz-checksum-sha256); what stays damaged fails with its reason."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cli_helpers import ferry_env, migrate_argv, run_ferry
from sqlalchemy import Engine

from faultproxy import Damage, FaultProxy, Rule
from ferry.db.database import open_database
from ferry.db.job_repo import JobRepo
from ferry.db.sync_repo import SyncRepo, SyncTaskSpec
from ferry.engine.compare import ConsistencyCheck
from ferry.engine.copier import CopyOptions
from ferry.engine.pipeline import TransferOptions
from ferry.engine.verified_copy import READ_ATTEMPTS
from ferry.objects import ObjectMeta
from ferry.runner.sync import SyncSettings
from ferry.sandbox import MotoServer, SeaweedServer
from ferry.service.transfers import Summary, run_migration
from ferry.storage.base import Backend
from ferry.storage.profiles import Profile, get_profile
from ferry.storage.s3 import S3Backend
from ferry.storage.url_source import UrlSource, host_port
from ferry.storage.wrappers import RetryingBackend
from sync_workers import running

KiB = 1024
MiB = 1024 * KiB
# What each object is and the path it takes under _opts(): read whole; streamed with the source's MD5 as
# Content-MD5 (moved socket to socket in the kernel); streamed and hashed here against a multipart ETag;
# multipart in parts of 6 MiB from a source uploaded in parts of 5 MiB.
OBJECTS = {
    "small.bin": (200 * KiB + 1, None),
    "stream.bin": (3 * MiB + 3, None),
    "stream-parts.bin": (7 * MiB + 5, 5 * MiB),
    "multipart.bin": (13 * MiB + 7, 5 * MiB),
}
SYNC = SyncSettings(reconcile_seconds=3600, tasks_refresh_seconds=0.05, lease_seconds=5, retry_base_seconds=0.02,
                    retry_max_seconds=0.05, max_attempts=2, poll_seconds=0.05, node_id="faults")


def _opts(**kw: Any) -> TransferOptions:
    copy = CopyOptions(stream_threshold=1 * MiB, multipart_threshold=8 * MiB, part_size=6 * MiB, **kw)
    return TransferOptions(copy=copy, concurrency=4)


def _s3(server: Any, bucket: str, endpoint: str | None = None, profile: Profile | str = "seaweedfs") -> S3Backend:
    return S3Backend(endpoint or server.endpoint, server.region, server.access_key, server.secret_key, bucket,
                     profile=profile)


async def _fill(store: S3Backend, objects: dict[str, tuple[int, int | None]]) -> dict[str, bytes]:
    bodies = {}
    for key, (size, part) in objects.items():
        body = bodies[key] = os.urandom(size)
        if part is None:
            await store.put(key, body, ObjectMeta(content_type="text/x-k"))
            continue
        upload = await store.create_multipart(key, ObjectMeta(content_type="text/x-k"))
        parts = [await store.upload_part(key, upload, n + 1, body[at:at + part])
                 for n, at in enumerate(range(0, size, part))]
        await store.complete_multipart(key, upload, parts)
    return bodies


def _damage(proxy: FaultProxy, keys: Any, first: int | None) -> dict[str, Rule]:
    """Damage the body of the first `first` GETs of each key (all of them with None)."""
    return {k: proxy.add(Damage(count=2), method="GET", key=re.escape(k) + "$", first=first) for k in keys}


async def _contents(store: Backend) -> dict[str, bytes]:
    return {o.key: (await store.read_object(o.key))[1] async for o in store.list()}


@pytest.fixture
async def stores(seaweed_a: SeaweedServer, seaweed_b: SeaweedServer, bucket_factory: Any,
                 fault_proxy: Callable[[Any], FaultProxy]) -> AsyncIterator[SimpleNamespace]:
    """A source bucket filled with OBJECTS on seaweed_a, reached through a fault proxy; an empty destination
    bucket on seaweed_b (another endpoint: no server-side copy)."""
    proxy = fault_proxy(seaweed_a)
    sbucket, dbucket = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    direct = _s3(seaweed_a, sbucket)
    src, dst = _s3(seaweed_a, sbucket, proxy.endpoint), _s3(seaweed_b, dbucket)
    bodies = await _fill(direct, OBJECTS)
    yield SimpleNamespace(proxy=proxy, src=src, dst=dst, bodies=bodies, sbucket=sbucket, dbucket=dbucket)
    for b in (direct, src, dst):
        await b.close()


async def _migrate(src: Backend, dst: Backend, tmp_path: Path, opts: TransferOptions) -> Summary:
    repo = JobRepo(open_database(f"sqlite:///{tmp_path / 'state.db'}"))
    return await run_migration(RetryingBackend(src), RetryingBackend(dst), repo, opts,
                               report_dir=tmp_path / "reports", spec={})


@pytest.mark.parametrize("check", ["size_last_modified", "crc64"])
async def test_damaged_once_every_object_lands_intact(stores: SimpleNamespace, tmp_path: Path, check: str) -> None:
    rules = _damage(stores.proxy, OBJECTS, first=1)
    s = await _migrate(stores.src, stores.dst, tmp_path, _opts(consistency=ConsistencyCheck(check)))
    assert (s.success, s.failed, s.size_only) == (len(OBJECTS), 0, 0)
    assert {k: r.fired for k, r in rules.items()} == dict.fromkeys(OBJECTS, 1)
    assert await _contents(stores.dst) == stores.bodies


async def test_damaged_on_every_read_nothing_lands_and_each_failure_says_why(
        stores: SimpleNamespace, tmp_path: Path) -> None:
    rules = _damage(stores.proxy, OBJECTS, first=None)
    s = await _migrate(stores.src, stores.dst, tmp_path, _opts())
    assert (s.success, s.failed) == (0, len(OBJECTS))
    assert all(r.fired >= READ_ATTEMPTS for r in rules.values())
    assert await _contents(stores.dst) == {}
    assert s.report is not None
    reasons = {(e := json.loads(line))["key"]: e["reason"] for line in Path(s.report).read_text().splitlines()}
    assert "refused the bytes read against the source's MD5" in reasons["stream.bin"]  # by its Content-MD5
    assert "the source's MD5" in reasons["small.bin"]
    assert "the source's multipart ETag" in reasons["stream-parts.bin"]
    assert "the source's multipart ETag" in reasons["multipart.bin"]
    assert all(f"on each of {READ_ATTEMPTS} reads" in r for r in reasons.values())


async def test_ferry_migrate_reads_damaged_objects_again(seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
                                                          stores: SimpleNamespace, tmp_path: Path) -> None:
    rules = _damage(stores.proxy, OBJECTS, first=1)
    via_proxy = SimpleNamespace(endpoint=stores.proxy.endpoint, access_key=seaweed_a.access_key,
                                secret_key=seaweed_a.secret_key)
    argv = migrate_argv(via_proxy, stores.sbucket, seaweed_b, stores.dbucket, tmp_path / "state",
                        "--multipart-threshold", "8", "--part-size", "6", "--no-progress")
    run = await asyncio.to_thread(run_ferry, argv, ferry_env(seaweed_a, seaweed_b))
    assert run.code == 0, run.stderr
    assert (run.summary["success"], run.summary["failed"], run.summary["size_only"]) == (len(OBJECTS), 0, 0)
    assert all(r.fired == 1 for r in rules.values())
    assert await _contents(stores.dst) == stores.bodies

    _damage(stores.proxy, ["small.bin"], first=None)
    await stores.dst.delete("small.bin")
    argv = migrate_argv(via_proxy, stores.sbucket, seaweed_b, stores.dbucket, tmp_path / "again", "--no-progress")
    run = await asyncio.to_thread(run_ferry, argv, ferry_env(seaweed_a, seaweed_b))
    assert run.code == 1 and run.summary["failed"] == 1
    report = Path(run.summary["report"]).read_text()
    assert "small.bin" in report and "the source's MD5" in report
    assert "small.bin" not in await _contents(stores.dst)


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    eng = open_database(f"sqlite:///{tmp_path / 'sync.db'}")
    yield eng
    eng.dispose()


async def _until(done: Callable[[], bool], timeout: float = 120.0) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.05)


def _sync_task(repo: SyncRepo, reconciled: bool) -> str:
    from ferry.db.sync_models import sync_tasks

    task_id = f"task-{time.monotonic_ns()}"
    spec = SyncTaskSpec("AWS", "us-east-1", "src", "cn-north-4", "dst", consistency_check="size_last_modified")
    assert repo.create_task(task_id, "project", spec, "sealed", time.time(), 5)
    if reconciled:
        with repo.engine.begin() as conn:
            conn.execute(sync_tasks.update().where(sync_tasks.c.id == task_id).values(reconciled_at=time.time()))
    return task_id


async def test_sync_reconciliation_and_events_read_damaged_objects_again(
        stores: SimpleNamespace, engine: Engine, seaweed_b: SeaweedServer, bucket_factory: Any) -> None:
    repo = SyncRepo(engine)
    reconciling = _sync_task(repo, reconciled=False)
    rules = _damage(stores.proxy, OBJECTS, first=1)
    async with running(engine, lambda _row: (stores.src, stores.dst), SYNC):
        await _until(lambda: (row := repo.get_task(reconciling)) is not None and row.reconciled_at is not None)
    assert repo.stat_totals(reconciling, 0, 2e10).success == len(OBJECTS)
    assert all(r.fired == 1 for r in rules.values())
    assert await _contents(stores.dst) == stores.bodies

    evented = _sync_task(repo, reconciled=True)
    other = _s3(seaweed_b, bucket_factory(seaweed_b))
    rules = _damage(stores.proxy, OBJECTS, first=1)
    async with running(engine, lambda _row: (stores.src, other), SYNC):
        repo.enqueue(evented, list(OBJECTS), time.time())
        await _until(lambda: repo.stat_totals(evented, 0, 2e10).success == len(OBJECTS))
    assert all(r.fired == 1 for r in rules.values())
    assert await _contents(other) == stores.bodies
    await other.close()


async def test_x_amz_checksum_sha256_checks_a_source_whose_etag_is_no_md5(
        moto: MotoServer, seaweed_b: SeaweedServer, bucket_factory: Any,
        fault_proxy: Callable[[Any], FaultProxy], tmp_path: Path) -> None:
    """A store that keeps a flexible checksum (moto, as S3 does) while its ETag says nothing (here: a profile
    that does not trust it, as under SSE-KMS): the SHA-256 is what the bytes read are checked against."""
    proxy = fault_proxy(moto)
    sbucket, dbucket = bucket_factory(moto), bucket_factory(seaweed_b)
    direct = _s3(moto, sbucket, profile="s3")
    bodies = {"small.bin": os.urandom(100 * KiB), "stream.bin": os.urandom(2 * MiB + 1)}
    for key, body in bodies.items():
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        await direct._send("PUT", "put", key, data=body,
                           headers={"x-amz-checksum-sha256": digest, "x-amz-sdk-checksum-algorithm": "SHA256"})
    untrusted = get_profile("s3").replace(etag_is_md5=False)
    src, dst = _s3(moto, sbucket, proxy.endpoint, untrusted), _s3(seaweed_b, dbucket)
    assert (await src.head("small.bin")).sha256 == hashlib.sha256(bodies["small.bin"]).hexdigest()
    rules = _damage(proxy, bodies, first=1)
    s = await _migrate(src, dst, tmp_path / "once", _opts())
    assert (s.success, s.failed, s.size_only) == (2, 0, 0)
    assert all(r.fired == 1 for r in rules.values())
    assert await _contents(dst) == bodies

    for key in bodies:
        await dst.delete(key)
    _damage(proxy, bodies, first=None)
    s = await _migrate(src, dst, tmp_path / "always", _opts())
    assert (s.success, s.failed) == (0, 2)
    assert s.report is not None and "the source's SHA-256" in Path(s.report).read_text()
    assert await _contents(dst) == {}
    for b in (direct, src, dst):
        await b.close()


async def test_url_sources_are_checked_by_their_md5_etag_else_by_reading_again(
        moto: MotoServer, seaweed_b: SeaweedServer, bucket_factory: Any, fault_proxy: Callable[[Any], FaultProxy],
        tmp_path: Path) -> None:
    proxy = fault_proxy(moto)
    sbucket, dbucket = bucket_factory(moto), bucket_factory(seaweed_b)
    direct = _s3(moto, sbucket, profile="s3")
    bodies = {"u/small.bin": os.urandom(50 * KiB), "u/stream.bin": os.urandom(2 * MiB + 9)}
    for key, body in bodies.items():
        await direct._send("PUT", "put", key, data=body, headers={"x-amz-acl": "public-read"})
    # Public objects, as a CDN or a website serves them: a URL list of them, through the proxy.
    entries = [(key, f"{proxy.endpoint}/{sbucket}/{key}") for key in bodies]
    src = UrlSource(entries, allowed_hosts=[host_port(proxy.endpoint)])
    dst = _s3(seaweed_b, dbucket)
    rules = _damage(proxy, bodies, first=1)
    s = await _migrate(src, dst, tmp_path, _opts())
    assert (s.success, s.failed, s.size_only) == (2, 0, 0)
    assert all(r.fired == 1 for r in rules.values())
    assert await _contents(dst) == bodies

    class NoEtag(UrlSource):
        """A web server that gives no ETag nor Content-MD5: only the size can be checked."""

        def _info(self, key: str, headers: Any, size: int | None = None) -> Any:
            return super()._info(key, {k: v for k, v in headers.items() if k.lower() != "etag"}, size)

    bare = NoEtag(entries, allowed_hosts=[host_port(proxy.endpoint)])
    rules = _damage(proxy, bodies, first=1)
    other = _s3(seaweed_b, bucket_factory(seaweed_b))
    s = await _migrate(bare, other, tmp_path / "bare", _opts(reread_size_only=True))
    assert (s.success, s.failed, s.size_only) == (2, 0, 2)
    assert all(r.fired == 1 for r in rules.values())
    assert await _contents(other) == bodies  # the damaged copies were read again, compared and replaced
    for b in (direct, src, dst, bare, other):
        await b.close()
