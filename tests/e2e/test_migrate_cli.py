"""`ferry migrate` end to end between two SeaweedFS servers: edge keys, re-runs, metadata, exit codes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import FERRY, ferry_env, migrate_argv, run_ferry, s3_client

MiB = 1024 * 1024
EDGE_KEYS = [
    "plain.txt",
    "unicode/Grüße 日本語 ✓ é.txt",
    "spaces/a b  c.txt",
    "plus/a+b+c.txt",
    "percent/100%25 %.txt",
    "question/why?.txt",
    "hash/#1#.txt",
    "amp/a&b=c;d.txt",
    "dir-marker/",
    "nested/dir-marker/",
    "a/",
    "a/b",
    "a b/c",
    "a-b",
    "empty.bin",
    "long/" + "/".join(["y" * 199] * 4) + "/" + "z" * 95,  # 900 bytes (SeaweedFS caps a path segment)
    "tilde~/quote'\"/<angle>.txt",
]


def _body(key: str) -> bytes:
    if key.endswith("/") or key == "empty.bin":
        return b""
    return hashlib.sha256(key.encode()).digest() * 8


def _all_objects(client: Any, bucket: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = o
    return out


def test_edge_keys_and_multipart_sizes_copied_exactly_then_rerun_skips(
    seaweed_a: Any, seaweed_b: Any, bucket_factory: Any, tmp_path: Path
) -> None:
    src_c, dst_c = s3_client(seaweed_a), s3_client(seaweed_b)
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    bodies: dict[str, bytes] = {k: _body(k) for k in EDGE_KEYS}
    # Around a 5 MiB multipart threshold with 5 MiB parts: below, exactly, above, and several parts.
    for size in (5 * MiB - 1, 5 * MiB, 5 * MiB + 1, 11 * MiB + 7):
        bodies[f"sizes/{size}"] = os.urandom(size)
    for key, body in bodies.items():
        src_c.put_object(Bucket=sb, Key=key, Body=body, ContentType="application/x-ferry-test")
    # A destination object with no source twin must be left alone.
    dst_c.put_object(Bucket=db, Key="dest-only.txt", Body=b"keep me")

    argv = migrate_argv(seaweed_a, sb, seaweed_b, db, tmp_path / "state",
                        "--multipart-threshold", "5", "--part-size", "5")
    run = run_ferry(argv, ferry_env(seaweed_a, seaweed_b))
    assert run.code == 0, run.stderr
    s = run.summary
    assert (s["total"], s["success"], s["skipped"], s["failed"]) == (len(bodies), len(bodies), 0, 0)
    assert s["bytes"] == sum(len(b) for b in bodies.values())

    listed = _all_objects(dst_c, db)
    assert set(listed) == set(bodies) | {"dest-only.txt"}
    for key, body in bodies.items():
        got = dst_c.get_object(Bucket=db, Key=key)
        assert got["Body"].read() == body, key
        assert got["ContentType"] == "application/x-ferry-test", key
    assert dst_c.get_object(Bucket=db, Key="dest-only.txt")["Body"].read() == b"keep me"

    again = run_ferry(argv, ferry_env(seaweed_a, seaweed_b))
    assert again.code == 0, again.stderr
    s2 = again.summary
    assert s2["job_id"] != s["job_id"] and not s2["resumed"]
    assert (s2["total"], s2["success"], s2["skipped"], s2["failed"]) == (len(bodies), 0, len(bodies), 0)


def test_file_beside_directory_of_the_same_name(moto: Any, bucket_factory: Any, tmp_path: Path) -> None:
    """`a`, `a/` and `a/b` cannot coexist on SeaweedFS (a filer); moto keeps them, a local directory too."""
    import asyncio

    from ferry.storage.registry import open_backend

    keys = ["a", "a/", "a/b", "a b/c", "a-b", "a/b/"]
    src_c = s3_client(moto)
    sb = bucket_factory(moto)
    for k in keys:
        src_c.put_object(Bucket=sb, Key=k, Body=_body(k))
    out = tmp_path / "out"
    out.mkdir()
    argv = [*FERRY, "migrate", f"s3://{sb}", str(out), "--src-endpoint", moto.endpoint,
            "--state-dir", str(tmp_path / "state"), "--json"]
    run = run_ferry(argv, ferry_env(moto, moto))
    assert run.code == 0, run.stderr
    assert run.summary["success"] == len(keys)

    async def read_back() -> dict[str, bytes]:
        b = open_backend(str(out))
        return {o.key: (await b.read_object(o.key))[1] async for o in b.list()}

    assert asyncio.run(read_back()) == {k: _body(k) for k in keys}


def test_changed_source_object_is_recopied(seaweed_a: Any, seaweed_b: Any, bucket_factory: Any,
                                           tmp_path: Path) -> None:
    src_c = s3_client(seaweed_a)
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    src_c.put_object(Bucket=sb, Key="k", Body=b"one")
    src_c.put_object(Bucket=sb, Key="same", Body=b"same")
    argv = migrate_argv(seaweed_a, sb, seaweed_b, db, tmp_path)
    assert run_ferry(argv, ferry_env(seaweed_a, seaweed_b)).code == 0
    src_c.put_object(Bucket=sb, Key="k", Body=b"three")
    run = run_ferry(argv, ferry_env(seaweed_a, seaweed_b))
    assert run.code == 0, run.stderr
    assert (run.summary["success"], run.summary["skipped"]) == (1, 1)
    assert s3_client(seaweed_b).get_object(Bucket=db, Key="k")["Body"].read() == b"three"


def test_metadata_only_with_flag(seaweed_a: Any, seaweed_b: Any, bucket_factory: Any, tmp_path: Path) -> None:
    src_c, dst_c = s3_client(seaweed_a), s3_client(seaweed_b)
    sb = bucket_factory(seaweed_a)
    extra = {"CacheControl": "max-age=60", "ContentDisposition": "attachment; filename=x.txt",
             "ContentEncoding": "identity", "ContentLanguage": "de-DE", "Metadata": {"owner": "team-a"}}
    src_c.put_object(Bucket=sb, Key="m.txt", Body=b"meta", ContentType="text/plain", **extra)

    plain_db, meta_db = bucket_factory(seaweed_b), bucket_factory(seaweed_b)
    env = ferry_env(seaweed_a, seaweed_b)
    assert run_ferry(migrate_argv(seaweed_a, sb, seaweed_b, plain_db, tmp_path / "a"), env).code == 0
    assert run_ferry(migrate_argv(seaweed_a, sb, seaweed_b, meta_db, tmp_path / "b", "--metadata"), env).code == 0

    plain = dst_c.head_object(Bucket=plain_db, Key="m.txt")
    assert plain["ContentType"] == "text/plain"
    assert "CacheControl" not in plain and plain.get("Metadata", {}).get("owner") is None
    full = dst_c.head_object(Bucket=meta_db, Key="m.txt")
    assert full["ContentType"] == "text/plain"
    assert full["CacheControl"] == "max-age=60"
    assert full["ContentDisposition"] == "attachment; filename=x.txt"
    assert full["ContentLanguage"] == "de-DE"
    assert full["Metadata"]["owner"] == "team-a"


def test_crc64_check_stores_crc_on_destination(seaweed_a: Any, seaweed_b: Any, bucket_factory: Any,
                                               tmp_path: Path) -> None:
    import asyncio

    from ferry.engine.checksums import crc64
    from ferry.storage.registry import open_backend

    src_c = s3_client(seaweed_a)
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    body = os.urandom(100_000)
    src_c.put_object(Bucket=sb, Key="c.bin", Body=body)
    run = run_ferry(migrate_argv(seaweed_a, sb, seaweed_b, db, tmp_path, "--consistency-check", "crc64"),
                    ferry_env(seaweed_a, seaweed_b))
    assert run.code == 0, run.stderr

    async def head() -> int | None:
        b = open_backend(f"s3://{db}", endpoint=seaweed_b.endpoint, region="us-east-1",
                         access_key=seaweed_b.access_key, secret_key=seaweed_b.secret_key, profile=None)
        try:
            return (await b.head("c.bin")).crc64
        finally:
            await b.close()

    assert asyncio.run(head()) == crc64(body)


@pytest.mark.parametrize("check", ["size_last_modified", "crc64"])
def test_mid_size_objects_are_streamed_and_verified(seaweed_a: Any, seaweed_b: Any, bucket_factory: Any,
                                                    tmp_path: Path, check: str) -> None:
    """Around the 16 MiB stream threshold with the default settings: below it an object is read whole,
    from it up streamed into one PUT that the destination checks against the source's MD5 where it has one."""
    import asyncio

    from ferry.engine.checksums import crc64
    from ferry.storage.registry import open_backend

    src_c, dst_c = s3_client(seaweed_a), s3_client(seaweed_b)
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    sizes = (16 * MiB - 1, 16 * MiB, 24 * MiB + 3) if check == "size_last_modified" else (17 * MiB,)
    bodies = {f"mid/{size}": os.urandom(size) for size in sizes}
    for key, body in bodies.items():
        src_c.put_object(Bucket=sb, Key=key, Body=body, ContentType="application/x-mid")
    # Uploaded in parts, so its ETag is no MD5: under crc64 the destination checks a trailing CRC32C instead,
    # under size_last_modified the size is checked.
    key = "mid/multipart-source"
    bodies[key] = os.urandom(18 * MiB + 5)
    upload = src_c.create_multipart_upload(Bucket=sb, Key=key, ContentType="application/x-mid")["UploadId"]
    parts = []
    for n, at in enumerate(range(0, len(bodies[key]), 6 * MiB), start=1):
        etag = src_c.upload_part(Bucket=sb, Key=key, UploadId=upload, PartNumber=n,
                                 Body=bodies[key][at:at + 6 * MiB])["ETag"]
        parts.append({"PartNumber": n, "ETag": etag})
    src_c.complete_multipart_upload(Bucket=sb, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
    assert "-" in src_c.head_object(Bucket=sb, Key=key)["ETag"]
    run = run_ferry(migrate_argv(seaweed_a, sb, seaweed_b, db, tmp_path, "--consistency-check", check),
                    ferry_env(seaweed_a, seaweed_b))
    assert run.code == 0, run.stderr
    assert (run.summary["success"], run.summary["failed"]) == (len(bodies), 0)

    async def crcs() -> dict[str, int | None]:
        b = open_backend(f"s3://{db}", endpoint=seaweed_b.endpoint, region="us-east-1",
                         access_key=seaweed_b.access_key, secret_key=seaweed_b.secret_key, profile=None)
        try:
            return {key: (await b.head(key)).crc64 for key in bodies}
        finally:
            await b.close()

    stored = asyncio.run(crcs())
    for key, body in bodies.items():
        got = dst_c.get_object(Bucket=db, Key=key)
        assert got["Body"].read() == body, key
        assert got["ContentType"] == "application/x-mid"
        assert got["ETag"].strip('"') == hashlib.md5(body).hexdigest()
        assert stored[key] == (crc64(body) if check == "crc64" else None)


def test_bad_usage_and_unreachable_endpoints_exit_2_with_one_line(
    seaweed_a: Any, seaweed_b: Any, bucket_factory: Any, tmp_path: Path
) -> None:
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    env = ferry_env(seaweed_a, seaweed_b)
    cases = [
        migrate_argv(seaweed_a, sb, seaweed_b, db, tmp_path, "--overwrite", "SOMETIMES"),
        migrate_argv(seaweed_a, sb, seaweed_b, db, tmp_path, "--consistency-check", "md5"),
        migrate_argv(seaweed_a, sb, seaweed_b, db, tmp_path, "--concurrency", "0"),
        migrate_argv(seaweed_a, "no-such-bucket-ferry", seaweed_b, db, tmp_path),
        [*migrate_argv(seaweed_a, sb, seaweed_b, db, tmp_path), "--src-endpoint", "http://127.0.0.1:9"],
        ["ferry-unknown-arg"],
    ]
    for argv in cases:
        if argv == ["ferry-unknown-arg"]:
            argv = [*migrate_argv(seaweed_a, sb, seaweed_b, db, tmp_path), "--bogus"]
        run = run_ferry(argv, env, timeout=120)
        assert run.code == 2, (argv, run.stdout, run.stderr)
        lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("ferry: error:"), run.stderr
        assert "Traceback" not in run.stderr


def test_wrong_secret_exits_2_without_leaking_it(seaweed_a: Any, seaweed_b: Any, bucket_factory: Any,
                                                  tmp_path: Path) -> None:
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    env = ferry_env(seaweed_a, seaweed_b)
    env["FERRY_SRC_SK"] = "WrongSecretKeyThatMustNotLeak0123456789"
    run = run_ferry(migrate_argv(seaweed_a, sb, seaweed_b, db, tmp_path), env, timeout=120)
    assert run.code == 2, run.stderr
    assert "WrongSecretKeyThatMustNotLeak" not in run.stderr + run.stdout
    assert seaweed_b.secret_key not in run.stderr + run.stdout
    assert len(run.stderr.strip().splitlines()) == 1


def test_failed_objects_exit_1_with_report(moto: Any, seaweed_b: Any, bucket_factory: Any, tmp_path: Path) -> None:
    src_c = s3_client(moto)
    sb, db = bucket_factory(moto), bucket_factory(seaweed_b)
    src_c.put_object(Bucket=sb, Key="ok.txt", Body=b"fine")
    src_c.put_object(Bucket=sb, Key="cold.txt", Body=b"archived", StorageClass="GLACIER")
    run = run_ferry(migrate_argv(moto, sb, seaweed_b, db, tmp_path), ferry_env(moto, seaweed_b))
    assert run.code == 1, run.stderr
    s = run.summary
    assert (s["total"], s["success"], s["failed"]) == (2, 1, 1)
    lines = [json.loads(x) for x in Path(s["report"]).read_text().splitlines()]
    assert [x["key"] for x in lines] == ["cold.txt"]
    assert "archived" in lines[0]["reason"] and "--restore" in lines[0]["reason"]
    # With --restore the archived object is restored (moto restores at once), then copied.
    run = run_ferry([*migrate_argv(moto, sb, seaweed_b, db, tmp_path), "--restore"], ferry_env(moto, seaweed_b))
    assert run.code == 0, run.stderr
    assert (run.summary["success"], run.summary["skipped"], run.summary["restoring"]) == (1, 1, 0)
    assert s3_client(seaweed_b).get_object(Bucket=db, Key="cold.txt")["Body"].read() == b"archived"


def test_storage_class_of_written_objects(seaweed_a: Any, moto: Any, bucket_factory: Any, tmp_path: Path) -> None:
    src_c = s3_client(seaweed_a)
    sb, db = bucket_factory(seaweed_a), bucket_factory(moto)
    src_c.put_object(Bucket=sb, Key="cold/1.txt", Body=b"one")
    argv = [*FERRY, "migrate", f"s3://{sb}", f"s3://{db}", "--src-endpoint", seaweed_a.endpoint,
            "--dst-endpoint", moto.endpoint, "--dst-profile", "aws", "--storage-class", "STANDARD_IA",
            "--state-dir", str(tmp_path), "--json"]
    run = run_ferry(argv, ferry_env(seaweed_a, moto))
    assert run.code == 0, run.stderr
    head = s3_client(moto).head_object(Bucket=db, Key="cold/1.txt")
    assert head["StorageClass"] == "STANDARD_IA"


def test_destination_prefix_is_a_folder(seaweed_a: Any, seaweed_b: Any, bucket_factory: Any,
                                        tmp_path: Path) -> None:
    """`s3://backup/all` means the folder `all/`, as in `aws s3 sync` and rclone: keys are not glued onto it."""
    src_c, dst_c = s3_client(seaweed_a), s3_client(seaweed_b)
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    src_c.put_object(Bucket=sb, Key="2024/img.jpg", Body=b"jpeg")
    run = run_ferry(migrate_argv(seaweed_a, sb, seaweed_b, f"{db}/all", tmp_path), ferry_env(seaweed_a, seaweed_b))
    assert run.code == 0, run.stderr
    assert set(_all_objects(dst_c, db)) == {"all/2024/img.jpg"}


def test_source_prefix_without_slash_is_a_folder(seaweed_a: Any, seaweed_b: Any, bucket_factory: Any,
                                                 tmp_path: Path) -> None:
    """`s3://photos/docs` is the folder `docs/` (not `docs2/`), and keys come out relative to it."""
    src_c, dst_c = s3_client(seaweed_a), s3_client(seaweed_b)
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    for key in ("docs/doc0.txt", "docs/sub/doc1.txt", "docs2/x", "docsy.txt"):
        src_c.put_object(Bucket=sb, Key=key, Body=key.encode())
    run = run_ferry(migrate_argv(seaweed_a, f"{sb}/docs", seaweed_b, f"{db}/js", tmp_path),
                    ferry_env(seaweed_a, seaweed_b))
    assert run.code == 0, run.stderr
    assert run.summary["total"] == 2
    assert set(_all_objects(dst_c, db)) == {"js/doc0.txt", "js/sub/doc1.txt"}
    # With the slash written out, the same job: nothing left to copy.
    again = run_ferry(migrate_argv(seaweed_a, f"{sb}/docs/", seaweed_b, f"{db}/js/", tmp_path),
                      ferry_env(seaweed_a, seaweed_b))
    assert again.code == 0, again.stderr
    assert (again.summary["success"], again.summary["skipped"]) == (0, 2)


def test_read_only_destination_ends_the_run_with_exit_2_and_the_reason(
    seaweed_a: Any, seaweed_b: Any, bucket_factory: Any, tmp_path: Path
) -> None:
    """Keys that may read the destination but not write it: no retrying, no "run it again", but exit 2 and a
    reason that names the destination and what to fix."""
    src_c = s3_client(seaweed_a)
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    for i in range(50):
        src_c.put_object(Bucket=sb, Key=f"k{i:02d}", Body=b"data")
    env = ferry_env(seaweed_a, seaweed_b)
    env.update(FERRY_DST_AK=seaweed_b.read_only_key, FERRY_DST_SK=seaweed_b.read_only_secret)
    run = run_ferry(migrate_argv(seaweed_a, sb, seaweed_b, db, tmp_path), env, timeout=120)
    assert run.code == 2, (run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("ferry: error: destination") and "AccessDenied" in lines[0], lines[0]
    assert "FERRY_DST_AK" in lines[0] and "again" not in lines[0], lines[0]
    assert seaweed_b.read_only_secret not in run.stderr + run.stdout
