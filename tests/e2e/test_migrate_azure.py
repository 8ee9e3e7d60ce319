"""`ferry migrate azure://...` end to end: Azurite to SeaweedFS, odd keys, part-size edges, metadata, tiers, archive."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

from cli_helpers import FERRY, ferry_env, run_ferry, s3_client

from ferry.objects import ObjectMeta
from ferry.sandbox import AzuriteServer
from ferry.storage.azure import AzureBackend
from ferry.storage.azure_auth import account_credentials

MiB = 1024 * 1024
KEYS = [
    "plain.txt", "unicode/Grüße 日本語 ✓ é.txt", "spaces/a b  c.txt", "plus/a+b+c.txt", "percent/100%25 %.txt",
    "question/why?.txt", "hash/#1#.txt", "amp/a&b=c;d.txt", "dir-marker/", "a/", "a/b", "a-b", "empty.bin",
    "tilde~/quote'\"/<angle>.txt", "long/" + "/".join(["y" * 199] * 4) + "/" + "z" * 95,
]
META = ObjectMeta(content_type="text/csv", cache_control="max-age=60", content_disposition="attachment; filename=x",
                  content_language="de-DE", user={"owner": "team-a", "x-trace": "abc-123"})


def _body(key: str) -> bytes:
    return b"" if key.endswith("/") or key == "empty.bin" else hashlib.sha256(key.encode()).digest() * 8


def _fill(server: AzuriteServer, container: str, objects: dict[str, tuple[bytes, ObjectMeta, str | None]]) -> None:
    async def go() -> None:
        creds = account_credentials(server.access_key, key=server.secret_key, endpoint=server.blob_endpoint)
        backend = AzureBackend(creds, container)
        try:
            for key, (data, meta, tier) in objects.items():
                await backend.put(key, data, meta, storage_class=tier)
        finally:
            await backend.close()

    asyncio.run(go())


def _argv(server: AzuriteServer, spec: str, dst: Any, bucket: str, state: Path, *extra: str) -> list[str]:
    return [*FERRY, "migrate", spec, f"s3://{bucket}", "--src-endpoint", server.blob_endpoint,
            "--dst-endpoint", dst.endpoint, "--state-dir", str(state), "--json", *extra]


def test_azure_to_s3_copies_every_object_exactly_then_rerun_skips(
    azurite: AzuriteServer, seaweed_b: Any, bucket_factory: Any, tmp_path: Path,
) -> None:
    container = bucket_factory(azurite)
    objects: dict[str, tuple[bytes, ObjectMeta, str | None]] = {
        f"data/{k}": (_body(k), ObjectMeta(content_type="application/x-ferry-test"), None) for k in KEYS}
    # Around a 5 MiB multipart threshold with 5 MiB parts: below, exactly, above, and several parts.
    for size in (5 * MiB - 1, 5 * MiB, 5 * MiB + 1, 11 * MiB + 7):
        objects[f"data/sizes/{size}"] = (os.urandom(size), ObjectMeta(content_type="application/x-ferry-test"), None)
    objects["data/meta.csv"] = (b"a,b\n", META, "IA")
    _fill(azurite, container, objects)
    db = bucket_factory(seaweed_b)
    env = ferry_env(azurite, seaweed_b)
    argv = _argv(azurite, f"azure://{container}/data", seaweed_b, db, tmp_path / "state", "--metadata",
                 "--multipart-threshold", "5", "--part-size", "5", "--consistency-check", "crc64")
    run = run_ferry(argv, env)
    assert run.code == 0, run.stderr
    s = run.summary
    assert (s["total"], s["success"], s["skipped"], s["failed"]) == (len(objects), len(objects), 0, 0)
    assert s["bytes"] == sum(len(b) for b, _, _ in objects.values())

    dst = s3_client(seaweed_b)
    for key, (body, meta, _) in objects.items():
        got = dst.get_object(Bucket=db, Key=key[len("data/"):])
        assert got["Body"].read() == body, key
        assert got["ContentType"] == meta.content_type, key
    full = dst.head_object(Bucket=db, Key="meta.csv")
    assert (full["CacheControl"], full["ContentDisposition"], full["ContentLanguage"]) == (
        "max-age=60", "attachment; filename=x", "de-DE")
    # ferry-crc64: the CRC-64 Ferry computed on the way (--consistency-check crc64) and stored with the copy.
    assert full["Metadata"].pop("ferry-crc64").isdigit()
    assert full["Metadata"] == {"owner": "team-a", "x-trace": "abc-123"}

    again = run_ferry(argv, env)
    assert again.code == 0, again.stderr
    s2 = again.summary
    assert (s2["total"], s2["success"], s2["skipped"], s2["failed"]) == (len(objects), 0, len(objects), 0)
    assert azurite.secret_key not in run.stdout + run.stderr + again.stdout + again.stderr


def test_connection_string_source_and_an_archived_blob_fails_with_its_reason(
    azurite: AzuriteServer, seaweed_b: Any, bucket_factory: Any, tmp_path: Path,
) -> None:
    container = bucket_factory(azurite)
    plain = ObjectMeta(content_type="text/plain")
    _fill(azurite, container, {"frozen": (b"brr", plain, "ARCHIVE"), "warm": (b"ok", plain, None)})
    db = bucket_factory(seaweed_b)
    env = ferry_env(azurite, seaweed_b)
    del env["FERRY_SRC_AK"], env["FERRY_SRC_SK"]
    env["FERRY_SRC_CONNECTION_STRING"] = azurite.connection_string
    argv = [*FERRY, "migrate", f"azure://{container}", f"s3://{db}", "--dst-endpoint", seaweed_b.endpoint,
            "--state-dir", str(tmp_path / "state"), "--json"]
    run = run_ferry(argv, env)
    assert run.code != 0
    s = run.summary
    assert (s["total"], s["success"], s["failed"]) == (2, 1, 1), run.stdout
    report = Path(s["report"]).read_text()
    assert "frozen" in report and "archived; rehydrate it first" in report, report
    assert s3_client(seaweed_b).get_object(Bucket=db, Key="warm")["Body"].read() == b"ok"
    assert azurite.secret_key not in run.stdout + run.stderr

    env["FERRY_SRC_CONNECTION_STRING"] = "AccountName=x;AccountKey=" + azurite.secret_key + ";Bogus=1"
    bad = run_ferry(argv, env)
    assert bad.code == 2 and "malformed Azure connection string" in bad.stderr
    assert azurite.secret_key not in bad.stderr + bad.stdout

