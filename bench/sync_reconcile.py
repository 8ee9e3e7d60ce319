"""A sync task's first reconciliation (its initial full copy): embedded, and cut into ranges on W workers.

    .venv/bin/python bench/sync_reconcile.py                         # 4,000 x 4 KiB: embedded, 1, 2, 3 workers
    .venv/bin/python bench/sync_reconcile.py --objects 1000 --workers 2

Two `weed mini` servers on 127.0.0.1 (bench/distributed.py's setup: the source filled once by s5cmd, every
run into a fresh destination bucket), one PostgreSQL database per run. `embedded` is `ferry serve` without a
broker (the sync workers in a thread of the server, one reconciliation of the whole bucket); `workers=W` is
`ferry serve` with FERRY_BROKER_URL and W `ferry worker` processes, the reconciliation cut into W ranges
(FERRY_SYNC_RECONCILE_UNITS_UNORDERED=W: the SeaweedFS behind an endpoint override counts as unordered, so
each range lists both buckets whole and filters its keys). The time is from the task's creation to its
`reconciled_at`, checked by the destination's object count and the task's success counter. Writes
bench/out/sync_reconcile.json. Everything shares the machine's cores: say how many when quoting it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from sqlalchemy import select  # noqa: E402

from distributed import REDIS, fill, fresh_database, start_workers, stop_workers  # noqa: E402
from ferry.db.cluster_models import cluster_workers  # noqa: E402
from ferry.db.sync_repo import SyncTaskSpec  # noqa: E402
from ferry.secrets import Secret  # noqa: E402
from ferry.serve import build  # noqa: E402
from ferry.service.credentials import create_credential  # noqa: E402
from ferry.service.sync import SyncCredentials, create_sync_task  # noqa: E402
from migrate_vs_rclone import MeteredSeaweed  # noqa: E402

SRC_REGION, DST_REGION = "us-east-1", "cn-north-4"
SIZE = 4096


def run_once(label: str, workers: int, args: argparse.Namespace, src: MeteredSeaweed, dst: MeteredSeaweed,
             work: Path) -> dict[str, Any]:
    db_url, (admin, name) = fresh_database()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "FERRY_DATABASE_URL": db_url,
           "FERRY_DATA_DIR": str(work / "data"), "FERRY_LOG_LEVEL": "WARNING",
           "FERRY_SYNC_RECONCILE_UNITS_UNORDERED": str(max(1, workers)), "FERRY_SYNC_WORKERS": "thread"}
    if workers:
        env["FERRY_BROKER_URL"] = f"{REDIS}?namespace=bench-{uuid.uuid4().hex[:8]}"
    for key in ("FERRY_BROKER_URL", "FERRY_DATABASE_URL", "FERRY_SYNC_RECONCILE_UNITS_UNORDERED",
                "FERRY_SYNC_WORKERS"):
        if key in env:
            os.environ[key] = env[key]
        else:
            os.environ.pop(key, None)
    service = build(work / "server", db_url)
    procs = start_workers(workers, env, work) if workers else []
    try:
        engine = service.engine
        deadline = time.monotonic() + 120
        while workers:
            with engine.connect() as conn:
                alive = conn.execute(select(cluster_workers.c.id).where(
                    cluster_workers.c.role == "worker", cluster_workers.c.state == "running")).all()
            if len(alive) >= workers:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not register")
            time.sleep(0.2)
        service.start_runner()
        dbucket = dst.prime_bucket(f"dst-{uuid.uuid4().hex[:10]}")
        project = create_credential(engine, service.box, uuid.uuid4().hex).project_id
        spec = SyncTaskSpec("AWS", SRC_REGION, args.src_bucket, DST_REGION, dbucket)
        creds = SyncCredentials(src.access_key, Secret(src.secret_key), dst.access_key, Secret(dst.secret_key))
        started = time.time()
        task_id = asyncio.run(create_sync_task(service.services.sync, project, spec, creds))
        repo = service.services.sync.repo
        deadline = time.monotonic() + 900
        while True:
            row = repo.get_task(task_id)
            if (row is not None and row.reconciled_at is not None) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert row is not None
        seconds = (row.reconciled_at or time.time()) - started
        totals = repo.stat_totals(task_id, 0, 2e10)
        count, nbytes = dst.bucket_totals(dbucket)
        ok = (count == args.objects and nbytes == args.objects * SIZE and totals.success == args.objects
              and row.last_error is None)
        out = {"config": label, "workers": workers, "seconds": round(seconds, 3),
               "objects_per_s": round(args.objects / seconds, 1) if seconds > 0 else None, "ok": ok,
               "success": totals.success, "last_error": row.last_error}
        print(json.dumps(out), flush=True)
        return out
    finally:
        stop_workers(procs)
        service.close()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=4000)
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2, 3])
    p.add_argument("--no-embedded", action="store_true")
    args = p.parse_args()
    args.src_bucket = f"src-{uuid.uuid4().hex[:8]}"
    os.environ["FERRY_MASTER_KEY"] = os.urandom(32).hex()
    with tempfile.TemporaryDirectory(prefix="ferry-bench-sync-") as tmp:
        work = Path(tmp)
        src, dst = MeteredSeaweed().start(), MeteredSeaweed().start()
        results: list[dict[str, Any]] = []
        try:
            os.environ["FERRY_ENDPOINT_OVERRIDES"] = json.dumps(
                {f"AWS/{SRC_REGION}": src.endpoint, f"HuaweiCloud/{DST_REGION}": dst.endpoint})
            fill(src, args.src_bucket, args.objects, work)
            configs = ([] if args.no_embedded else [("embedded", 0)]) + [(f"workers={w}", w) for w in args.workers]
            for label, workers in configs:
                results.append(run_once(label, workers, args, src, dst, work))
        finally:
            src.stop()
            dst.stop()
    summary = {"objects": args.objects, "size": SIZE, "cpus": os.cpu_count(),
               "objects_per_s": {r["config"]: r["objects_per_s"] for r in results if r["ok"]}}
    print(json.dumps(summary), flush=True)
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "sync_reconcile.json").write_text(json.dumps({"summary": summary, "runs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
