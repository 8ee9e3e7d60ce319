"""The OMS API under load: 50 clients calling show_task, list_tasks and create_sync_events while a migration runs.

    .venv/bin/python bench/api_load.py                      # 50 clients for 30 s
    .venv/bin/python bench/api_load.py --clients 20 --duration 10 --objects 2000 --json

Starts two SeaweedFS servers and `ferry serve` in its own process (SQLite state), fills a source bucket with
`--objects` small objects, then keeps a migration task of that bucket running for the whole measurement (when one
ends, the next starts into a fresh destination prefix) and has a sync task of the same bucket take events. Each of
`--clients` concurrent clients loops over the three calls (signed SDK-HMAC-SHA256 as the SDK signs, one
keep-alive connection each): show_task of the running migration, list_tasks (first page of 10), and
create_sync_events naming one existing source key (so the sync workers copy it too).

Reported per operation: calls, p50/p99/max latency as the client saw it and inside the server (Server-Timing),
the count of 5xx (target: 0) and of other non-2xx answers; the migration runs and objects copied meanwhile; the
server's CPU and the machine's load average (on a shared 2-core machine the load generator, two SeaweedFS and the
server compete for the cores: compare figures from one machine and one run only). JSON goes to bench/out/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from ferry.objects import ObjectMeta
from ferry.sandbox import SeaweedServer
from ferry.storage.s3 import S3Backend
from oms_bench import DST_REGION, SRC_REGION, OmsSigner, Server, cpu_seconds, oms, pct, start_server

OUT_DIR = Path(__file__).resolve().parent / "out"
OPERATIONS = ("show_task", "list_tasks", "create_sync_events")
SUCCEEDED, FAILED = 5, 4


@dataclass
class OpStats:
    client_s: list[float] = field(default_factory=list)
    server_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        def ms(values: list[float], p: float) -> float:
            return round(pct(values, p) * 1000, 1)

        return {
            "calls": sum(self.statuses.values()) + len(self.errors),
            "client_ms": {"p50": ms(self.client_s, 50), "p99": ms(self.client_s, 99),
                          "max": round(max(self.client_s, default=float("nan")) * 1000, 1)},
            "server_ms": {"p50": ms(self.server_s, 50), "p99": ms(self.server_s, 99),
                          "max": round(max(self.server_s, default=float("nan")) * 1000, 1)},
            "5xx": sum(n for s, n in self.statuses.items() if s >= 500),
            "other_non_2xx": {str(s): n for s, n in self.statuses.items() if 300 <= s < 500},
            "transport_errors": len(self.errors), "first_errors": self.errors[:3],
        }


@dataclass
class Migration:
    """The migration kept running under the load: the task of the moment and what the finished ones did."""

    task_id: int = 0
    last_seen: dict[str, Any] = field(default_factory=dict)  # the running task's status and counters
    runs_finished: int = 0
    objects_copied: int = 0
    failed_runs: int = 0


def _task_body(src: SeaweedServer, src_bucket: str, dst: SeaweedServer, dst_bucket: str, run: int) -> dict[str, Any]:
    return {
        "task_type": "prefix",
        "src_node": {"cloud_type": "AWS", "region": SRC_REGION, "ak": src.access_key, "sk": src.secret_key,
                     "bucket": src_bucket, "object_key": [""]},
        "dst_node": {"ak": dst.access_key, "sk": dst.secret_key, "bucket": dst_bucket, "region": DST_REGION,
                     "save_prefix": f"run{run:03d}"},
    }


async def keep_migrating(session: aiohttp.ClientSession, signer: OmsSigner, body: Any, migration: Migration,
                         until: asyncio.Event, first: asyncio.Event) -> None:
    run = 0
    while not until.is_set():
        run += 1
        status, created = await oms(session, signer, "POST", "/v2/{project_id}/tasks", body(run))
        if status != 200:
            raise SystemExit(f"create_task answered {status}: {created}")
        migration.task_id = created["id"]
        first.set()
        while True:
            await asyncio.sleep(0.5)
            _, task = await oms(session, signer, "GET", f"/v2/{{project_id}}/tasks/{migration.task_id}")
            migration.last_seen = {k: (task or {}).get(k) for k in ("status", "successful_num", "total_num",
                                                                    "failed_num", "error_reason")}
            if task and task.get("status") in (SUCCEEDED, FAILED):
                migration.runs_finished += 1
                migration.failed_runs += task["status"] == FAILED
                migration.objects_copied += int(task.get("successful_num") or 0)
                break
            if until.is_set():
                return


async def client(n: int, signer: OmsSigner, migration: Migration, sync_id: str, keys: list[str],
                 counter: list[int], stats: dict[str, OpStats], deadline: float) -> None:
    # One keep-alive connection per client, as one SDK client would hold.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        i = n
        while time.monotonic() < deadline:
            op = OPERATIONS[i % len(OPERATIONS)]
            i += 1
            if op == "show_task":
                call = ("GET", f"/v2/{{project_id}}/tasks/{migration.task_id}", None, "")
            elif op == "list_tasks":
                call = ("GET", "/v2/{project_id}/tasks", None, "limit=10&offset=0")
            else:
                # A different key each time: a signed write is accepted once, so no two calls may be the same.
                counter[0] += 1
                key = keys[counter[0] % len(keys)]
                call = ("POST", f"/v2/{{project_id}}/sync-tasks/{sync_id}/events",
                        {"object_keys": [quote(key, safe="")]}, "")
            method, path, body, query = call
            st = stats[op]
            started = time.monotonic()
            try:
                status, _ = await oms(session, signer, method, path, body, query, timings=st.server_s)
            except (aiohttp.ClientError, TimeoutError) as e:
                st.errors.append(f"{type(e).__name__}: {e}")
                continue
            st.client_s.append(time.monotonic() - started)
            st.statuses[status] += 1


async def fill(server: SeaweedServer, bucket: str, count: int, size: int) -> list[str]:
    backend = S3Backend(server.endpoint, server.region, server.access_key, server.secret_key, bucket)
    payload = os.urandom(size)
    keys = [f"load/{i // 1000:03d}/{i:06d}.bin" for i in range(count)]
    gate = asyncio.Semaphore(64)

    async def put(key: str) -> None:
        async with gate:
            await backend.put(key, payload, ObjectMeta())

    try:
        await asyncio.gather(*(put(k) for k in keys))
    finally:
        await backend.close()
    return keys


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with SeaweedServer() as src_server, SeaweedServer() as dst_server:
        src_bucket = src_server.create_bucket(f"load-src-{uuid.uuid4().hex[:8]}")
        dst_bucket = dst_server.create_bucket(f"load-dst-{uuid.uuid4().hex[:8]}")
        sync_bucket = dst_server.create_bucket(f"load-sync-{uuid.uuid4().hex[:8]}")
        keys = await fill(src_server, src_bucket, args.objects, args.size)
        server: Server = start_server(src_server, dst_server)
        try:
            signer = OmsSigner(server)
            async with aiohttp.ClientSession() as session:
                status, created = await oms(session, signer, "POST", "/v2/{project_id}/sync-tasks", {
                    "src_cloud_type": "AWS", "src_region": SRC_REGION, "src_bucket": src_bucket,
                    "src_ak": src_server.access_key, "src_sk": src_server.secret_key,
                    "dst_ak": dst_server.access_key, "dst_sk": dst_server.secret_key,
                    "dst_region": DST_REGION, "dst_bucket": sync_bucket,
                })
                if status != 200:
                    raise SystemExit(f"create_sync_task answered {status}: {created}")
                sync_id = created["sync_task_id"]
                migration = Migration()
                until, first = asyncio.Event(), asyncio.Event()
                keeper = asyncio.create_task(keep_migrating(
                    session, signer, lambda run: _task_body(src_server, src_bucket, dst_server, dst_bucket, run),
                    migration, until, first))
                await first.wait()
                await asyncio.sleep(1.0)  # the first run under way
                stats = {op: OpStats() for op in OPERATIONS}
                profiler = _start_profile(server, args.duration) if args.profile else None
                cpu0, load0, t0 = cpu_seconds(server.proc.pid), os.getloadavg()[0], time.monotonic()
                counter = [0]
                await asyncio.gather(*(client(n, signer, migration, sync_id, keys, counter, stats,
                                              t0 + args.duration) for n in range(args.clients)))
                elapsed = time.monotonic() - t0
                if profiler is not None:
                    await asyncio.to_thread(_report_profile, profiler)
                cpu = cpu_seconds(server.proc.pid) - cpu0
                running_at_end = migration.task_id
                until.set()
                await keeper
                return {
                    "clients": args.clients, "duration_s": round(elapsed, 1),
                    "source_objects": args.objects, "object_bytes": args.size,
                    "operations": {op: s.report() for op, s in stats.items()},
                    "total_5xx": sum(s.report()["5xx"] for s in stats.values()),
                    "calls_per_s": round(sum(len(s.client_s) for s in stats.values()) / elapsed, 1),
                    "migration": {"runs_finished": migration.runs_finished, "failed_runs": migration.failed_runs,
                                  "objects_copied_in_finished_runs": migration.objects_copied,
                                  "task_running_at_end": running_at_end,
                                  "its_last_show_task": migration.last_seen},
                    "server_cpu_s": round(cpu, 1),
                    "load_average_1m": [round(load0, 1), round(os.getloadavg()[0], 1)],
                }
        finally:
            server.stop()


PROFILE_OUT = OUT_DIR / "api_load.pyspy.txt"


def _start_profile(server: Server, duration: float) -> subprocess.Popen[bytes]:
    """py-spy on the server for the load's duration: what its threads do when not idle."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(server.proc.pid),
                             "-d", str(int(duration)), "-r", "50", "--threads", "-f", "raw",
                             "-o", str(PROFILE_OUT)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _report_profile(proc: subprocess.Popen[bytes]) -> None:
    """The frames of Ferry's own code where the server's threads spent their samples, most first."""
    _, err = proc.communicate(timeout=120)
    if not PROFILE_OUT.exists():
        print(f"(--profile: py-spy failed: {err.decode(errors='replace').strip()[-300:]})")
        return
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in PROFILE_OUT.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        total += int(n)
        threads[frames[0][:60]] += int(n)
        mine = [f for f in frames if "/ferry/" in f]
        if mine:
            own[f"{mine[-1][:90]}  <-  {frames[-1][:70]}"] += int(n)
    print(f"PROFILE ({total} samples of all threads; raw stacks in {PROFILE_OUT})")
    for frame, n in own.most_common(25):
        print(f"  {100 * n / total:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    parser.add_argument("--objects", type=int, default=5000, help="source objects per migration (default 5000)")
    parser.add_argument("--size", type=int, default=16384, help="object size in bytes (default 16384)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the server during the load (.venv/bin/pip install py-spy)")
    parser.add_argument("--json-out", type=Path, default=None, help=f"results as JSON (default {OUT_DIR}/...)")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    out = args.json_out or OUT_DIR / f"api_load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.clients} clients for {result['duration_s']} s, {result['calls_per_s']} calls/s; "
          f"5xx: {result['total_5xx']} (target 0)")
    for op, r in result["operations"].items():
        c, s = r["client_ms"], r["server_ms"]
        print(f"  {op:<19} {r['calls']:>6} calls  client p50 {c['p50']:>7.1f} p99 {c['p99']:>7.1f} "
              f"max {c['max']:>7.1f} ms  | server p50 {s['p50']:>6.1f} p99 {s['p99']:>7.1f} ms  "
              f"5xx {r['5xx']}  other {r['other_non_2xx'] or '-'}  errors {r['transport_errors']}")
    m = result["migration"]
    print(f"migration meanwhile: {m['runs_finished']} runs finished ({m['failed_runs']} failed), "
          f"{m['objects_copied_in_finished_runs']} objects copied; the running one: {m['its_last_show_task']}; "
          f"server CPU {result['server_cpu_s']} s; "
          f"load average (1 min) before/after {result['load_average_1m']}")
    print(f"(JSON in {out})")


if __name__ == "__main__":
    main()
