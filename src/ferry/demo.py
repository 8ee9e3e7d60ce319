"""`ferry demo`: a real migration between two sandbox SeaweedFS servers that it starts and stops itself."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile

from ferry.objects import ObjectMeta
from ferry.sandbox import SeaweedServer

# Keys that break careless tools, mixed into the sample data.
EDGE_KEYS = [
    "unicode/Grüße 日本語 ✓.txt", "spaces/a b c.txt", "plus/a+b.txt", "percent/100%.txt",
    "question/why?.txt", "hash/#1.txt", "dir-marker/", "a/b", "a b/c", "a-b", "empty.bin",
]


async def _populate(endpoint: str, ak: str, sk: str, bucket: str, objects: int) -> None:
    from ferry.storage.registry import open_backend

    src = open_backend(f"s3://{bucket}", endpoint=endpoint, region="us-east-1", access_key=ak, secret_key=sk,
                       profile="seaweedfs")
    sem = asyncio.Semaphore(32)

    async def put(key: str, data: bytes) -> None:
        async with sem:
            await src.put(key, data, ObjectMeta(content_type="application/octet-stream"))

    jobs = [put(f"small/{i:06d}.bin", os.urandom(4096)) for i in range(objects)]
    jobs += [put(k, b"" if k.endswith("/") or k == "empty.bin" else k.encode()) for k in EDGE_KEYS]
    jobs += [put(f"large/{i}.bin", os.urandom(40 * 1024 * 1024)) for i in range(2)]
    await asyncio.gather(*jobs)
    await src.close()


def run_demo(objects: int = 2000, as_json: bool = False) -> int:
    """Start two servers, fill the source, migrate with the progress bar, then re-run (nothing to copy)."""
    from ferry.cli import main

    print("starting two sandbox S3 servers (SeaweedFS)...", file=sys.stderr)
    with SeaweedServer() as a, SeaweedServer() as b, tempfile.TemporaryDirectory(prefix="ferry-demo-") as state:
        a.create_bucket("source")
        b.create_bucket("destination")
        print(f"writing {objects} small objects, {len(EDGE_KEYS)} edge-case keys and 2 x 40 MiB objects "
              f"to {a.endpoint}/source ...", file=sys.stderr)
        asyncio.run(_populate(a.endpoint, a.access_key, a.secret_key, "source", objects))
        env = {"FERRY_SRC_AK": a.access_key, "FERRY_SRC_SK": a.secret_key,
               "FERRY_DST_AK": b.access_key, "FERRY_DST_SK": b.secret_key}
        os.environ.update(env)
        argv = ["migrate", "s3://source", "s3://destination", "--src-endpoint", a.endpoint,
                "--dst-endpoint", b.endpoint, "--src-profile", "seaweedfs", "--dst-profile", "seaweedfs",
                "--state-dir", state]
        print(f"migrating to {b.endpoint}/destination ...", file=sys.stderr)
        code = main([*argv, "--json"] if as_json else argv)
        if code != 0:
            return code
        print("running the same migration again: everything is verified in place, nothing is copied...",
              file=sys.stderr)
        code = main([*argv, "--json"] if as_json else argv)
        if as_json:
            sys.stdout.flush()
        return code


if __name__ == "__main__":
    sys.exit(run_demo(json.loads(sys.argv[1]) if len(sys.argv) > 1 else 2000))
