"""A store capped at N requests/s: the rate `ferry migrate` settles at, and how many objects failed (target: none).

    .venv/bin/python bench/throttle.py                      # 3,000 x 1 KiB through a cap of 100 requests/s
    .venv/bin/python bench/throttle.py --objects 2000 --cap 50 --rclone

Two `weed mini` servers run on 127.0.0.1. The source is reached through the project's fault proxy
(tests/faultproxy.py) with one rule, RateCap(N, burst N/2): at most N requests a second pass, the others are
answered 503 SlowDown, as S3 does under a request-rate limit. Every second the proxy's counters are sampled; the
settle rate is the median of the accepted requests per second over the middle of the run (its first 3 s and last
second left out), and "sent" counts refused requests too. Every copy is checked afterwards by listing the
destination. With --rclone, `rclone copy --transfers 32 --checkers 32` (its defaults otherwise: 3 retries of
the whole sync, 10 low-level retries, no --tpslimit) goes through the same cap into a fresh bucket.
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
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ferry.objects import ObjectMeta
from ferry.sandbox import SeaweedServer, find_binary
from ferry.storage.profiles import get_profile
from ferry.storage.s3 import S3Backend

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from faultproxy import FaultProxy, RateCap  # noqa: E402

REGION = "us-east-1"


@dataclass
class Outcome:
    tool: str
    cap: float
    objects: int
    wall_s: float
    exit_code: int
    copied: int
    failed: int
    sent: int
    refused: int
    settle_rate: float
    settle_ratio: float
    sent_rate: float
    per_second: list[int] = field(default_factory=list)  # accepted requests in each second
    sent_per_second: list[int] = field(default_factory=list)


async def _fill(server: SeaweedServer, bucket: str, count: int, size: int) -> None:
    b = S3Backend(server.endpoint, REGION, server.access_key, server.secret_key, bucket,
                  profile=get_profile("seaweedfs"))
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with sem:
            await b.put(f"o/{i:06d}", os.urandom(size), ObjectMeta())

    await asyncio.gather(*(one(i) for i in range(count)))
    await b.close()


async def _count(server: SeaweedServer, bucket: str) -> int:
    b = S3Backend(server.endpoint, REGION, server.access_key, server.secret_key, bucket,
                  profile=get_profile("seaweedfs"))
    n = sum([1 async for _ in b.list()])
    await b.close()
    return n


def _sampled(proxy: FaultProxy, rule: object, argv: list[str], env: dict[str, str]
             ) -> tuple[int, float, list[int], list[int], str, str]:
    """Run `argv`, sampling the rule's counters every second: exit code, wall time, accepted and sent per second."""
    accepted: list[int] = []
    sent: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        last_ok = last_all = 0
        while not stop.wait(1.0):
            matched, fired = rule.matched, rule.fired  # type: ignore[attr-defined]
            accepted.append(matched - fired - last_ok)
            sent.append(matched - last_all)
            last_ok, last_all = matched - fired, matched

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.monotonic()
    sampler.start()
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - started
    stop.set()
    sampler.join()
    return p.returncode, wall, accepted, sent, p.stdout, p.stderr


def _settle(accepted: list[int]) -> float:
    middle = accepted[3:-1] if len(accepted) > 5 else accepted
    return float(statistics.median(middle)) if middle else 0.0


def run(objects: int, size: int, cap: float, with_rclone: bool) -> list[Outcome]:
    out: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="ferry-throttle-") as tmp, SeaweedServer() as src, \
            SeaweedServer() as dst:
        work = Path(tmp)
        sb = src.create_bucket("throttle-src")
        asyncio.run(_fill(src, sb, objects, size))
        proxy = FaultProxy(src.endpoint).start()
        try:
            tools = ["ferry", "rclone"] if with_rclone else ["ferry"]
            for tool in tools:
                db = dst.create_bucket(f"throttle-{tool}")
                rule = proxy.add(RateCap(per_second=cap, burst=max(1.0, cap / 2)))
                env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_", "FERRY_"))}
                if tool == "ferry":
                    env.update(FERRY_SRC_AK=src.access_key, FERRY_SRC_SK=src.secret_key,
                               FERRY_DST_AK=dst.access_key, FERRY_DST_SK=dst.secret_key)
                    argv = [sys.executable, "-m", "ferry.cli", "migrate", f"s3://{sb}", f"s3://{db}",
                            "--src-endpoint", proxy.endpoint, "--dst-endpoint", dst.endpoint,
                            "--state-dir", str(work / "state"), "--json", "--no-progress"]
                else:
                    conf = work / "rclone.conf"
                    conf.touch()
                    env["RCLONE_CONFIG"] = str(conf)
                    for name, server, endpoint in (("SRC", src, proxy.endpoint), ("DST", dst, dst.endpoint)):
                        p = f"RCLONE_CONFIG_{name}_"
                        env.update({p + "TYPE": "s3", p + "PROVIDER": "Other", p + "ENV_AUTH": "false",
                                    p + "ACCESS_KEY_ID": server.access_key,
                                    p + "SECRET_ACCESS_KEY": server.secret_key, p + "ENDPOINT": endpoint,
                                    p + "REGION": REGION, p + "FORCE_PATH_STYLE": "true"})
                    argv = [find_binary("rclone"), "copy", f"src:{sb}", f"dst:{db}", "--transfers", "32",
                            "--checkers", "32"]
                code, wall, accepted, sent, stdout, stderr = _sampled(proxy, rule, argv, env)
                proxy.remove(rule)
                copied = asyncio.run(_count(dst, db))
                settle = _settle(accepted)
                out.append(Outcome(tool, cap, objects, round(wall, 2), code, copied, objects - copied,
                                   rule.matched, rule.fired, settle, round(settle / cap, 3),
                                   round(rule.matched / wall, 1), accepted, sent))
                if code != 0:
                    print(f"{tool} exited {code}: {stderr.strip()[-600:]}", file=sys.stderr)
                elif tool == "ferry":
                    print(f"ferry summary: {stdout.strip().splitlines()[-1]}", file=sys.stderr)
        finally:
            proxy.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=3000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--cap", type=float, default=100.0, help="requests per second the store takes")
    ap.add_argument("--rclone", action="store_true", help="also rclone through the same cap")
    args = ap.parse_args()
    for o in run(args.objects, args.size, args.cap, args.rclone):
        print(f"{o.tool:6s} cap {o.cap:g}/s: settled at {o.settle_rate:g} accepted/s ({o.settle_ratio:.2f} x cap), "
              f"sent {o.sent_rate:g}/s, {o.refused} of {o.sent} refused; {o.copied}/{o.objects} copied, "
              f"{o.failed} failed, exit {o.exit_code}, {o.wall_s:g} s")
        print(json.dumps(asdict(o)))


if __name__ == "__main__":
    main()
