"""CDN mode end to end: a SeaweedFS bucket listed by its API, its bytes fetched through the local CDN under
each of the 11 authentication types, checked against the bucket, copied to a second SeaweedFS."""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import hard_set
from cdn_server import CdnConfig, CdnTestServer, azure_container_sas
from ferry.db.database import open_database
from ferry.db.job_repo import JobRepo
from ferry.engine.compare import ConsistencyCheck
from ferry.engine.copier import CopyOptions
from ferry.engine.pipeline import TransferOptions
from ferry.sandbox import SeaweedServer
from ferry.service.transfers import Summary, run_migration
from ferry.storage.cdn_signing import AUTH_TYPES, CdnCredentials, sign_url
from ferry.storage.cdn_source import CdnBackend, CdnSite
from ferry.storage.s3 import S3Backend
from ferry.storage.wrappers import RetryingBackend

MiB = 1024 * 1024
ALLOWED = frozenset({"127.0.0.1"})
@pytest.fixture(scope="module")
def origin(seaweed_a: SeaweedServer) -> Iterator[tuple[SeaweedServer, str, dict[str, bytes]]]:
    bucket = seaweed_a.create_bucket(f"cdn-origin-{os.urandom(4).hex()}")
    bodies = hard_set.bodies()

    async def fill() -> None:
        store = S3Backend(seaweed_a.endpoint, seaweed_a.region, seaweed_a.access_key, seaweed_a.secret_key, bucket)
        try:
            for key, data in bodies.items():
                await store.put(key, data, hard_set.META)
        finally:
            await store.close()

    asyncio.run(fill())
    yield seaweed_a, bucket, bodies


def _site(kind: str, server: CdnTestServer, seaweed: SeaweedServer, bucket: str, key: str | None = None) -> CdnSite:
    sas = azure_container_sas("container", datetime.now(UTC) + timedelta(hours=1))
    creds = CdnCredentials(
        key=key if key is not None else sas if kind == "AZURE_SAS_TOKEN" else "cdnkey0123456789abcd",
        ak=seaweed.access_key, sk=seaweed.secret_key, bucket=bucket)
    return CdnSite("http", server.domain, kind, creds)


def _server(kind: str, seaweed: SeaweedServer, bucket: str) -> CdnTestServer:
    return CdnTestServer(seaweed, bucket, CdnConfig(auth_type=kind, key="cdnkey0123456789abcd",
                                                    ak=seaweed.access_key, sk=seaweed.secret_key, bucket=bucket))


def _opts() -> TransferOptions:
    copy = CopyOptions(consistency=ConsistencyCheck.CRC64, metadata=True, multipart_threshold=8 * MiB,
                       part_size=5 * MiB, stream_threshold=1 * MiB)
    return TransferOptions(copy=copy, concurrency=4)


async def _migrate(src: Any, seaweed_b: SeaweedServer, dst_bucket: str, tmp_path: Path) -> tuple[Summary, S3Backend,
                                                                                                 JobRepo]:
    dst = S3Backend(seaweed_b.endpoint, seaweed_b.region, seaweed_b.access_key, seaweed_b.secret_key, dst_bucket)
    repo = JobRepo(open_database(f"sqlite:///{tmp_path / 'state.db'}"))
    summary = await run_migration(src, dst, repo, _opts(), report_dir=tmp_path / "reports", spec={})
    return summary, dst, repo


def _source(kind: str, server: CdnTestServer, seaweed: SeaweedServer, bucket: str, **kw: Any) -> CdnBackend:
    inner = S3Backend(seaweed.endpoint, seaweed.region, seaweed.access_key, seaweed.secret_key, bucket)
    site = _site(kind, server, seaweed, bucket, kw.pop("key", None))
    return CdnBackend(inner, site, allowed_hosts=kw.pop("allowed_hosts", ALLOWED), **kw)


@pytest.mark.parametrize("kind", sorted(AUTH_TYPES))
async def test_every_type_migrates_the_hard_set_through_the_cdn(
    kind: str, origin: tuple[SeaweedServer, str, dict[str, bytes]], seaweed_b: SeaweedServer, tmp_path: Path,
) -> None:
    seaweed, bucket, bodies = origin
    dst_bucket = seaweed_b.create_bucket(f"cdn-dst-{os.urandom(4).hex()}")
    with _server(kind, seaweed, bucket) as server:
        src = _source(kind, server, seaweed, bucket)
        summary, dst, _ = await _migrate(src, seaweed_b, dst_bucket, tmp_path)
        try:
            assert (summary.status, summary.success, summary.failed) == ("succeeded", len(bodies), 0), summary
            for key, data in bodies.items():
                info, got = await dst.read_object(key)
                assert got == data, key
                assert info.meta is not None and info.meta.content_type == hard_set.META.content_type
                assert info.meta.cache_control == hard_set.META.cache_control and info.meta.user == hard_set.META.user
        finally:
            await dst.close()
            await src.close()
        assert server.refusals == []
        # Every object's bytes came through the CDN, the multipart one in ranged parts.
        paths = {p.partition("?")[0] for p in server.requests}
        assert len(server.requests) >= len(bodies) + 2
        if kind in ("NONE", "ALIYUN_OSS_A", "TENCENT_COS_A", "TENCENT_COS_D", "QINIU_PRIVATE_AUTHENTICATION",
                    "KSYUN_PRIVATE_AUTHENTICATION", "AZURE_SAS_TOKEN"):
            assert "/unicode/%C3%BCn%C3%AF%20%E4%B8%AD%E6%96%87.bin" in paths


async def test_cdn_bytes_that_differ_from_the_bucket_fail_with_the_oms_reason(
    origin: tuple[SeaweedServer, str, dict[str, bytes]], seaweed_b: SeaweedServer, tmp_path: Path,
) -> None:
    seaweed, bucket, bodies = origin
    dst_bucket = seaweed_b.create_bucket(f"cdn-dst-{os.urandom(4).hex()}")
    with _server("ALIYUN_OSS_C", seaweed, bucket) as server:
        stale = {
            "plain.txt": b"x" * 1000,  # same size, other bytes: the MD5 tells
            "pct%25 and %.txt": b"short",  # another size
            "big/streamed.bin": bodies["big/streamed.bin"][:-1] + b"\0",  # a streamed object, its last byte
            "big/multipart.bin": bodies["big/multipart.bin"] + b"tail",  # a ranged read sees another total
        }
        server.tampered.update(stale)
        src = RetryingBackend(_source("ALIYUN_OSS_C", server, seaweed, bucket), base_delay=0.01)
        summary, dst, repo = await _migrate(src, seaweed_b, dst_bucket, tmp_path)
        try:
            assert (summary.success, summary.failed) == (len(bodies) - len(stale), len(stale)), summary
            failed = {r.key: r.reason for r in repo.iter_results(summary.job_id, "failed")}
            assert set(failed) == set(stale)
            assert all(reason and reason.startswith("COMPARE_SRC_AND_CDN_FAILURE: ") for reason in failed.values())
            listed = {o.key async for o in dst.list()}
            assert not listed & set(stale)  # nothing of a mismatching object was kept
        finally:
            await dst.close()
            await src.close()


@pytest.mark.parametrize("kind", ["ALIYUN_OSS_A", "TENCENT_COS_B", "QINIU_PRIVATE_AUTHENTICATION",
                                  "AZURE_SAS_TOKEN"])
async def test_a_wrong_key_is_refused_by_the_cdn_and_reported(
    kind: str, origin: tuple[SeaweedServer, str, dict[str, bytes]], seaweed_b: SeaweedServer, tmp_path: Path,
) -> None:
    seaweed, bucket, bodies = origin
    dst_bucket = seaweed_b.create_bucket(f"cdn-dst-{os.urandom(4).hex()}")
    with _server(kind, seaweed, bucket) as server:
        if kind == "QINIU_PRIVATE_AUTHENTICATION":
            server.config.sk = "another-secret"
        wrong = "?sv=2024-08-04&sr=c&sp=r&se=2099-01-01T00:00:00Z&sig=bm9wZQ%3D%3D" if kind == "AZURE_SAS_TOKEN" \
            else "wrongkey0123456789"
        src = _source(kind, server, seaweed, bucket, key=wrong)
        summary, dst, repo = await _migrate(src, seaweed_b, dst_bucket, tmp_path)
        await dst.close()
        await src.close()
    assert (summary.success, summary.failed) == (0, len(bodies))
    reasons = {r.reason for r in repo.iter_results(summary.job_id, "failed")}
    assert all("the CDN refused the signed URL" in (r or "") for r in reasons), reasons
    assert server.refusals and all(s == (401 if kind.startswith("QINIU") else 403) for s, _ in server.refusals)


async def test_an_expired_signature_is_refused_and_a_fresh_one_is_made_for_the_next_attempt(
    origin: tuple[SeaweedServer, str, dict[str, bytes]],
) -> None:
    seaweed, bucket, bodies = origin
    with _server("TENCENT_COS_D", seaweed, bucket) as server:
        server.config.ttl = 60
        late = _source("TENCENT_COS_D", server, seaweed, bucket, clock=lambda: 1_000_000_000.0)
        with pytest.raises(Exception, match="refused the signed URL"):
            await late.read_object("plain.txt")
        assert [why for _, why in server.refusals] == ["expired", "expired"]  # signed afresh, still stale
        ticks = iter([1_000_000_000.0])
        import time as _time
        skewed = _source("TENCENT_COS_D", server, seaweed, bucket, clock=lambda: next(ticks, _time.time()))
        _, data = await skewed.read_object("plain.txt")
        assert data == bodies["plain.txt"]
        await late.close()
        await skewed.close()


@pytest.mark.parametrize("kind", sorted(AUTH_TYPES - {"NONE", "AZURE_SAS_TOKEN"}))
def test_a_signature_moved_to_another_path_is_refused(
    kind: str, origin: tuple[SeaweedServer, str, dict[str, bytes]],
) -> None:
    seaweed, bucket, _ = origin
    with _server(kind, seaweed, bucket) as server:
        creds = _site(kind, server, seaweed, bucket).creds
        good = sign_url(kind, "http", server.domain, "plain.txt", creds).url
        with urllib.request.urlopen(good) as resp:
            assert resp.status == 200
        moved = good.replace("plain.txt", "empty.bin")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(moved)
        assert caught.value.code == (401 if kind.startswith("QINIU") else 403)


@pytest.mark.parametrize("kind", ["ALIYUN_OSS_C", "TENCENT_COS_D", "QINIU_PRIVATE_AUTHENTICATION",
                                  "KSYUN_PRIVATE_AUTHENTICATION"])
async def test_show_cdn_info_signs_its_probes(kind: str, origin: tuple[SeaweedServer, str, dict[str, bytes]]) -> None:
    from ferry.oms import CdnAuthType, CdnProtocol
    from ferry.secrets import Secret
    from ferry.service.buckets import CdnSource, CloudAccess, HelperSettings, show_cdn_info

    seaweed, bucket, _ = origin
    with _server(kind, seaweed, bucket) as server:
        settings = HelperSettings(endpoint_overrides={"Aliyun/cn-hangzhou": seaweed.endpoint},
                                  cdn_allowed_hosts=frozenset({server.domain}), public_endpoints=False, timeout=10)
        access = CloudAccess("Aliyun", seaweed.access_key, Secret(seaweed.secret_key))

        async def probe(key: str) -> Any:
            source = CdnSource(server.domain, CdnProtocol.HTTP, CdnAuthType(kind), Secret(key))
            return await show_cdn_info(access, "cn-hangzhou", bucket, source, ["plain.txt", "big/streamed.bin"],
                                       settings)

        good = await probe("cdnkey0123456789abcd")
        assert good.download_available and all(c.exists and c.etag_matching for c in good.checked)
        assert server.refusals == []
        if kind.startswith(("ALIYUN", "TENCENT")):
            bad = await probe("not-the-cdn-key")
            assert not bad.download_available and len(server.refusals) == 2


async def test_a_private_cdn_host_is_refused_unless_the_operator_allows_it(
    origin: tuple[SeaweedServer, str, dict[str, bytes]], seaweed_b: SeaweedServer, tmp_path: Path,
) -> None:
    from ferry.errors import FatalError, NotFoundError

    seaweed, bucket, bodies = origin
    with _server("NONE", seaweed, bucket) as server:
        refused = _source("NONE", server, seaweed, bucket, allowed_hosts=frozenset())
        with pytest.raises(FatalError, match="not a public address"):
            await refused.read_object("plain.txt")
        # A migration refuses it before any work (the preflight lists one object), naming the domain.
        with pytest.raises(FatalError, match=r"source_cdn\.domain is not a public address"):
            await _migrate(refused, seaweed_b, seaweed_b.create_bucket(f"cdn-dst-{os.urandom(4).hex()}"), tmp_path)
        await refused.close()
        assert server.requests == []
        allowed = _source("NONE", server, seaweed, bucket, allowed_hosts=frozenset({server.domain}))
        assert (await allowed.read_object("plain.txt"))[1] == bodies["plain.txt"]
        with pytest.raises(NotFoundError):
            await allowed.read_object("no-such-object")
        assert allowed.capabilities.copy_group is None  # never a server-side copy around the CDN
        await allowed.close()
