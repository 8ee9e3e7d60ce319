"""AzureBackend against Azurite, beyond the shared contract: tiers and rehydration, listings, SAS, errors, secrets."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from ferry.db.database import open_database
from ferry.db.job_repo import JobRepo
from ferry.engine.copier import KEEP_SOURCE_CLASS, CopyOptions
from ferry.engine.pipeline import TransferOptions
from ferry.errors import AccessError, ArchivedObjectError, FerryError, NotFoundError, UsageError
from ferry.objects import ObjectMeta
from ferry.sandbox import AzuriteServer
from ferry.service.transfers import run_migration
from ferry.storage.azure import AzureBackend
from ferry.storage.azure_auth import account_credentials
from ferry.storage.base import ListOrder
from ferry.storage.registry import open_backend
from ferry.storage.s3 import S3Backend

PLAIN = ObjectMeta(content_type="application/octet-stream")


@pytest.fixture
def container(azurite: AzuriteServer) -> str:
    return azurite.create_bucket(f"t-{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def backend(azurite: AzuriteServer, container: str) -> AsyncIterator[AzureBackend]:
    b = AzureBackend(account_credentials(azurite.access_key, key=azurite.secret_key, endpoint=azurite.blob_endpoint),
                     container)
    yield b
    await b.close()


def service_sas(server: AzuriteServer, container: str, permissions: str) -> str:
    """A container SAS as Azure documents it (service SAS, version 2023-11-03), valid for an hour."""
    now = dt.datetime.now(dt.UTC)
    fields = {"sp": permissions, "st": (now - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "se": (now + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"), "spr": "http",
              "sv": "2023-11-03", "sr": "c"}
    sts = "\n".join([fields["sp"], fields["st"], fields["se"], f"/blob/{server.access_key}/{container}", "", "",
                     fields["spr"], fields["sv"], fields["sr"], "", "", "", "", "", "", ""])
    key = base64.b64decode(server.secret_key)
    fields["sig"] = base64.b64encode(hmac.new(key, sts.encode(), hashlib.sha256).digest()).decode()
    return urlencode(fields)


async def test_an_archived_blob_is_refused_until_rehydrated(backend: AzureBackend) -> None:
    await backend.put("frozen", b"brr", PLAIN, storage_class="ARCHIVE")
    await backend.put("cool", b"c", PLAIN, storage_class="IA")
    listed = {i.key: i.storage_class async for i in backend.list()}
    assert listed == {"frozen": "ARCHIVE", "cool": "IA"}
    with pytest.raises(ArchivedObjectError, match="rehydrate"):
        await backend.read("frozen")
    with pytest.raises(ArchivedObjectError):
        await backend.read_object("frozen")
    await backend.restore("frozen", 3)
    # Azurite rehydrates at once; Azure takes hours, reporting x-ms-archive-status meanwhile (asked again,
    # restore() then does nothing).
    assert (await backend.head("frozen")).storage_class == "STANDARD"
    assert await backend.read("frozen") == b"brr"
    await backend.restore("frozen", 3)  # not archived any more: nothing to do
    await backend.restore("cool", 3)  # a Cool blob is never moved to Hot by a restore
    assert (await backend.head("cool")).storage_class == "IA"
    with pytest.raises(NotFoundError):
        await backend.restore("missing", 3)


async def test_listing_pages_resume_and_report_content_md5(backend: AzureBackend) -> None:
    keys = [f"k/{i:02d}" for i in range(7)] + ["k/z", "k/ä", "l"]  # UTF-8 byte order: ä (C3 A4) after z
    for key in keys:
        await backend.put(key, key.encode(), PLAIN)
    backend._list_page_size = 3
    assert backend.capabilities.list_order is ListOrder.UNORDERED
    infos = {i.key: i async for i in backend.list("k/")}
    assert sorted(infos) == sorted(keys[:-1])
    assert all(i.md5 == hashlib.md5(k.encode()).hexdigest() for k, i in infos.items())
    assert sorted([i.key async for i in backend.list("", start_after="k/05")]) == ["k/06", "k/z", "k/ä", "l"]
    head = await backend.head("k/ä")
    assert head.md5 == hashlib.md5("k/ä".encode()).hexdigest() and head.etag == infos["k/ä"].etag


async def test_azurite_lists_in_utf16_order_which_is_why_azure_is_unordered(backend: AzureBackend) -> None:
    for key in ("k\ue000", "k\U0001f600"):
        await backend.put(key, b"x", PLAIN)
    listed = [i.key async for i in backend.list()]
    assert listed == ["k\U0001f600", "k\ue000"]  # UTF-8 byte order would put U+E000 (EE 80 80) first
    assert [i.key async for i in backend.list(start_after="k\ue000")] == ["k\U0001f600"]


async def test_a_large_upload_has_no_content_md5_and_ranges_read_right(backend: AzureBackend) -> None:
    size = backend.capabilities.min_part_size
    one, two = os.urandom(size), os.urandom(100)
    upload = await backend.create_multipart("blocks", ObjectMeta(content_type="video/mp4"), storage_class="IA")
    parts = [await backend.upload_part("blocks", upload, n, data) for n, data in ((1, one), (2, two))]
    await backend.complete_multipart("blocks", upload, parts)
    info = await backend.head("blocks")
    assert (info.size, info.md5, info.storage_class) == (size + 100, None, "IA")
    assert await backend.read("blocks", offset=size - 3, length=6) == (one + two)[size - 3:size + 3]
    streamed, pieces = await backend.read_stream("blocks")
    await pieces.aclose()
    assert streamed.size == size + 100 and streamed.md5 is None


async def test_sas_token_reads_and_lists_but_may_not_write(azurite: AzuriteServer, backend: AzureBackend,
                                                           container: str) -> None:
    await backend.put("shared", b"via sas", PLAIN)
    token = service_sas(azurite, container, "rl")
    reader = AzureBackend(account_credentials(azurite.access_key, sas=token, endpoint=azurite.blob_endpoint),
                          container)
    try:
        assert [i.key async for i in reader.list()] == ["shared"]
        assert await reader.read("shared") == b"via sas"
        with pytest.raises(AccessError) as refused:
            await reader.put("nope", b"x", PLAIN)
        assert refused.value.writing and "sig=" not in refused.value.message
        assert token.split("sig=")[1][:10] not in refused.value.message
    finally:
        await reader.close()


async def test_wrong_key_and_missing_container_are_access_errors_that_name_no_secret(
    azurite: AzuriteServer, container: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = base64.b64encode(os.urandom(64)).decode()
    bad = AzureBackend(account_credentials(azurite.access_key, key=wrong, endpoint=azurite.blob_endpoint), container)
    missing = AzureBackend(account_credentials(azurite.access_key, key=azurite.secret_key,
                                               endpoint=azurite.blob_endpoint), "no-such-container")
    try:
        with pytest.raises(AccessError) as refused:
            await bad.head("k")
        # Azure says AuthenticationFailed, Azurite AuthorizationFailure: either way the keys are to blame.
        assert refused.value.http_status == 403 and "ak" in refused.value.fix("ak", "sk")
        with pytest.raises(AccessError) as gone:
            await anext(aiter(missing.list()))
        assert gone.value.fix("ak", "sk") == "the store bucket does not exist: create it or correct its name"
        seen = " ".join([refused.value.message, gone.value.message, repr(bad), bad.name, repr(bad.credentials),
                         caplog.text])
        for secret in (wrong, azurite.secret_key):
            assert secret not in seen and secret[:16] not in seen
    finally:
        await bad.close()
        await missing.close()


async def test_registry_opens_azure_specs_from_keys_or_a_connection_string(
    azurite: AzuriteServer, backend: AzureBackend, container: str,
) -> None:
    await backend.put("docs/a", b"A", PLAIN)
    by_key = open_backend(f"azure://{container}/docs", endpoint=azurite.blob_endpoint,
                          access_key=azurite.access_key, secret_key=azurite.secret_key)
    by_string = open_backend(f"azure://{container}/docs/", connection_string=azurite.connection_string)
    try:
        for opened in (by_key, by_string):
            assert opened.name == f"azure://{container}/docs/"
            assert [i.key async for i in opened.list()] == ["a"]
    finally:
        await by_key.close()
        await by_string.close()
    with pytest.raises(UsageError, match="account name and key, or a connection string"):
        open_backend(f"azure://{container}", access_key=azurite.access_key)
    with pytest.raises(UsageError, match="malformed Azure connection string") as bad:
        open_backend(f"azure://{container}", connection_string=azurite.connection_string + "Extra=1")
    assert azurite.secret_key not in bad.value.message
    with pytest.raises(UsageError, match="invalid Azure Blob Storage bucket name"):
        open_backend("azure://Bad_Name", connection_string=azurite.connection_string)


def test_azurite_is_started_with_an_account_of_its_own(azurite: AzuriteServer) -> None:
    status, body = azurite.request("GET", "", query="comp=list")
    assert status == 200 and b"EnumerationResults" in body
    assert azurite.access_key != "devstoreaccount1"


async def test_errors_from_a_dead_endpoint_are_fatal(container: str) -> None:
    creds = account_credentials("deadaccount", key=base64.b64encode(b"k" * 32).decode(),
                                endpoint="http://127.0.0.1:9/deadaccount")
    dead = AzureBackend(creds, container, connect_timeout=2.0)
    try:
        with pytest.raises(FerryError, match="cannot connect"):
            await dead.head("x")
    finally:
        await dead.close()


async def test_src_storage_mapping_keeps_each_blobs_tier_in_s3_terms(
    backend: AzureBackend, moto: Any, bucket_factory: Any, tmp_path: Path,
) -> None:
    await backend.put("hot", b"h", PLAIN)
    await backend.put("cool", b"c", PLAIN, storage_class="IA")
    await backend.put("cold", b"k", PLAIN, storage_class="Cold")  # Azure's own name passes through
    assert (await backend.head("cold")).storage_class == "IA"
    dst = S3Backend(moto.endpoint, "us-east-1", moto.access_key, moto.secret_key, bucket_factory(moto), profile="aws")
    try:
        opts = TransferOptions(copy=CopyOptions(storage_class=KEEP_SOURCE_CLASS), concurrency=4)
        repo = JobRepo(open_database(f"sqlite:///{tmp_path / 'state.db'}"))
        summary = await run_migration(backend, dst, repo, opts, report_dir=tmp_path / "reports", spec={})
        assert (summary.success, summary.failed) == (3, 0)
        # Hot -> STANDARD; Cool and Cold (online, billed like infrequent access) -> IA -> AWS STANDARD_IA.
        assert {k: (await dst.head(k)).storage_class for k in ("hot", "cool", "cold")} == {
            "hot": "STANDARD", "cool": "IA", "cold": "IA"}
        raw = await dst._send("HEAD", "head", "cool")
        assert raw.headers.get("x-amz-storage-class") == "STANDARD_IA"
    finally:
        await dst.close()


async def test_a_copy_given_meta_replaces_all_of_it(backend: AzureBackend) -> None:
    await backend.put("src", b"data", ObjectMeta(content_type="text/a", cache_control="no-cache",
                                                 user={"owner": "a", "x-trace": "1"}), crc64=42)
    await backend.copy_from(backend, "src", "bare", ObjectMeta(content_type="text/b"))
    bare = await backend.head("bare")
    assert bare.meta is not None and (bare.meta.content_type, bare.meta.cache_control, dict(bare.meta.user)) == (
        "text/b", None, {})
    assert bare.crc64 is None
    await backend.copy_from(backend, "src", "kept", None)
    kept = await backend.head("kept")
    assert kept.meta is not None and dict(kept.meta.user) == {"owner": "a", "x-trace": "1"} and kept.crc64 == 42
    assert await backend.read("bare") == await backend.read("kept") == b"data"
