"""The console's task list with thousands of tasks: time per page at the first, a middle and the last offset,
with and without a status filter, on SQLite (default) or PostgreSQL (--database-url).

    .venv/bin/python bench/console_paging.py --tasks 5000
    .venv/bin/python bench/console_paging.py --tasks 5000 --database-url postgresql+psycopg://127.0.0.1/ferry_bench

Tasks are written straight into the database (creating them through the API would measure the create path);
the other project gets as many, so the project filter has work to do. Prints milliseconds per page (median of
--repeat) and writes them to bench/out/console_paging.json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "api"))

from live_server import serve, stop  # noqa: E402

from ferry.db.api_models import migration_tasks  # noqa: E402
from ferry.serve import build  # noqa: E402
from ferry.service.credentials import create_credential  # noqa: E402


def _rows(project_id: str, n: int, first_id: int) -> list[dict[str, object]]:
    now = time.time()
    out = []
    for i in range(n):
        status = (1, 2, 3, 4, 5)[i % 5]
        out.append({
            "id": first_id + i, "project_id": project_id, "group_id": None, "group_type": "NORMAL_TASK",
            "name": f"task_{i:06d}", "description": "", "task_type": "prefix", "status": status, "priority": 2,
            "src_spec": json.dumps({"cloud_type": "Aliyun", "region": "cn-hangzhou", "bucket": "src",
                                    "object_key": [""]}),
            "dst_spec": json.dumps({"bucket": "dst", "region": "cn-north-4"}),
            "options": json.dumps({"object_overwrite_mode": "SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE",
                                   "dst_storage_policy": "STANDARD", "consistency_check": "size_last_modified"}),
            "bandwidth_policy": "[]", "secrets": None, "job_id": None, "run_mode": "full",
            "total_num": 1000, "total_size": 10**9, "success_num": 500, "skip_num": 0, "fail_num": i % 3,
            "size_only_num": 0, "complete_size": 5 * 10**8, "real_size": 5 * 10**8, "restoring_num": 0,
            "speed": 10**6, "left_time": 500_000, "progress": 0.5, "is_query_over": 1, "created_at": now - n + i,
            "started_at": now - n + i, "run_started_at": None, "elapsed": 10.0, "finished_at": None,
            "updated_at": now, "error_code": None, "error_msg": None, "records": None, "smn_result": None,
            "lease_owner": None, "lease_expires": None, "attempts": 0, "retry_at": None, "deleted_at": None,
        })
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--database-url")
    args = ap.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="ferry-console-bench-"))
    service = build(data_dir, args.database_url or f"sqlite:///{data_dir / 'ferry.db'}", run_tasks=False)
    mine, other = (create_credential(service.engine, service.box, uuid.uuid4().hex) for _ in range(2))
    with service.engine.begin() as conn:
        for k, who in enumerate((mine, other)):
            rows = _rows(who.project_id, args.tasks, 10**12 + k * 10**7)
            for i in range(0, len(rows), 1000):
                conn.execute(insert(migration_tasks), rows[i:i + 1000])
    running = serve(service.app)
    results: dict[str, float] = {}
    try:
        client = httpx.Client(base_url=running.url)
        page = client.get("/console/signin").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token is not None
        client.post("/console/signin", data={"csrf_token": token.group(1), "access_key": mine.access_key,
                                             "secret_key": mine.secret_key})
        last = (min(args.tasks, 10_000) - 1) // 20 * 20
        cases = {"first page (20)": "/console/tasks", "middle (20)": f"/console/tasks?offset={last // 2 // 20 * 20}",
                 "last (20)": f"/console/tasks?offset={last}", "first page (100)": "/console/tasks?limit=100",
                 "status=running, first (20)": "/console/tasks?status=2",
                 "status=running, last (20)": f"/console/tasks?status=2&offset={(args.tasks // 5 - 1) // 20 * 20}"}
        for name, path in cases.items():
            client.get(path)  # warm
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                answer = client.get(path)
                times.append((time.perf_counter() - t0) * 1000)
                assert answer.status_code == 200 and "task_" in answer.text, (name, answer.status_code)
            results[name] = statistics.median(times)
            print(f"{name:28s} {results[name]:7.1f} ms")
    finally:
        stop(running)
        service.close()
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "console_paging.json").write_text(json.dumps({"tasks": args.tasks, "ms": results}, indent=2))


if __name__ == "__main__":
    main()
