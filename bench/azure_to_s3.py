"""`ferry migrate` from Azure Blob (Azurite) to S3 beside S3 to S3, on the same objects, as ratios.

    .venv/bin/python bench/azure_to_s3.py                     # 2000 x 4 KiB and 8 x 64 MiB, 2 repeats
    .venv/bin/python bench/azure_to_s3.py --small 300 --large 2 --repeat 1   # smoke test

One Azurite and two SeaweedFS servers on 127.0.0.1. The same objects (random bytes) are written to an Azurite
container and to a bucket of the first SeaweedFS; every timed run is `ferry migrate --json` as a child process
into a fresh (primed) bucket of the second SeaweedFS, once from `azure://` and once from `s3://`, alternating
which goes first. Wall and CPU time come from os.wait4 of the child (not its peak RSS: for a child it forks,
wait4 reports the pages of this process, which holds the objects); each copy is checked by the summary's object
and byte counts. Azurite is Node on one thread and SeaweedFS is Go on all cores, so the ratio says how much the
source's server costs as much as how Ferry reads it; the CPU per object is Ferry's own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import uuid
from pathlib import Path

from ferry.objects import ObjectMeta
from ferry.sandbox import AzuriteServer, SeaweedServer
from ferry.storage.azure import AzureBackend
from ferry.storage.azure_auth import account_credentials
from ferry.storage.s3 import S3Backend
from migrate_vs_rclone import Proc, base_env, run_child

MiB = 1024 * 1024
PLAIN = ObjectMeta(content_type="application/octet-stream")


async def fill(azure: AzureBackend, s3: S3Backend, objects: dict[str, bytes]) -> None:
    sem = asyncio.Semaphore(32)

    async def one(key: str, data: bytes) -> None:
        async with sem:
            await asyncio.gather(azure.put(key, data, PLAIN), s3.put(key, data, PLAIN))

    await asyncio.gather(*(one(k, v) for k, v in objects.items()))


def migrate(source: str, dst: SeaweedServer, bucket: str, env: dict[str, str], state: Path,
            *extra: str) -> Proc:
    argv = [sys.executable, "-m", "ferry.cli", "migrate", source, f"s3://{bucket}", "--dst-endpoint", dst.endpoint,
            "--state-dir", str(state), "--json", "--no-progress", *extra]
    return run_child(argv, env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"ferry-bench-azure-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with AzuriteServer() as azurite, SeaweedServer(volume_size_limit_mb=1024) as src, \
            SeaweedServer(volume_size_limit_mb=1024) as dst:
        container = azurite.create_bucket("bench")
        src.create_bucket("bench")
        sets = {"small": {f"small/{i:05d}": os.urandom(4096) for i in range(args.small)},
                "large": {f"large/{i}": os.urandom(64 * MiB) for i in range(args.large)}}

        async def load(sets: dict[str, dict[str, bytes]]) -> None:
            creds = account_credentials(azurite.access_key, key=azurite.secret_key, endpoint=azurite.blob_endpoint)
            a = AzureBackend(creds, container)
            s = S3Backend(src.endpoint, "us-east-1", src.access_key, src.secret_key, "bench", profile="seaweedfs")
            try:
                for objects in sets.values():
                    await fill(a, s, objects)
            finally:
                await a.close()
                await s.close()

        asyncio.run(load(sets))
        expected = {name: (len(objects), sum(map(len, objects.values()))) for name, objects in sets.items()}
        del sets
        env = {**base_env(), "FERRY_DST_AK": dst.access_key, "FERRY_DST_SK": dst.secret_key}
        sources = {
            "azure->s3": ([f"azure://{container}/"], {"FERRY_SRC_AK": azurite.access_key,
                                                       "FERRY_SRC_SK": azurite.secret_key},
                          ["--src-endpoint", azurite.blob_endpoint]),
            "s3->s3": (["s3://bench/"], {"FERRY_SRC_AK": src.access_key, "FERRY_SRC_SK": src.secret_key},
                       ["--src-endpoint", src.endpoint, "--src-profile", "seaweedfs"]),
        }
        for scenario, expect in expected.items():
            for rep in range(args.repeat + 1):  # round 0 warms servers and page cache, untimed
                order = list(sources) if rep % 2 == 0 else list(reversed(sources))
                for name in order:
                    (spec,), keys, extra = sources[name]
                    bucket = f"d-{uuid.uuid4().hex[:12]}"
                    dst.create_bucket(bucket)
                    # Primed: the volume growth SeaweedFS does on a bucket's first write happens before the clock.
                    dst.request("PUT", f"/{bucket}/prime", body=b"x")
                    dst.request("DELETE", f"/{bucket}/prime")
                    proc = migrate(spec + scenario + "/", dst, bucket, {**env, **keys},
                                   work / uuid.uuid4().hex, *extra)
                    summary = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
                    if proc.rc != 0 or (summary.get("success"), summary.get("bytes")) != expect:
                        raise SystemExit(f"{name} {scenario}: rc {proc.rc} {summary} {proc.stderr[-2000:]}")
                    if rep:
                        results.setdefault(scenario, {}).setdefault(name, []).append(
                            {"wall": proc.wall, "cpu": proc.cpu})
        report(results, expected)
    out = Path(__file__).with_name("out")
    out.mkdir(exist_ok=True)
    (out / "azure_to_s3.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0


def report(results: dict[str, dict[str, list[dict[str, float]]]], expected: dict[str, tuple[int, int]]) -> None:
    print(f"\n{'scenario':<7} {'source':<10} {'wall s':>8} {'cpu s':>7} {'rate':>14} {'vs s3->s3':>10}")
    for scenario, by_source in results.items():
        count, size = expected[scenario]
        walls = {n: statistics.median(r["wall"] for r in runs) for n, runs in by_source.items()}
        for name, runs in by_source.items():
            wall, cpu = walls[name], statistics.median(r["cpu"] for r in runs)
            rate = f"{count / wall:,.0f} obj/s" if scenario == "small" else f"{size / MiB / wall:,.0f} MiB/s"
            print(f"{scenario:<7} {name:<10} {wall:>8.2f} {cpu:>7.2f} {rate:>14} "
                  f"{walls['s3->s3'] / wall:>9.2f}x")


if __name__ == "__main__":
    sys.exit(main())
