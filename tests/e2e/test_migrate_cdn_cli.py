"""`ferry migrate` with --src-cdn-domain: the bytes come through the local CDN, checked against the bucket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cli_helpers import ferry_env, migrate_argv, run_ferry, s3_client

from cdn_server import CdnConfig, CdnTestServer

KEY = "cliCdnKey0123456789"
OBJECTS = {"a.txt": b"alpha", "docs/b c+d.bin": b"\x00" * 70_000, "docs/empty": b""}


def _fill(server: Any, bucket: str) -> None:
    client = s3_client(server)
    for key, body in OBJECTS.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


def test_migrate_through_a_signed_cdn(seaweed_a: Any, seaweed_b: Any, bucket_factory: Any, tmp_path: Path) -> None:
    src, dst = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    _fill(seaweed_a, src)
    env = {**ferry_env(seaweed_a, seaweed_b), "FERRY_CDN_ALLOWED_HOSTS": "127.0.0.1"}
    with CdnTestServer(seaweed_a, src, CdnConfig(auth_type="TENCENT_COS_C", key=KEY)) as cdn:
        base = migrate_argv(seaweed_a, f"{src}/docs", seaweed_b, dst, tmp_path / "state", "--src-cdn-domain",
                            cdn.domain, "--src-cdn-protocol", "http", "--src-cdn-auth", "TENCENT_COS_C")
        missing = run_ferry(base, env)
        assert missing.code == 2 and missing.stderr.strip().count("\n") == 0
        assert "FERRY_SRC_CDN_KEY" in missing.stderr
        cdn.tampered["docs/empty"] = b"not empty at the CDN"
        run = run_ferry(base, {**env, "FERRY_SRC_CDN_KEY": KEY})
        assert run.code == 1, run.stderr
        assert (run.summary["success"], run.summary["failed"]) == (1, 1)
        assert KEY not in run.stdout + run.stderr
        cdn.tampered.clear()
        again = run_ferry(base, {**env, "FERRY_SRC_CDN_KEY": KEY})
        assert again.code == 0, again.stderr
        paths = {p.partition("?")[0] for p in cdn.requests}
    client = s3_client(seaweed_b)
    for key in ("docs/b c+d.bin", "docs/empty"):
        assert client.get_object(Bucket=dst, Key=key.removeprefix("docs/"))["Body"].read() == OBJECTS[key]
    assert any(p.endswith("/docs/b%20c%2Bd.bin") for p in paths)  # the CDN path is the full key
