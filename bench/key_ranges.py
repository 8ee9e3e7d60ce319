"""Key-range listing in distributed mode: one flat bucket listed by 1 vs several range units.

    .venv/bin/python bench/key_ranges.py                          # 50,000 keys, 2 workers, 1 / 4 / 8 ranges
    .venv/bin/python bench/key_ranges.py --objects 20000 --ranges 1 4 --workers 3

Two `weed mini` servers. Their buckets are flat (no `/` in a key), and SeaweedFS lists the objects of one
directory in byte order and honours start-after (checked with unicode keys), so both endpoints are stored as
a cloud's own (an operator-mapped endpoint is otherwise never trusted to list in order, and would not be
cut). The source holds `--objects` keys of 64 bytes (16 hex characters); each run's destination, a fresh
bucket, already holds 99 % of them (newer, so skipped), so a run is mostly listing and comparing, plus 1 %
copies spread over the key space. Each run has `--workers` `ferry worker` processes (--threads 2) with
`--list-ranges R`, the broker on the machine's Redis, a fresh PostgreSQL database. Per run, from the
database: the first copy (first success recorded) and the end of the listing (last range unit finished), both
from the task's run_started_at, and the task's total time; the probe time from the workers' logs. Writes
bench/out/key_ranges.json.

Everything (the stores, the server, the workers) shares the machine's cores: say how many when quoting it.
A moto source (AWS's order) was tried first: moto walks its whole bucket for every listing request, so a one-key
probe costs as much as a 1,000-key page there (0.5 s at 10,000 keys on a loaded 2-core machine), nothing like a
cloud.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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

from sqlalchemy import func, select  # noqa: E402

from distributed import DST_REGION, REDIS, SRC_REGION, fresh_database, stop_workers  # noqa: E402
from ferry import oms as s  # noqa: E402
from ferry.db.api_models import migration_tasks  # noqa: E402
from ferry.db.cluster_models import cluster_workers, work_units  # noqa: E402
from ferry.db.models import job_objects  # noqa: E402
from ferry.runner.migration import RunnerSettings  # noqa: E402
from ferry.serve import build  # noqa: E402
from ferry.service import tasks  # noqa: E402
from ferry.service.credentials import create_credential  # noqa: E402
from migrate_vs_rclone import MeteredSeaweed, base_env, find_binary  # noqa: E402

SIZE = 64


def files(work: Path, count: int) -> tuple[Path, Path]:
    """Every object as a local file, and 99 % of them (hard links) for the destinations."""
    every, most = work / "objects", work / "most"
    every.mkdir()
    most.mkdir()
    for i in range(count):  # hex names: flat, spread over 16 first characters
        name = uuid.uuid4().hex[:16]
        (every / name).write_bytes(os.urandom(SIZE))
        if i % 100:
            os.link(every / name, most / name)
    return every, most


def upload(store: MeteredSeaweed, local: Path, bucket: str) -> None:
    store.prime_bucket(bucket, prime=False)
    env = base_env()
    env.update(AWS_ACCESS_KEY_ID=store.access_key, AWS_SECRET_ACCESS_KEY=store.secret_key, AWS_REGION="us-east-1",
               AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    subprocess.run([find_binary("s5cmd"), "--endpoint-url", store.endpoint, "--numworkers", "64", "cp",
                    f"{local}/*", f"s3://{bucket}/"], env=env, check=True, stdout=subprocess.DEVNULL)


def vouch_for(*endpoints: str) -> None:
    """Task endpoints at `endpoints` are stored as a cloud's own: listed in byte order, so cut by key."""
    original = tasks._endpoint_spec
    ours = {e.rstrip("/") for e in endpoints}

    def spec(ep: Any) -> dict[str, Any]:
        out = original(ep)
        if ep.url.rstrip("/") in ours:
            out["from_override"] = False
        return out

    tasks._endpoint_spec = spec


def run_once(ranges: int, args: argparse.Namespace, src: MeteredSeaweed, dst: MeteredSeaweed, dbucket: str,
             work: Path, repeat: int) -> dict[str, Any]:
    db_url, (admin, name) = fresh_database()
    logs = work / f"logs-{ranges}-{repeat}"
    logs.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "FERRY_DATABASE_URL": db_url,
           "FERRY_BROKER_URL": f"{REDIS}?namespace=bench-{uuid.uuid4().hex[:8]}",
           "FERRY_DATA_DIR": str(work / "data"), "FERRY_LOG_LEVEL": "INFO"}
    for key in ("FERRY_DATABASE_URL", "FERRY_BROKER_URL"):
        os.environ[key] = env[key]
    service = build(work / "server", db_url, runner_settings=RunnerSettings(concurrency=64, poll_interval=0.2))
    procs = [subprocess.Popen(
        [sys.executable, "-m", "ferry.cli", "worker", "--threads", "2", "--concurrency", "64", "--unit-keys",
         "1000", "--list-ranges", str(ranges)], env=env, stdout=(logs / f"worker-{i}.log").open("ab"),
        stderr=subprocess.STDOUT, cwd=str(ROOT)) for i in range(args.workers)]
    try:
        engine = service.engine
        deadline = time.monotonic() + 120
        while True:
            with engine.connect() as conn:
                alive = conn.execute(select(cluster_workers.c.id).where(
                    cluster_workers.c.role == "worker", cluster_workers.c.state == "running")).all()
            if len(alive) >= args.workers:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not register")
            time.sleep(0.2)
        service.start_runner()
        project = create_credential(engine, service.box, uuid.uuid4().hex).project_id
        req = s.CreateTaskReq.model_validate({
            "task_type": "prefix",
            "src_node": {"cloud_type": "Aliyun", "region": SRC_REGION, "ak": src.access_key,
                         "sk": src.secret_key, "bucket": args.src_bucket, "object_key": [""]},
            "dst_node": {"ak": dst.access_key, "sk": dst.secret_key, "bucket": dbucket, "region": DST_REGION},
        })
        task_id = int(tasks.create_task(service.services.tasks, project, req).id)
        deadline = time.monotonic() + 1800
        while True:
            with engine.connect() as conn:
                row = conn.execute(select(migration_tasks).where(migration_tasks.c.id == task_id)).mappings().one()
            if row["status"] in (4, 5) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        started = float(row["run_started_at"] or time.time())
        with engine.connect() as conn:
            first = conn.execute(select(func.min(job_objects.c.updated_at)).where(
                job_objects.c.status == "success")).scalar()
            units = conn.execute(select(work_units.c.kind, work_units.c.start_after, work_units.c.end_key,
                                        work_units.c.finished_at)).mappings().all()
        ranged = [u for u in units if u["kind"] == "range"]
        listed = max(float(u["finished_at"] or 0) for u in ranged) - started if ranged else None
        text = "".join(p.read_text(errors="replace") for p in logs.glob("worker-*.log"))
        probes = [float(x) for x in re.findall(r"cut into \d+ key ranges at .* after ([\d.]+) s of probing", text)]
        count, nbytes = dst.bucket_totals(dbucket)
        out = {"list_ranges": ranges, "workers": args.workers, "repeat": repeat,
               "ok": row["status"] == 5 and count == args.objects and nbytes == args.objects * SIZE,
               "range_units": len(ranged), "key_range_units": sum(1 for u in ranged if u["start_after"]),
               "probe_s": probes, "first_copy_s": round(float(first) - started, 2) if first else None,
               "listing_s": round(listed, 2) if listed is not None else None,
               "total_s": round(float(row["finished_at"] or time.time()) - started, 2)}
        print(json.dumps(out), flush=True)
        return out
    finally:
        stop_workers(procs)
        service.close()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=50_000)
    p.add_argument("--ranges", type=int, nargs="*", default=[1, 4, 8])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    args.src_bucket = f"flat-{uuid.uuid4().hex[:8]}"
    os.environ["FERRY_MASTER_KEY"] = os.urandom(32).hex()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ferry-bench-ranges-") as tmp:
        work = Path(tmp)
        src, dst = MeteredSeaweed().start(), MeteredSeaweed().start()
        try:
            os.environ["FERRY_ENDPOINT_OVERRIDES"] = json.dumps(
                {f"Aliyun/{SRC_REGION}": src.endpoint, f"HuaweiCloud/{DST_REGION}": dst.endpoint})
            vouch_for(src.endpoint, dst.endpoint)
            filled = time.monotonic()
            every, most = files(work, args.objects)
            upload(src, every, args.src_bucket)
            runs = [(repeat, ranges) for repeat in range(args.repeat) for ranges in args.ranges]
            buckets = [f"dst-{uuid.uuid4().hex[:10]}" for _ in runs]
            for bucket in buckets:  # filled after the source: newer, so skipped
                upload(dst, most, bucket)
            print(json.dumps({"filled_s": round(time.monotonic() - filled, 1)}), flush=True)
            for (repeat, ranges), bucket in zip(runs, buckets, strict=True):
                results.append(run_once(ranges, args, src, dst, bucket, work, repeat))
        finally:
            src.stop()
            dst.stop()
    summary = {"objects": args.objects, "workers": args.workers, "cpus": os.cpu_count(), "runs": results}
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "key_ranges.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
