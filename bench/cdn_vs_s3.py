"""CDN -> S3 throughput beside S3 -> S3 on the same objects, between two local SeaweedFS servers.

    .venv/bin/python bench/cdn_vs_s3.py                  # 2 repeats of every source kind
    .venv/bin/python bench/cdn_vs_s3.py --repeat 1 --small 500 --large 2   # smoke test

Each run is ferry.service.transfers.run_migration in this process, into a fresh destination bucket, from:
  s3         the source bucket through its S3 API (the baseline);
  cdn-none   CDN mode (bucket listing and HEAD, bytes by plain GET, checked against the bucket) with SeaweedFS's
             own filer HTTP server as the "CDN" (a Go server: what Ferry's CDN path costs, not the CDN's);
  cdn-signed CDN mode with ALIYUN_OSS_C signing through tests/cdn_server.py (aiohttp, in a child process):
             verifies each signature and proxies to the origin bucket, so it adds a Python hop per request.
Data sets: `small` objects of 4 KiB and `large` objects of 32 MiB (streamed into one PUT each). Printed as
objects/s and MiB/s with the ratio to s3; JSON in bench/out/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ferry.db.database import open_database
from ferry.db.job_repo import JobRepo
from ferry.engine.pipeline import TransferOptions
from ferry.objects import ObjectMeta
from ferry.sandbox import SeaweedServer
from ferry.service.transfers import run_migration
from ferry.storage.base import Backend
from ferry.storage.cdn_signing import CdnCredentials
from ferry.storage.cdn_source import CdnBackend, CdnSite
from ferry.storage.s3 import S3Backend

KiB, MiB = 1024, 1024 * 1024
REPO = Path(__file__).resolve().parent.parent
OUT_DIR = Path(__file__).resolve().parent / "out"
CDN_KEY = "benchcdnkey0123456789"


def _s3(server: SeaweedServer, bucket: str) -> S3Backend:
    return S3Backend(server.endpoint, server.region, server.access_key, server.secret_key, bucket)


async def _fill(server: SeaweedServer, bucket: str, count: int, size: int) -> int:
    store = _s3(server, bucket)
    gate = asyncio.Semaphore(32)
    body = os.urandom(size)

    async def one(i: int) -> None:
        async with gate:
            # Each object differs in its first bytes: no store can deduplicate them.
            await store.put(f"d{i % 16:02d}/obj-{i:06d}.bin", i.to_bytes(8, "big") + body[8:], ObjectMeta())

    try:
        await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        await store.close()
    return count * size


def _serve_fake_cdn(origin: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    code = f"""
import sys, time, types
sys.path[:0] = [{str(REPO / 'tests')!r}, {str(REPO / 'src')!r}]
from cdn_server import CdnConfig, CdnTestServer
o = types.SimpleNamespace(**{origin!r})
s = CdnTestServer(o, o.bucket, CdnConfig(auth_type="ALIYUN_OSS_C", key={CDN_KEY!r})).start()
print(s.domain, flush=True)
time.sleep(10**6)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def _source(kind: str, src: SeaweedServer, bucket: str, fake_domain: str) -> Backend:
    inner = _s3(src, bucket)
    if kind == "s3":
        return inner
    if kind == "cdn-none":
        filer = f"127.0.0.1:{src._ports[2]}"  # the filer serves /buckets/<bucket>/<key>
        return CdnBackend(inner, CdnSite("http", filer, "NONE"), allowed_hosts=frozenset({"127.0.0.1"}),
                          key_prefix=f"buckets/{bucket}/")
    return CdnBackend(inner, CdnSite("http", fake_domain, "ALIYUN_OSS_C", CdnCredentials(key=CDN_KEY)),
                      allowed_hosts=frozenset({"127.0.0.1"}))


async def _run(kind: str, src: SeaweedServer, dst: SeaweedServer, bucket: str, fake: str, tmp: Path,
               n: int) -> float:
    target = dst.create_bucket(f"dst-{kind}-{os.urandom(4).hex()}")
    source = _source(kind, src, bucket, fake)
    sink = _s3(dst, target)
    repo = JobRepo(open_database(f"sqlite:///{tmp / f'{target}.db'}"))
    started = time.perf_counter()
    summary = await run_migration(source, sink, repo, TransferOptions(), report_dir=tmp / "reports", spec={})
    elapsed = time.perf_counter() - started
    await source.close()
    await sink.close()
    assert (summary.success, summary.failed) == (n, 0), summary
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--small", type=int, default=2000, help="objects of 4 KiB")
    parser.add_argument("--large", type=int, default=6, help="objects of 32 MiB")
    args = parser.parse_args()
    kinds = ("s3", "cdn-none", "cdn-signed")
    results: dict[str, dict[str, list[float]]] = {}
    with SeaweedServer(volume_size_limit_mb=1024) as src, SeaweedServer(volume_size_limit_mb=1024) as dst, \
            tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        sets = {"small": (src.create_bucket("bench-small"), args.small, 4 * KiB),
                "large": (src.create_bucket("bench-large"), args.large, 32 * MiB)}
        for bucket, count, size in sets.values():
            asyncio.run(_fill(src, bucket, count, size))
        fakes = {}
        for name, (bucket, _, _) in sets.items():
            fakes[name] = _serve_fake_cdn({"endpoint": src.endpoint, "region": src.region, "bucket": bucket,
                                           "access_key": src.access_key, "secret_key": src.secret_key})
        try:
            for name, (bucket, count, _) in sets.items():  # untimed warm-up of every path
                for kind in kinds:
                    asyncio.run(_run(kind, src, dst, bucket, fakes[name][1], tmp, count))
            for r in range(args.repeat):
                for name, (bucket, count, _) in sets.items():
                    for kind in kinds[r % 3:] + kinds[:r % 3]:  # rotated between repeats
                        t = asyncio.run(_run(kind, src, dst, bucket, fakes[name][1], tmp, count))
                        results.setdefault(name, {}).setdefault(kind, []).append(t)
        finally:
            for proc, _ in fakes.values():
                proc.kill()
    report: dict[str, Any] = {}
    for name, (_, count, size) in sets.items():
        base = statistics.median(results[name]["s3"])
        for kind in kinds:
            t = statistics.median(results[name][kind])
            row = {"seconds": round(t, 3), "objects_per_s": round(count / t, 1),
                   "mib_per_s": round(count * size / MiB / t, 1), "vs_s3": round(base / t, 2)}
            report[f"{name}/{kind}"] = row
            print(f"{name:6} {kind:11} {row['seconds']:8.2f} s {row['objects_per_s']:9.1f} obj/s "
                  f"{row['mib_per_s']:8.1f} MiB/s  x{row['vs_s3']:.2f} of s3")
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "cdn_vs_s3.json").write_text(json.dumps({"args": vars(args), "results": report}, indent=2))


if __name__ == "__main__":
    main()
