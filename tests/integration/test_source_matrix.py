"""One hard set of objects migrated from every kind of source into SeaweedFS: each S3 cloud profile (its own
dialect spoken to a SeaweedFS behind an operator endpoint, as the seam opens it), Azure Blob (Azurite), Google Cloud
Storage (gcp-storage-emulator) and a URL list; bytes and metadata are proved at the destination. The CDN server
under each of the 11 signing types runs the same set in test_cdn_source.py."""

from __future__ import annotations

import asyncio
import functools
import http.server
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import hard_set
from ferry.db.database import open_database
from ferry.db.job_repo import JobRepo
from ferry.engine.compare import ConsistencyCheck
from ferry.engine.copier import CopyOptions
from ferry.engine.pipeline import TransferOptions
from ferry.sandbox import SeaweedServer
from ferry.service.transfers import run_migration
from ferry.storage.base import Backend
from ferry.storage.profiles import get_profile
from ferry.storage.s3 import S3Backend
from ferry.storage.stores import StoreAt, StoreKeys, open_at
from ferry.storage.url_source import UrlSource

MiB = 1024 * 1024
S3_PROFILES = ["aws", "aliyun", "tencent", "huaweicloud", "qingcloud", "kingsoftcloud", "baidu", "qiniu", "ucloud"]
@pytest.fixture(scope="module")
def bodies() -> dict[str, bytes]:
    return hard_set.bodies()


async def _fill(store: Backend, bodies: dict[str, bytes]) -> None:
    try:
        for key, data in bodies.items():
            await store.put(key, data, hard_set.META)
    finally:
        await store.close()


def _opts(concurrency: int = 4) -> TransferOptions:
    copy = CopyOptions(consistency=ConsistencyCheck.SIZE_LAST_MODIFIED, metadata=True, multipart_threshold=8 * MiB,
                       part_size=5 * MiB, stream_threshold=1 * MiB)
    return TransferOptions(copy=copy, concurrency=concurrency)


async def _migrate_and_prove(src: Backend, seaweed_b: SeaweedServer, bodies: dict[str, bytes], tmp_path: Path,
                             concurrency: int = 4) -> None:
    dst_bucket = seaweed_b.create_bucket(f"matrix-dst-{os.urandom(4).hex()}")
    dst = S3Backend(seaweed_b.endpoint, seaweed_b.region, seaweed_b.access_key, seaweed_b.secret_key, dst_bucket)
    repo = JobRepo(open_database(f"sqlite:///{tmp_path / 'state.db'}"))
    try:
        summary = await run_migration(src, dst, repo, _opts(concurrency), report_dir=tmp_path / "reports", spec={})
        assert (summary.success, summary.failed) == (len(bodies), 0), summary
        for key, data in bodies.items():
            info, got = await dst.read_object(key)
            assert got == data, key
            assert info.meta is not None and info.meta.content_type == hard_set.META.content_type, key
            assert dict(info.meta.user) == dict(hard_set.META.user), key
            assert (info.meta.cache_control, info.meta.content_disposition) == ("max-age=60", "inline"), key
    finally:
        await asyncio.gather(src.close(), dst.close())


@pytest.mark.parametrize("profile", S3_PROFILES)
async def test_every_s3_cloud_profile_migrates_the_hard_set(
    profile: str, seaweed_a: SeaweedServer, seaweed_b: SeaweedServer, bodies: dict[str, bytes], tmp_path: Path,
) -> None:
    # Tencent buckets are `name-APPID`; the profile's own rule is checked by the seam.
    name = seaweed_a.create_bucket(f"matrix-{profile}-{os.urandom(3).hex()}-1250000000")
    prof = get_profile(profile)
    at = StoreAt(profile, seaweed_a.endpoint, prof.default_region, name, "", from_override=True)
    keys = StoreKeys(seaweed_a.access_key, seaweed_a.secret_key)
    await _fill(open_at(at, keys), bodies)  # written in the profile's own dialect, then read back in it
    await _migrate_and_prove(open_at(at, keys), seaweed_b, bodies, tmp_path)


async def test_azure_blob_migrates_the_hard_set(
    azurite: Any, seaweed_b: SeaweedServer, bodies: dict[str, bytes], tmp_path: Path,
) -> None:
    from ferry.storage.azure import AzureBackend
    from ferry.storage.azure_auth import account_credentials

    container = azurite.create_bucket(f"matrix-{os.urandom(4).hex()}")
    creds = account_credentials(azurite.access_key, key=azurite.secret_key, endpoint=azurite.blob_endpoint)
    await _fill(AzureBackend(creds, container), bodies)
    await _migrate_and_prove(AzureBackend(creds, container), seaweed_b, bodies, tmp_path)


async def test_google_cloud_storage_migrates_the_hard_set(
    gcs_emulator: Any, seaweed_b: SeaweedServer, bodies: dict[str, bytes], tmp_path: Path,
) -> None:
    from ferry.storage.base import ListOrder
    from ferry.storage.gcs import GcsBackend

    bucket = f"matrix-{os.urandom(4).hex()}"
    gcs_emulator.create_bucket(bucket)
    profile = get_profile("google").replace(list_order=ListOrder.UNORDERED)

    def store() -> GcsBackend:
        # The emulator serves one request at a time: few connections, patient connects (see the conformance suite).
        return GcsBackend(bucket, "", tokens=None, endpoint=gcs_emulator.endpoint, profile=profile,
                          copy_group=f"gcs:{gcs_emulator.endpoint}", connect_timeout=60.0, max_connections=4)

    await _fill(store(), bodies)
    # One object at a time: a streamed read paused by its writer holds the single-threaded emulator.
    await _migrate_and_prove(store(), seaweed_b, bodies, tmp_path, concurrency=1)


@pytest.fixture
def files_server(tmp_path: Path, bodies: dict[str, bytes]) -> Iterator[Callable[[str], str]]:
    """A plain HTTP server of the hard set's files; yields the URL of a key."""
    root = tmp_path / "www"
    for key, data in bodies.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        yield lambda key: f"http://127.0.0.1:{port}/{urllib.parse.quote(key)}"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_url_list_migrates_the_hard_set(
    files_server: Callable[[str], str], seaweed_b: SeaweedServer, bodies: dict[str, bytes], tmp_path: Path,
) -> None:
    entries = [(key, files_server(key)) for key in bodies]
    host = urllib.parse.urlsplit(entries[0][1]).netloc
    src = UrlSource(entries, allowed_hosts=[host])
    dst_bucket = seaweed_b.create_bucket(f"matrix-url-{os.urandom(4).hex()}")
    dst = S3Backend(seaweed_b.endpoint, seaweed_b.region, seaweed_b.access_key, seaweed_b.secret_key, dst_bucket)
    repo = JobRepo(open_database(f"sqlite:///{tmp_path / 'state.db'}"))
    try:
        summary = await run_migration(src, dst, repo, _opts(), report_dir=tmp_path / "reports", spec={})
        assert (summary.success, summary.failed) == (len(bodies), 0), summary
        for key, data in bodies.items():
            assert (await dst.read_object(key))[1] == data, key
    finally:
        await asyncio.gather(src.close(), dst.close())
