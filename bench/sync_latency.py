"""Sync-event latency on loopback: N events/s of small objects, accepted -> visible and verified in the destination.

    .venv/bin/python bench/sync_latency.py                       # 100 events/s of 4 KiB for 60 s
    .venv/bin/python bench/sync_latency.py --duration 20 --rate 50 --json

Starts two SeaweedFS servers and a Ferry server in its own process (`ferry serve`, or with `--server builtin`
a minimal API+sync-workers process, for checkouts without `ferry serve`), creates a sync task, then for each
event: PUTs a fresh object to the source bucket and posts its key with create_sync_events (signed
SDK-HMAC-SHA256 requests over one keep-alive connection pool, as the SDK would). A watcher lists the
destination every 20 ms and timestamps each key when it appears with the right size (the worker verifies a
small object by the PUT's own answer, its ETag against the MD5 of the bytes sent, so "appeared" is "verified").

With FERRY_BENCH_NO_WORKERS=1 and `--server builtin` the workers are not started: the API alone is measured.

Reported: latency accepted -> in destination (p50/p90/p99/max), API latency of create_sync_events
(p50/p99/max) as the client saw it and the part spent inside the server (its Server-Timing header; the rest
is the network, the client's own event loop and waiting for a core), achieved event rate, keys missing at
the end, the server's CPU time per event and the machine's load average. Targets: p50 < 0.5 s, p99 < 2 s,
API p99 < 50 ms. Two weed servers, the Ferry server and this load generator share the machine's cores, so
compare figures from one machine only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from ferry.objects import ObjectMeta
from ferry.sandbox import SeaweedServer
from ferry.storage.s3 import S3Backend
from oms_bench import DST_REGION, SRC_REGION, OmsSigner, cpu_seconds, oms, pct, start_server

# -- the server under test ---------------------------------------------------------------------------------------

# Events only: no reconciliation pass competes with them during the run.
_EVENTS_ONLY = {"FERRY_SYNC_RECONCILE_SECONDS": "86400"}


def _builtin_argv(port: int, state: Path) -> list[str]:
    return [sys.executable, __file__, "_serve", "--port", str(port), "--state", str(state)]


def _builtin_server(port: int, state: Path) -> None:
    """Child-process mode: the API with sync tasks and their workers, keys from FERRY_BENCH_* variables."""
    import uvicorn

    from ferry.api.app import create_app
    from ferry.api.auth import InMemoryCredentialStore
    from ferry.api.deps import ApiServices
    from ferry.db.database import open_database
    from ferry.secrets import SecretBox
    from ferry.service.sync import build_sync_service

    store = InMemoryCredentialStore()
    store.add_access_key(os.environ["FERRY_BENCH_AK"], os.environ["FERRY_BENCH_SK"], os.environ["FERRY_BENCH_PROJECT"])
    engine = open_database(f"sqlite:///{state / 'ferry.db'}")
    ctx, background = build_sync_service(engine, SecretBox.load(state))
    app = create_app(ApiServices(credentials=store, record_privacy_agreement=lambda _p: None, sync=ctx))
    if not os.environ.get("FERRY_BENCH_NO_WORKERS"):
        background.start()
    try:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")
    finally:
        background.stop()


# -- the run -----------------------------------------------------------------------------------------------------

@dataclass
class Tally:
    accepted: dict[str, float] = field(default_factory=dict)  # key -> monotonic time the 200 arrived
    seen: dict[str, float] = field(default_factory=dict)  # key -> monotonic time it was in the destination
    api: list[float] = field(default_factory=list)
    api_server: list[float] = field(default_factory=list)  # the server's own part (Server-Timing)
    errors: list[str] = field(default_factory=list)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with SeaweedServer() as src_server, SeaweedServer() as dst_server:
        src_bucket = src_server.create_bucket(f"bench-src-{uuid.uuid4().hex[:8]}")
        dst_bucket = dst_server.create_bucket(f"bench-dst-{uuid.uuid4().hex[:8]}")
        server = start_server(src_server, dst_server, env=_EVENTS_ONLY,
                              builtin=_builtin_argv if args.server == "builtin" else None)
        src = S3Backend(src_server.endpoint, src_server.region, src_server.access_key, src_server.secret_key,
                        src_bucket)
        dst = S3Backend(dst_server.endpoint, dst_server.region, dst_server.access_key, dst_server.secret_key,
                        dst_bucket)
        tally = Tally()
        try:
            signer = OmsSigner(server)
            connector = aiohttp.TCPConnector(limit=64)
            async with aiohttp.ClientSession(connector=connector) as session:
                status, body = await oms(session, signer, "POST", "/v2/{project_id}/sync-tasks", {
                    "src_cloud_type": "AWS", "src_region": SRC_REGION, "src_bucket": src_bucket,
                    "src_ak": src_server.access_key, "src_sk": src_server.secret_key,
                    "dst_ak": dst_server.access_key, "dst_sk": dst_server.secret_key,
                    "dst_region": DST_REGION, "dst_bucket": dst_bucket,
                })
                if status != 200:
                    raise SystemExit(f"create_sync_task answered {status}: {body}")
                task_id = body["sync_task_id"]
                # Warm both stores' first-write volume growth, so the first events do not pay for it.
                for i in range(20):
                    await src.put(f"warm/{i}", b"w" * args.size, ObjectMeta())
                    await dst.put(f"warm/{i}", b"w" * args.size, ObjectMeta())
                await asyncio.sleep(1.0)
                cpu0, load0 = cpu_seconds(server.proc.pid), os.getloadavg()[0]
                result = await _drive(args, session, signer, task_id, src, dst, tally)
                cpu = cpu_seconds(server.proc.pid) - cpu0
                # How much CPU the server spent per event, and how busy the machine was: on a shared
                # machine the latency figures mean little without these two.
                result["server_cpu_ms_per_event"] = round(1000 * cpu / max(1, result["accepted"]), 2)
                result["load_average_1m"] = [round(load0, 1), round(os.getloadavg()[0], 1)]
                await asyncio.sleep(1.0)  # outcomes are recorded in batches just after the copies
                status, shown = await oms(session, signer, "GET", f"/v2/{{project_id}}/sync-tasks/{task_id}",
                                          query=f"query_time={int(time.time() * 1000)}")
                result["server_counters"] = {k: v for k, v in (shown or {}).items() if k.startswith("monthly_")}
                return result
        finally:
            await src.close()
            await dst.close()
            server.stop()


async def _drive(args: argparse.Namespace, session: aiohttp.ClientSession, signer: OmsSigner, task_id: str,
                 src: S3Backend, dst: S3Backend, tally: Tally) -> dict[str, Any]:
    payload = os.urandom(args.size)
    total = int(args.rate * args.duration)
    interval = 1.0 / args.rate
    pending_prefixes: dict[str, set[str]] = {}
    producing = True

    async def one(i: int) -> None:
        second = i // max(1, int(args.rate))
        key = f"bench/{second:05d}/{i:07d}.bin"
        try:
            await src.put(key, payload, ObjectMeta(content_type="application/octet-stream"))
            started = time.monotonic()
            status, body = await oms(session, signer, "POST", f"/v2/{{project_id}}/sync-tasks/{task_id}/events",
                                     {"object_keys": [quote(key, safe="")]}, timings=tally.api_server)
            done = time.monotonic()
            if status != 200:
                tally.errors.append(f"{status} {body}")
                return
            tally.api.append(done - started)
            tally.accepted[key] = done
            pending_prefixes.setdefault(f"bench/{second:05d}/", set()).add(key)
        except Exception as exc:
            tally.errors.append(f"{type(exc).__name__}: {exc}")

    async def watch() -> None:
        while producing or any(pending_prefixes.values()):
            for prefix, keys in list(pending_prefixes.items()):
                if not keys:
                    pending_prefixes.pop(prefix, None)
                    continue
                async for info in dst.list(prefix):
                    if info.key in keys and info.size == args.size:
                        tally.seen.setdefault(info.key, time.monotonic())
                        keys.discard(info.key)
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    jobs: set[asyncio.Task[None]] = set()
    t0 = time.monotonic()
    for i in range(total):
        # Open loop: events go out on schedule whatever the latency of earlier ones.
        delay = t0 + i * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        job = asyncio.create_task(one(i))
        jobs.add(job)
        job.add_done_callback(jobs.discard)
    await asyncio.gather(*jobs)
    produced_in = time.monotonic() - t0
    producing = False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(watcher, args.drain)
    latencies = [tally.seen[k] - t for k, t in tally.accepted.items() if k in tally.seen]
    missing = len(tally.accepted) - len(latencies)
    return {
        "events": total, "accepted": len(tally.accepted), "errors": len(tally.errors),
        "first_errors": tally.errors[:3], "missing_after_drain": missing,
        "offered_rate": args.rate, "achieved_rate": round(len(tally.accepted) / produced_in, 1),
        "duration_s": round(produced_in, 1), "object_bytes": args.size,
        "latency_s": {
            "p50": round(pct(latencies, 50), 4), "p90": round(pct(latencies, 90), 4),
            "p99": round(pct(latencies, 99), 4), "max": round(max(latencies, default=float("nan")), 4),
            "mean": round(statistics.fmean(latencies), 4) if latencies else None,
        },
        "api_s": {
            "p50": round(pct(tally.api, 50), 4), "p99": round(pct(tally.api, 99), 4),
            "max": round(max(tally.api, default=float("nan")), 4),
        },
        "api_server_s": {
            "p50": round(pct(tally.api_server, 50), 4), "p99": round(pct(tally.api_server, 99), 4),
            "max": round(max(tally.api_server, default=float("nan")), 4),
        },
        "targets": {"latency_p50_s": 0.5, "latency_p99_s": 2.0, "api_p99_s": 0.05},
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        p = argparse.ArgumentParser()
        p.add_argument("_serve")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--state", type=Path, required=True)
        a = p.parse_args()
        _builtin_server(a.port, a.state)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100.0, help="events per second (default 100)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--size", type=int, default=4096, help="object size in bytes (default 4096)")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for stragglers (default 30)")
    parser.add_argument("--server", choices=("serve", "builtin"), default="serve",
                        help="`ferry serve` (default) or a minimal API + sync workers process")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result))
        return
    lat, api = result["latency_s"], result["api_s"]
    print(f"{result['accepted']}/{result['events']} events accepted at {result['achieved_rate']}/s "
          f"over {result['duration_s']} s ({result['object_bytes']} B objects), {result['errors']} errors, "
          f"{result['missing_after_drain']} missing after drain")
    print(f"accepted -> in destination: p50 {lat['p50'] * 1000:.0f} ms, p90 {lat['p90'] * 1000:.0f} ms, "
          f"p99 {lat['p99'] * 1000:.0f} ms, max {lat['max'] * 1000:.0f} ms   (targets p50 < 500, p99 < 2000)")
    print(f"create_sync_events API: p50 {api['p50'] * 1000:.1f} ms, p99 {api['p99'] * 1000:.1f} ms, "
          f"max {api['max'] * 1000:.1f} ms   (target p99 < 50)")
    own = result["api_server_s"]
    print(f"  of which inside the server (Server-Timing): p50 {own['p50'] * 1000:.1f} ms, "
          f"p99 {own['p99'] * 1000:.1f} ms, max {own['max'] * 1000:.1f} ms")
    print(f"server CPU per event: {result['server_cpu_ms_per_event']} ms; "
          f"load average (1 min) before/after: {result['load_average_1m']}")
    print(f"server counters: {result['server_counters']}")


if __name__ == "__main__":
    main()
