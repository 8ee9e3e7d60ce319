"""1,000,000 work units through the table and 1,000,000 messages through the broker: rows/s, messages/s, sizes.

The costs docs/scale.md builds on, measured on the real servers of the development machine (PostgreSQL and
Redis on 127.0.0.1):

- table: UnitRepo rows added in batches (as the coordinator splits a task), marked sent in batches (as it
  dispatches), then each unit claimed, heartbeated once with progress and finished -- one conditional UPDATE
  each, as workers do -- by W worker processes at once; then the coordinator's queries over the full table
  (`due_again`, one task's `summary`) and the table's and its indexes' size;
- broker: Dramatiq messages carrying only a unit id, sent to a Redis broker and consumed by a Dramatiq Worker
  whose actor does nothing, in rounds (so Redis never holds more than one round); messages/s each way.

    .venv/bin/python bench/units_queue.py                     # 1M units, 1M messages, 4 workers
    .venv/bin/python bench/units_queue.py --units 20000 --messages 20000   # smoke run

Writes bench/out/units_queue.json. The database is a fresh one (dropped afterwards); the Redis keys live under a
namespace of their own (deleted afterwards).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy import text  # noqa: E402

from ferry.db.database import open_database  # noqa: E402
from ferry.db.unit_repo import DONE, UnitDraft, UnitRepo  # noqa: E402

PG_ADMIN = os.environ.get("FERRY_TEST_PG", "postgresql://127.0.0.1:5432/test")
TASKS = 10  # the units are spread over this many owners, as a cluster runs several tasks at once
BATCH = 1000  # units per INSERT and per mark_sent: what a coordinator splits and dispatches at a time


def _fresh_database() -> tuple[str, Any]:
    import psycopg

    admin = psycopg.connect(PG_ADMIN, autocommit=True)
    name = f"ferry_bench_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", (admin, name)


def _drop_database(handle: Any) -> None:
    admin, name = handle
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def _drafts(start: int, count: int) -> list[UnitDraft]:
    # A key range of ~10,000 objects each, with keys as long as real ones tend to be.
    return [UnitDraft("range", f"data/2026/{i:012d}/part-000000.parquet", f"data/2026/{i + 1:012d}/part-000000.parquet")
            for i in range(start, start + count)]


def _work(url: str, ids: list[int], out: Any) -> None:
    """One worker process: claim, one heartbeat with progress, finish -- for each of its units."""
    engine = open_database(url)
    repo = UnitRepo(engine)
    owner = f"bench/{os.getpid()}"
    spent = {"claim": 0.0, "heartbeat": 0.0, "finish": 0.0}
    cpu = time.process_time()
    for uid in ids:
        t0 = time.perf_counter()
        row = repo.claim(uid, owner, 60)
        t1 = time.perf_counter()
        assert row is not None
        assert repo.heartbeat(uid, owner, 60, {"listed": 10_000, "objects_done": 5_000, "bytes_done": 5 << 30,
                                               "watermark": row.end_key})
        t2 = time.perf_counter()
        assert repo.finish(uid, owner, DONE, {"objects_done": 10_000, "bytes_done": 10 << 30})
        t3 = time.perf_counter()
        spent["claim"] += t1 - t0
        spent["heartbeat"] += t2 - t1
        spent["finish"] += t3 - t2
    spent["cpu"] = time.process_time() - cpu
    engine.dispose()
    out.put(spent)


def table(units: int, workers: int, cycle: int) -> dict[str, Any]:
    url, handle = _fresh_database()
    result: dict[str, Any] = {"units": units, "workers": workers, "batch": BATCH, "tasks": TASKS}
    try:
        engine = open_database(url)
        repo = UnitRepo(engine)
        per_task = units // TASKS
        ids: list[int] = []
        t = time.perf_counter()
        for task in range(TASKS):
            for start in range(0, per_task, BATCH):
                ids += repo.add("task", str(task), 1, _drafts(task * per_task + start, min(BATCH, per_task - start)))
        result["add_s"] = time.perf_counter() - t
        result["add_rows_per_s"] = len(ids) / result["add_s"]
        print(f"add: {len(ids):,} rows in {result['add_s']:.1f} s = {result['add_rows_per_s']:,.0f} rows/s",
              flush=True)

        t = time.perf_counter()
        due = repo.due_again(300, limit=BATCH)
        result["due_again_unsent_ms"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        for start in range(0, len(ids), BATCH):
            repo.mark_sent(ids[start:start + BATCH])
        result["mark_sent_s"] = time.perf_counter() - t
        result["mark_sent_rows_per_s"] = len(ids) / result["mark_sent_s"]
        print(f"mark_sent: {result['mark_sent_rows_per_s']:,.0f} rows/s (due_again on unsent: "
              f"{result['due_again_unsent_ms']:.1f} ms for {len(due)})", flush=True)

        queue: Any = multiprocessing.get_context("spawn").Queue()
        # Every unit of the table when `cycle` covers it, else a sample spread evenly over the whole table (a
        # full 1M cycle takes over an hour on this 2-core machine shared with other work).
        step = max(1, len(ids) // cycle)
        cycled = ids[::step][:cycle]
        result["cycled_units"] = len(cycled)
        shares = [cycled[i::workers] for i in range(workers)]
        procs = [multiprocessing.get_context("spawn").Process(target=_work, args=(url, share, queue))
                 for share in shares]
        t = time.perf_counter()
        for p in procs:
            p.start()
        spent = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        wall = time.perf_counter() - t
        result["claim_heartbeat_finish_s"] = wall
        result["units_per_s"] = len(cycled) / wall
        result["updates_per_s"] = 3 * len(cycled) / wall
        result["client_cpu_ms_per_unit"] = 1000 * sum(s["cpu"] for s in spent) / len(cycled)
        for op in ("claim", "heartbeat", "finish"):
            result[f"{op}_ms_mean"] = 1000 * sum(s[op] for s in spent) / len(cycled)
        print(f"claim+heartbeat+finish of {len(cycled):,} units by {workers} processes: {wall:.1f} s = "
              f"{result['units_per_s']:,.0f} units/s "
              f"({result['updates_per_s']:,.0f} conditional UPDATEs/s); mean ms claim "
              f"{result['claim_ms_mean']:.2f}, heartbeat {result['heartbeat_ms_mean']:.2f}, finish "
              f"{result['finish_ms_mean']:.2f}; client CPU {result['client_cpu_ms_per_unit']:.2f} ms/unit", flush=True)

        t = time.perf_counter()
        due = repo.due_again(300, limit=BATCH)
        result["due_again_done_ms"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        summary = repo.summary("task", "0", 1)
        result["summary_ms"] = (time.perf_counter() - t) * 1000
        assert summary.total == per_task, summary
        with engine.connect() as conn:
            sizes = conn.execute(text(
                "SELECT pg_relation_size('work_units'), pg_indexes_size('work_units'), "
                "pg_total_relation_size('work_units')")).one()
        result["table_bytes"], result["index_bytes"], result["total_bytes"] = (int(v) for v in sizes)
        result["bytes_per_unit"] = result["total_bytes"] / len(ids)
        print(f"due_again over the finished table: {result['due_again_done_ms']:.1f} ms ({len(due)} due); one "
              f"task's summary ({per_task:,} units): {result['summary_ms']:.1f} ms", flush=True)
        print(f"size: table {result['table_bytes'] / 2**20:,.0f} MiB + indexes {result['index_bytes'] / 2**20:,.0f} "
              f"MiB = {result['total_bytes'] / 2**20:,.0f} MiB ({result['bytes_per_unit']:.0f} bytes/unit, "
              "after one claim/heartbeat/finish each, not vacuumed)", flush=True)
        engine.dispose()
    finally:
        _drop_database(handle)
    return result


def results(count: int) -> dict[str, Any]:
    """Per-object result rows (job_objects), recorded in 1,000-row batches as a keys unit records what it
    copied: the row every object of a task costs the database."""
    from ferry.db.job_repo import JobRepo, ObjectResult

    url, handle = _fresh_database()
    try:
        engine = open_database(url)
        jobs = JobRepo(engine)
        job = jobs.create("bench", "{}")
        t = time.perf_counter()
        for start in range(0, count, BATCH):
            jobs.record(job.id, [ObjectResult(f"data/2026/{i // 1000:012d}/part-{i % 1000:06d}.parquet", "success",
                                              262_144, f"{i:032x}") for i in range(start, min(count, start + BATCH))])
        wall = time.perf_counter() - t
        with engine.connect() as conn:
            total = int(conn.execute(text("SELECT pg_total_relation_size('job_objects')")).scalar_one())
        engine.dispose()
    finally:
        _drop_database(handle)
    out = {"rows": count, "s": wall, "rows_per_s": count / wall, "total_bytes": total, "bytes_per_row": total / count}
    print(f"results: {count:,} job_objects rows in {wall:.1f} s = {out['rows_per_s']:,.0f} rows/s; "
          f"{total / 2**20:,.0f} MiB with indexes = {out['bytes_per_row']:.0f} bytes/row", flush=True)
    return out


def broker(messages: int, rounds: int, threads: int, redis_url: str) -> dict[str, Any]:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    namespace = f"ferry-bench-{uuid.uuid4().hex[:8]}"
    rb = RedisBroker(url=redis_url, namespace=namespace, heartbeat_timeout=60_000)
    dramatiq.set_broker(rb)
    done = [0]
    lock = threading.Lock()

    @dramatiq.actor(queue_name="units", max_retries=0, broker=rb)
    def ferry_bench_unit(unit_id: int) -> None:
        with lock:
            done[0] += 1

    per_round = messages // rounds
    sent_s = consumed_s = 0.0
    peak_memory = 0
    client = rb.client
    # One worker for every round, paused while a round is sent, so sending and consuming are timed apart.
    worker = dramatiq.Worker(rb, worker_threads=threads, worker_timeout=100)
    try:
        for r in range(rounds):
            if r:
                worker.pause()
            t = time.perf_counter()
            for i in range(per_round):
                ferry_bench_unit.send(r * per_round + i)
            sent_s += time.perf_counter() - t
            peak_memory = max(peak_memory, int(client.info("memory")["used_memory"]))
            target = (r + 1) * per_round
            t = time.perf_counter()
            if r:
                worker.resume()
            else:
                worker.start()
            while done[0] < target:
                time.sleep(0.05)
            consumed_s += time.perf_counter() - t
            print(f"round {r + 1}/{rounds}: {target:,} sent and consumed", flush=True)
        worker.stop()
    finally:
        for key in client.scan_iter(f"{namespace}*"):
            client.delete(key)
        rb.close()
    result = {"messages": per_round * rounds, "rounds": rounds, "worker_threads": threads,
              "send_s": sent_s, "send_per_s": per_round * rounds / sent_s,
              "consume_s": consumed_s, "consume_per_s": per_round * rounds / consumed_s,
              "redis_used_memory_peak_bytes": peak_memory}
    print(f"broker: sent {result['send_per_s']:,.0f} msg/s (one send per unit), consumed "
          f"{result['consume_per_s']:,.0f} msg/s ({threads} threads, no-op actor); Redis used "
          f"{peak_memory / 2**20:,.0f} MiB with {per_round:,} queued", flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=1_000_000)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=4, help="worker processes claiming units (default 4)")
    ap.add_argument("--cycle", type=int, default=100_000,
                    help="units claimed, heartbeated and finished (default 100,000, spread over the table)")
    ap.add_argument("--rounds", type=int, default=4, help="broker rounds (Redis holds one round at a time)")
    ap.add_argument("--threads", type=int, default=8, help="Dramatiq worker threads (default 8)")
    ap.add_argument("--redis", default=os.environ.get("FERRY_BENCH_REDIS", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--results", type=int, default=200_000, help="per-object result rows recorded (default 200,000)")
    ap.add_argument("--skip-table", action="store_true")
    ap.add_argument("--skip-broker", action="store_true")
    ap.add_argument("--out", default="", help="suffix of the JSON file written to bench/out/")
    args = ap.parse_args()
    out: dict[str, Any] = {"cpus": os.cpu_count(), "load_before": os.getloadavg()}
    if not args.skip_table:
        out["table"] = table(args.units, args.workers, args.cycle)
    if args.results:
        out["results"] = results(args.results)
    if not args.skip_broker:
        out["broker"] = broker(args.messages, args.rounds, args.threads, args.redis)
    out["load_after"] = os.getloadavg()
    path = ROOT / "bench" / "out" / f"units_queue{'-' + args.out if args.out else ''}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
