"""`ferry migrate gs://...` end to end: the gcp-storage-emulator as the Google store, a service-account key file
whose token endpoint is FakeGcs's (the emulator has none), SeaweedFS on the other side."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import FERRY, ferry_env, run_ferry, s3_client

from ferry.objects import ObjectMeta
from ferry.storage.gcs import GcsBackend
from gcs_servers import Account, FakeGcs

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def account() -> Account:
    return Account()


@pytest.fixture(scope="module")
def token_server(account: Account) -> Iterator[FakeGcs]:
    with FakeGcs(account) as server:
        yield server


@pytest.fixture
def key_file(tmp_path: Path, account: Account, token_server: FakeGcs) -> Path:
    path = tmp_path / "key.json"
    path.write_text(account.json(token_server.token_uri))
    return path


def _fill(endpoint: str, bucket: str, bodies: dict[str, bytes]) -> None:
    async def go() -> None:
        gcs = GcsBackend(bucket, tokens=None, endpoint=endpoint, connect_timeout=60.0, max_connections=4)
        try:
            for key, body in bodies.items():
                await gcs.put(key, body, ObjectMeta(content_type="image/png", user={"origin": "gcs"}))
        finally:
            await gcs.close()

    asyncio.run(go())


def _read(endpoint: str, bucket: str, keys: list[str]) -> dict[str, bytes]:
    async def go() -> dict[str, bytes]:
        gcs = GcsBackend(bucket, tokens=None, endpoint=endpoint, connect_timeout=60.0, max_connections=4)
        try:
            return {key: await gcs.read(key) for key in keys}
        finally:
            await gcs.close()

    return asyncio.run(go())


# The emulator serves one request at a time with a listen backlog of 5: a few objects in flight, not 64.


def test_a_google_prefix_migrates_to_s3_with_a_key_file(
    gcs_emulator: Any, seaweed_b: Any, bucket_factory: Any, tmp_path: Path, key_file: Path, token_server: FakeGcs,
) -> None:
    bucket = gcs_emulator.create_bucket("cli-source")
    bodies = {f"photos/{i:02d} ü.png": os.urandom(1000 + i) for i in range(20)}
    bodies["photos/big.bin"] = os.urandom(6 * MiB + 3)
    bodies["photos/empty"] = b""
    _fill(gcs_emulator.endpoint, bucket, {**bodies, "other/x": b"left out"})
    db = bucket_factory(seaweed_b)
    env = ferry_env(seaweed_b, seaweed_b)
    env["FERRY_SRC_JSON_AUTH_FILE"] = str(key_file)
    argv = [*FERRY, "migrate", f"gs://{bucket}/photos", f"s3://{db}", "--src-endpoint", gcs_emulator.endpoint,
            "--dst-endpoint", seaweed_b.endpoint, "--state-dir", str(tmp_path / "state"), "--json",
            "--metadata", "--multipart-threshold", "5", "--part-size", "5", "--concurrency", "4"]
    run = run_ferry(argv, env)
    assert run.code == 0, run.stderr
    assert (run.summary["success"], run.summary["failed"]) == (len(bodies), 0)
    dst = s3_client(seaweed_b)
    for key, body in bodies.items():
        got = dst.get_object(Bucket=db, Key=key.removeprefix("photos/"))
        assert hashlib.sha256(got["Body"].read()).digest() == hashlib.sha256(body).digest(), key
        assert got["ContentType"] == "image/png" and got["Metadata"].get("origin") == "gcs", key
    assert token_server.token_requests >= 1  # the key file's JWT was signed and accepted

    again = run_ferry(argv, env)
    assert again.code == 0 and again.summary["skipped"] == len(bodies), again.stderr


def test_s3_migrates_into_a_google_bucket(
    gcs_emulator: Any, seaweed_a: Any, bucket_factory: Any, tmp_path: Path, key_file: Path,
) -> None:
    sb = bucket_factory(seaweed_a)
    bodies = {"a.txt": b"a" * 100, "dir/b.bin": os.urandom(7 * MiB)}  # the large one streamed, no parts
    src = s3_client(seaweed_a)
    for key, body in bodies.items():
        src.put_object(Bucket=sb, Key=key, Body=body)
    bucket = gcs_emulator.create_bucket("cli-destination")
    argv = [*FERRY, "migrate", f"s3://{sb}", f"gs://{bucket}/in", "--src-endpoint", seaweed_a.endpoint,
            "--dst-endpoint", gcs_emulator.endpoint, "--dst-json-auth-file", str(key_file),
            "--state-dir", str(tmp_path / "state"), "--json", "--multipart-threshold", "5", "--concurrency", "4"]
    run = run_ferry(argv, ferry_env(seaweed_a, seaweed_a))
    assert run.code == 0, run.stderr
    assert _read(gcs_emulator.endpoint, bucket, [f"in/{k}" for k in bodies]) == {f"in/{k}": v
                                                                                  for k, v in bodies.items()}


def test_a_missing_or_malformed_key_file_exits_2_with_one_line(
    gcs_emulator: Any, seaweed_b: Any, tmp_path: Path, account: Account,
) -> None:
    env = ferry_env(seaweed_b, seaweed_b)
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    base = [*FERRY, "migrate", "gs://some-bucket", "s3://dst-bucket", "--src-endpoint", gcs_emulator.endpoint,
            "--dst-endpoint", seaweed_b.endpoint, "--state-dir", str(tmp_path / "state")]
    run = run_ferry(base, env)
    assert run.code == 2 and "FERRY_SRC_JSON_AUTH_FILE" in run.stderr and len(run.stderr.splitlines()) == 1
    broken = tmp_path / "broken.json"
    broken.write_text(account.json("https://oauth2.googleapis.com/token").replace('"type": "service_account"',
                                                                                  '"type": "user"'))
    run = run_ferry([*base, "--src-json-auth-file", str(broken)], env)
    assert run.code == 2 and '"type" is not "service_account"' in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "PRIVATE KEY" not in run.stderr
    run = run_ferry([*base, "--src-json-auth-file", str(tmp_path / "nope.json")], env)
    assert run.code == 2 and "cannot read the key file" in run.stderr, run.stderr
