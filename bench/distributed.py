"""Distributed mode against embedded mode: one migration task of 10,000 x 4 KiB objects, objects/s.

    .venv/bin/python bench/distributed.py                    # embedded, then 1, 2 and 4 workers, 2 repeats
    .venv/bin/python bench/distributed.py --objects 2000 --repeat 1 --workers 1

Two `weed mini` servers on 127.0.0.1 (bench/migrate_vs_rclone.py's MeteredSeaweed: the source filled once by
s5cmd, every run into a FRESH primed destination bucket). One `ferry serve` service is built in this process
per configuration, on one fresh PostgreSQL database (so embedded and distributed write their results to the
same kind of database): `embedded` is the LocalRunner (one Transfer, 64 objects in flight); `workers=W` is the
DistributedRunner with W `ferry worker` processes (each --threads 2 --concurrency 64: 64 objects in flight per
worker, shared by its units, as embedded) and the broker on the machine's Redis (127.0.0.1:6379, a namespace
of its own). The time is the task's own run, finished_at - run_started_at from its row (the claim's poll
interval is not counted), and every run is checked by listing the destination. Writes bench/out/distributed.json.

Everything (two stores, the server, the workers) shares the machine's cores: say how many when quoting it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
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

from ferry import oms as s  # noqa: E402
from ferry.db.api_models import migration_tasks  # noqa: E402
from ferry.db.cluster_models import cluster_workers  # noqa: E402
from ferry.runner.migration import RunnerSettings  # noqa: E402
from ferry.sandbox import SeaweedServer  # noqa: E402
from ferry.serve import build  # noqa: E402
from ferry.service.credentials import create_credential  # noqa: E402
from ferry.service.tasks import create_task  # noqa: E402
from migrate_vs_rclone import MeteredSeaweed, base_env, find_binary  # noqa: E402

PG_ADMIN = os.environ.get("FERRY_TEST_PG", "postgresql://127.0.0.1:5432/test")
REDIS = os.environ.get("FERRY_BENCH_REDIS", "redis://127.0.0.1:6379/0")
SRC_REGION, DST_REGION = "cn-hangzhou", "cn-north-4"
SIZE = 4096


def fresh_database() -> tuple[str, Any]:
    import psycopg

    admin = psycopg.connect(PG_ADMIN, autocommit=True)
    name = f"ferry_bench_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", (admin, name)


def fill(src: MeteredSeaweed, bucket: str, count: int, work: Path) -> None:
    local = work / "objects"
    local.mkdir()
    for i in range(count):
        (local / f"obj-{i:06d}").write_bytes(os.urandom(SIZE))
    src.prime_bucket(bucket, prime=False)
    env = base_env()
    env.update(AWS_ACCESS_KEY_ID=src.access_key, AWS_SECRET_ACCESS_KEY=src.secret_key, AWS_REGION="us-east-1",
               AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    subprocess.run([find_binary("s5cmd"), "--endpoint-url", src.endpoint, "--numworkers", "64", "cp",
                    f"{local}/*", f"s3://{bucket}/"], env=env, check=True, stdout=subprocess.DEVNULL)


def task_req(src: SeaweedServer, sbucket: str, dst: SeaweedServer, dbucket: str) -> s.CreateTaskReq:
    return s.CreateTaskReq.model_validate({
        "task_type": "prefix",
        "src_node": {"cloud_type": "Aliyun", "region": SRC_REGION, "ak": src.access_key, "sk": src.secret_key,
                     "bucket": sbucket, "object_key": [""]},
        "dst_node": {"ak": dst.access_key, "sk": dst.secret_key, "bucket": dbucket, "region": DST_REGION},
    })


def start_workers(count: int, env: dict[str, str], work: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(count):
        log = (work / f"worker-{i}.log").open("ab")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "ferry.cli", "worker", "--threads", "2", "--concurrency", "64",
             "--unit-keys", "1000"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT)))
    return procs


def peak_rss_mb(pid: int) -> float | None:
    """A live process's peak resident set (VmHWM), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) * 1024 / 1e6, 1)
    except OSError:
        return None
    return None


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()


def run_once(label: str, workers: int, args: argparse.Namespace, src: MeteredSeaweed, dst: MeteredSeaweed,
             db_url: str, work: Path, repeat: int) -> dict[str, Any]:
    env = {**{k: v for k, v in os.environ.items() if k != "FERRY_BROKER_URL"}, "PYTHONPATH": str(ROOT / "src"),
           "FERRY_DATABASE_URL": db_url,
           "FERRY_DATA_DIR": str(work / "data"), "FERRY_LOG_LEVEL": "INFO" if args.logs else "WARNING"}
    if workers:
        env["FERRY_BROKER_URL"] = f"{REDIS}?namespace=bench-{uuid.uuid4().hex[:8]}"
    for name in ("FERRY_BROKER_URL", "FERRY_DATABASE_URL", "FERRY_MASTER_KEY", "FERRY_ENDPOINT_OVERRIDES"):
        if name in env:
            os.environ[name] = env[name]
        else:
            os.environ.pop(name, None)
    service = build(work / "server", db_url, runner_settings=RunnerSettings(concurrency=64, poll_interval=0.2))
    procs = start_workers(workers, env, Path(args.logs) if args.logs else work) if workers else []
    try:
        engine = service.engine
        if workers:
            deadline = time.monotonic() + 120
            while True:
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
        made = create_task(service.services.tasks, project, task_req(src, args.src_bucket, dst, dbucket))
        task_id = int(made.id)
        deadline = time.monotonic() + 900
        while True:
            with engine.connect() as conn:
                row = conn.execute(select(migration_tasks).where(migration_tasks.c.id == task_id)).mappings().one()
            if row["status"] in (4, 5) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        seconds = float(row["finished_at"] or time.time()) - float(row["run_started_at"] or time.time())
        count, nbytes = dst.bucket_totals(dbucket)
        ok = row["status"] == 5 and count == args.objects and nbytes == args.objects * SIZE
        out = {"config": label, "workers": workers, "repeat": repeat, "seconds": round(seconds, 3),
               "objects_per_s": round(args.objects / seconds, 1) if seconds > 0 else None, "ok": ok,
               "status": row["status"], "success_num": row["success_num"],
               "worker_peak_rss_mb": [peak_rss_mb(p.pid) for p in procs]}
        print(json.dumps(out), flush=True)
        return out
    finally:
        stop_workers(procs)
        service.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--no-embedded", action="store_true")
    p.add_argument("--logs", metavar="DIR", help="keep the workers' logs (at INFO) in DIR")
    args = p.parse_args()
    args.src_bucket = f"src-{uuid.uuid4().hex[:8]}"
    os.environ["FERRY_MASTER_KEY"] = os.urandom(32).hex()
    with tempfile.TemporaryDirectory(prefix="ferry-bench-dist-") as tmp:
        work = Path(tmp)
        src, dst = MeteredSeaweed().start(), MeteredSeaweed().start()
        db_url, (admin, name) = fresh_database()
        results: list[dict[str, Any]] = []
        try:
            os.environ["FERRY_ENDPOINT_OVERRIDES"] = json.dumps(
                {f"Aliyun/{SRC_REGION}": src.endpoint, f"HuaweiCloud/{DST_REGION}": dst.endpoint})
            fill(src, args.src_bucket, args.objects, work)
            configs = ([] if args.no_embedded else [("embedded", 0)]) + [(f"workers={w}", w) for w in args.workers]
            for repeat in range(args.repeat):
                # Rotated between repeats, so no configuration always runs first on a cold server.
                order = configs[repeat % len(configs):] + configs[:repeat % len(configs)]
                for label, workers in order:
                    results.append(run_once(label, workers, args, src, dst, db_url, work, repeat))
        finally:
            src.stop()
            dst.stop()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    best: dict[str, float] = {}
    for r in results:
        if r["ok"] and r["objects_per_s"]:
            best[r["config"]] = max(best.get(r["config"], 0.0), r["objects_per_s"])
    summary = {"objects": args.objects, "size": SIZE, "cpus": os.cpu_count(), "best_objects_per_s": best}
    if "embedded" in best and "workers=1" in best:
        summary["one_worker_vs_embedded"] = round(best["workers=1"] / best["embedded"], 2)
    print(json.dumps(summary), flush=True)
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "distributed.json").write_text(json.dumps({"summary": summary, "runs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
