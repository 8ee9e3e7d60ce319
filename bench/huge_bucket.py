"""Peak RSS and time of a whole migration of a huge bucket, first run and in-step rerun (target: flat, < 150 MB).

    .venv/bin/python bench/huge_bucket.py memory --keys 10000000          # lazily generated buckets, in process
    .venv/bin/python bench/huge_bucket.py memory --keys 1000000 --phase rerun --tracemalloc
    .venv/bin/python bench/huge_bucket.py seaweed --keys 1000000         # `ferry migrate` between two SeaweedFS
    .venv/bin/python bench/huge_bucket.py seaweed --keys 1000000 --rclone
    .venv/bin/python bench/huge_bucket.py worker --keys 1000000 --in-place   # one `ferry worker`, in-step rerun
    .venv/bin/python bench/huge_bucket.py worker --keys 100000               # first run, then in-step rerun

`memory`: the source is a MemoryBackend whose listing is generated lazily (key i of N, 0-byte objects, so
nothing of the bucket is held), the destination a MemoryBackend that keeps no data (a put is answered, not
stored) and lists either nothing (first run) or the same N keys, newer (the in-step rerun). Both go through
the real path of `ferry migrate`: service.transfers.run_migration -> engine.pipeline.Transfer -> the planner,
the copier and a real SQLite job database in a fresh state directory (the rerun reuses the first run's, so its
job database already holds N rows, as on a user's machine). Each phase runs in a child process; its peak RSS is
ru_maxrss from os.wait4, its time the child's own measurement of run_migration.

`seaweed`: two `weed mini` servers; the source bucket is filled once with N 0-byte objects under one prefix
(by Ferry from a generated bucket, ~2x the rate of s5cmd's 64 workers on the development machine; kept in
--data-dir between runs, since filling 1M objects takes a while), then `ferry migrate` runs as the CLI does, a
first time into an empty bucket and once more with nothing changed (`--phase rerun` reruns the last in-step
pair only); `--rclone` adds `rclone copy` of the in-step pair, `--baseline-src DIR` the rerun by ferry from
another source tree (the code before a change).

`worker`: the same migration as one task of distributed mode on one `ferry worker` process (bench/distributed.py's:
--threads 2 --concurrency 64 --unit-keys 1000), coordinated by a `ferry serve` process, over a fresh PostgreSQL
database and a Redis namespace of its own, between seaweed mode's servers and filled buckets (named to the task
as Aliyun and HuaweiCloud regions mapped by FERRY_ENDPOINT_OVERRIDES, so both listings count as unordered and
the range unit sorts them). The rerun's destination is the bucket a first run filled, else one filled after
the source; `--in-place` makes the source bucket its own in-step destination (the same listings, sorts,
comparisons and skip results, without filling a second bucket). Each process's peak RSS is its VmHWM, read
when the task has ended; its resident set is sampled every second. `--baseline-src DIR` runs both processes
from another source tree.

`--unordered` (memory) declares both listings unordered, as SeaweedFS's are, so the planner's external sort
is part of the measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from ferry.objects import ObjectInfo, ObjectMeta, PutResult
from ferry.storage.base import ListOrder
from ferry.storage.memory import MemoryBackend, MemoryStore

_EMPTY_MD5 = hashlib.md5(b"", usedforsecurity=False).hexdigest()
_SRC_MTIME = 1_700_000_000.0
_DST_MTIME = 1_800_000_000.0  # newer than the source: an in-step pair is skipped under size_last_modified


def key_of(i: int) -> str:
    # Zero-padded, so generating i = 0, 1, 2... is byte order; ~40 bytes like real keys, all under one prefix.
    return f"data/part-{i:012d}.parquet"


class LazyBucket(MemoryBackend):
    """N 0-byte objects generated on demand: a listing holds one page, reads and heads make the object up."""

    def __init__(self, n: int, mtime: float, *, listed: bool = True, unordered: bool = False) -> None:
        super().__init__(MemoryStore(), "lazy")
        if unordered:
            # Declared in no order (as SeaweedFS is), so the planner sorts both listings on disk.
            self._capabilities = dataclasses.replace(self._capabilities, list_order=ListOrder.UNORDERED)
        self.n = n
        self.mtime = mtime
        self.listed = listed  # False: a destination that is empty to begin with
        self.puts = 0

    def _made_up(self, key: str, *, with_meta: bool) -> ObjectInfo:
        return ObjectInfo(key, 0, self.mtime, _EMPTY_MD5, "STANDARD",
                          meta=ObjectMeta(content_type="application/octet-stream") if with_meta else None,
                          md5=_EMPTY_MD5 if with_meta else None)

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        if not self.listed:
            return
        i = 0
        if start_after is not None:
            i = int(start_after.removeprefix("data/part-").removesuffix(".parquet")) + 1
        mtime = self.mtime
        while i < self.n:
            # Like a paged store: a page of 1000 made at once, then handed out one by one.
            page = [ObjectInfo(key_of(j), 0, mtime, _EMPTY_MD5, "STANDARD") for j in range(i, min(i + 1000,
                                                                                                   self.n))]
            for obj in page:
                yield obj
            i += len(page)

    async def head(self, key: str) -> ObjectInfo:
        return self._made_up(key, with_meta=True)

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        return self._made_up(key, with_meta=True), b""

    async def put(self, key: str, data: bytes, meta: ObjectMeta, *, storage_class: str | None = None,
                  crc64: int | None = None) -> PutResult:
        self.puts += 1
        return PutResult(etag=hashlib.md5(data, usedforsecurity=False).hexdigest(), mtime=time.time())


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_mb_of(pid: int | str = "self") -> float | None:
    """A process's resident set now (VmRSS), in MB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        return None


async def _memory_child(n: int, phase: str, state: Path, concurrency: int, trace: bool,
                        unordered: bool = False) -> dict[str, Any]:
    from ferry.db.deferred import DeferredRepo
    from ferry.engine.pipeline import TransferOptions
    from ferry.engine.progress import Counters
    from ferry.service.transfers import run_migration
    from ferry.settings import database_url
    from ferry.storage.wrappers import RetryingBackend

    if trace:
        import tracemalloc

        tracemalloc.start(8)
    url = database_url(state)
    fresh = not Path(url.removeprefix("sqlite:///")).exists()
    src = LazyBucket(n, _SRC_MTIME, unordered=unordered)
    dst = LazyBucket(n, _DST_MTIME, listed=phase == "rerun", unordered=unordered)
    samples: list[float] = []
    stop = threading.Event()
    counters = Counters()
    snapshots: list[Any] = []

    def sample() -> None:
        while not stop.wait(0.5):
            samples.append(_rss_mb_of() or 0.0)
            if trace and not snapshots and counters.success + counters.skipped >= n * 3 // 4:
                import tracemalloc

                snapshots.append(tracemalloc.take_snapshot())  # three quarters through: near the peak

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started, cpu = time.perf_counter(), time.process_time()
    summary = await run_migration(RetryingBackend(src), RetryingBackend(dst), DeferredRepo(url),  # type: ignore[arg-type]
                                  TransferOptions(concurrency=concurrency), report_dir=state / "reports",
                                  counters=counters, fresh=fresh, lock_dir=state)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    stop.set()
    out: dict[str, Any] = {
        "keys": n, "phase": phase, "unordered": unordered, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "keys_per_s": round(n / wall), "success": summary.success, "skipped": summary.skipped,
        "failed": summary.failed, "puts": dst.puts, "error": summary.error,
        "rss_samples_mb": [round(s) for s in samples[:: max(1, len(samples) // 12)]],
    }
    if trace:
        import tracemalloc

        snap = snapshots[0] if snapshots else tracemalloc.take_snapshot()
        out["traced_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 1e6, 1)
        out["top"] = [str(s) for s in snap.statistics("lineno")[:15]]
        out["top_tb"] = ["\n".join(s.traceback.format()) + f"  {s.size / 1e6:.1f} MB"
                         for s in snap.statistics("traceback")[:6]]
    return out


def run_memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    state = Path(args.state or tempfile.mkdtemp(prefix="ferry-huge-"))
    results = []
    phases = ["first", "rerun"] if args.phase == "both" else [args.phase]
    try:
        for phase in phases:
            argv = [sys.executable, __file__, "_child", "--keys", str(args.keys), "--phase", phase,
                    "--state", str(state), "--concurrency", str(args.concurrency)]
            if args.tracemalloc:
                argv.append("--tracemalloc")
            if args.unordered:
                argv.append("--unordered")
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            _, status, usage = os.wait4(proc.pid, 0)
            assert proc.stdout is not None
            out = proc.stdout.read()
            if status != 0:
                raise SystemExit(f"child failed ({status}): {out}")
            result = json.loads(out.strip().splitlines()[-1])
            result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        if args.state is None:
            shutil.rmtree(state, ignore_errors=True)
    return results


async def _fill(n: int, endpoint: str, ak: str, sk: str, bucket: str, state: Path) -> Any:
    from ferry.db.jobdb import open_job_repo
    from ferry.engine.pipeline import TransferOptions
    from ferry.service.transfers import run_migration
    from ferry.storage.stores import StoreAt, StoreKeys, open_at

    dst = open_at(StoreAt("seaweedfs", endpoint, "us-east-1", bucket), StoreKeys(ak, sk))
    try:
        return await run_migration(LazyBucket(n, _SRC_MTIME), dst, open_job_repo(f"sqlite:///{state / 'f.db'}"),
                                   TransferOptions(concurrency=128), report_dir=state, lock_dir=state)
    finally:
        await dst.close()


# Fixed keys, so that a restarted server's buckets answer again.
_CREDS = {"access_key": "FERRYHUGEBENCH01", "secret_key": "huge-bucket-bench-secret-key-0001"}


@contextlib.contextmanager
def seaweed_pair(root: Path) -> Iterator[tuple[Any, Any]]:
    """The two `weed mini` servers (source, destination) keeping their data in `root`, kept between runs."""
    from ferry.sandbox import SeaweedServer

    with (SeaweedServer(data_dir=root / "src", volume_size_limit_mb=1024, **_CREDS) as src,
          SeaweedServer(data_dir=root / "dst", volume_size_limit_mb=1024, **_CREDS) as dst):
        yield src, dst


def filled(server: Any, bucket: str, n: int, root: Path, marker: Path) -> str:
    """`bucket` on `server` holding the N generated keys, filled once (`marker` says it is)."""
    if not marker.exists():
        server.create_bucket(bucket)
        # Filled by Ferry itself from a generated bucket: twice the rate of s5cmd's 64 workers here.
        started = time.perf_counter()
        summary = asyncio.run(_fill(n, server.endpoint, server.access_key, server.secret_key, bucket,
                                    root / f"fill-state-{bucket}"))
        if summary.success + summary.skipped != n:
            raise SystemExit(f"filling {bucket} failed: {summary}")
        marker.write_text(bucket)
        print(json.dumps({"filled": bucket, "keys": n, "wall_s": round(time.perf_counter() - started, 1)}),
              flush=True)
    return marker.read_text() or bucket


def in_step_bucket(dst: Any, n: int, root: Path) -> str:
    """A destination bucket holding the same N keys as the source, newer: the one a first run filled, else
    one filled for the purpose (written after the source, so every key is the same size and not older)."""
    return filled(dst, f"huge-dst-{n}-filled", n, root, root / f"in-step-{n}")


def run_seaweed(args: argparse.Namespace) -> list[dict[str, Any]]:
    from ferry.sandbox import find_binary
    from migrate_vs_rclone import REGION, base_env, run_child

    n = args.keys
    root = Path(args.data_dir)
    results: list[dict[str, Any]] = []
    with seaweed_pair(root) as (src, dst):
        # The filled source is kept between runs (its marker names it).
        src_bucket = filled(src, f"huge-src-{n}", n, root, root / f"filled-{n}")
        env = base_env()
        in_step = root / f"in-step-{n}"  # names the destination bucket a first run filled
        phases = ["first", "rerun"]
        if args.phase == "rerun" and in_step.exists():
            dst_bucket, phases = in_step.read_text(), ["rerun"]
        else:
            dst_bucket = f"huge-dst-{n}-{int(time.time())}"
            dst.create_bucket(dst_bucket)
        state = root / f"state-{dst_bucket}"
        ferry_env = {**env, "FERRY_SRC_AK": src.access_key, "FERRY_SRC_SK": src.secret_key,
                     "FERRY_DST_AK": dst.access_key, "FERRY_DST_SK": dst.secret_key}
        argv = [find_binary("ferry"), "migrate", f"s3://{src_bucket}", f"s3://{dst_bucket}",
                "--src-endpoint", src.endpoint, "--dst-endpoint", dst.endpoint,
                "--src-profile", "seaweedfs", "--dst-profile", "seaweedfs", "--src-region", REGION,
                "--dst-region", REGION, "--state-dir", str(state), "--json", "--no-progress"]
        runs = [(phase, "ferry", ferry_env, argv) for phase in phases]
        if args.baseline_src:
            # The same in-step rerun by another source tree (the code before a change), for comparison. Each
            # tree gets a fresh state directory of its own: an older tree cannot open a job database a newer
            # one migrated, and both then do the same work (list both sides, skip every key).
            for tool, tool_env in (("ferry", ferry_env),
                                   (f"ferry@{args.baseline_src}", {**ferry_env, "PYTHONPATH": args.baseline_src})):
                fresh = Path(tempfile.mkdtemp(prefix="state-", dir=root))
                runs.append(("rerun-fresh-state", tool, tool_env, [*argv[:-3], str(fresh), *argv[-2:]]))
        for phase, tool, tool_env, tool_argv in runs:
            proc = run_child(tool_argv, tool_env, timeout=6 * 3600)
            if phase == "first" and proc.rc == 0:
                in_step.write_text(dst_bucket)
            summary = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.rc == 0 else {}
            result = {"tool": tool, "keys": n, "phase": phase, "wall_s": round(proc.wall, 1),
                      "cpu_s": round(proc.cpu, 1), "peak_rss_mb": round(proc.maxrss_mb, 1), "rc": proc.rc,
                      "success": summary.get("success"), "skipped": summary.get("skipped"),
                      "failed": summary.get("failed"), "stderr": proc.stderr[-300:] if proc.rc else ""}
            results.append(result)
            print(json.dumps(result), flush=True)
        if args.rclone:
            conf = root / "rclone.conf"
            conf.touch()
            renv = {**env, "RCLONE_CONFIG": str(conf)}
            for name, server in (("SRC", src), ("DST", dst)):
                p = f"RCLONE_CONFIG_{name}_"
                renv.update({p + "TYPE": "s3", p + "PROVIDER": "Other", p + "ENV_AUTH": "false",
                             p + "ACCESS_KEY_ID": server.access_key, p + "SECRET_ACCESS_KEY": server.secret_key,
                             p + "ENDPOINT": server.endpoint, p + "REGION": REGION, p + "FORCE_PATH_STYLE": "true"})
            proc = run_child([find_binary("rclone"), "copy", f"src:{src_bucket}", f"dst:{dst_bucket}",
                              "--transfers", "32", "--checkers", "32"], renv, timeout=6 * 3600)
            result = {"tool": "rclone", "keys": n, "phase": "rerun", "wall_s": round(proc.wall, 1),
                      "cpu_s": round(proc.cpu, 1), "peak_rss_mb": round(proc.maxrss_mb, 1), "rc": proc.rc}
            results.append(result)
            print(json.dumps(result), flush=True)
    return results


def _cpu_s_of(pid: int) -> float | None:
    """A live process's CPU time so far (user + system), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _worker_run(phase: str, n: int, src: Any, src_bucket: str, dst: Any, dst_bucket: str, db_url: str,
                work: Path, timeout: float, code: str) -> dict[str, Any]:
    """One migration task of the N keys on one `ferry worker`, coordinated by a `ferry serve` process: both
    processes' peak RSS (VmHWM) and their resident set sampled every second."""
    from sqlalchemy import select

    import distributed as dist
    from ferry.db.api_models import migration_tasks
    from ferry.serve import build
    from ferry.service.credentials import create_credential
    from ferry.service.tasks import create_task

    env = {**os.environ, "PYTHONPATH": code, "FERRY_DATABASE_URL": db_url,
           "FERRY_DATA_DIR": str(work / "server"), "FERRY_LOG_LEVEL": "INFO",
           "FERRY_BROKER_URL": f"{dist.REDIS}?namespace=bench-huge-{uuid.uuid4().hex[:8]}"}
    # The task is made in this process's database session (no runner here); `ferry serve` claims it.
    os.environ["FERRY_DATABASE_URL"] = db_url
    service = build(work / "server", db_url, run_tasks=False)
    project = create_credential(service.engine, service.box, uuid.uuid4().hex).project_id
    made = create_task(service.services.tasks, project, dist.task_req(src, src_bucket, dst, dst_bucket))
    task_id = int(made.id)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = dist.start_workers(1, env, work)
    with (work / "serve.log").open("ab") as log:
        server = subprocess.Popen([sys.executable, "-m", "ferry.cli", "serve", "--port", str(port)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, cwd=str(dist.ROOT))
    watched = {"worker": procs[0].pid, "server": server.pid}
    samples: dict[str, list[float]] = {name: [] for name in watched}
    load = [os.getloadavg()[0]]
    row: Any = None
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, pid in watched.items():
                rss = _rss_mb_of(pid)
                if rss is not None:
                    samples[name].append(rss)
            with service.engine.connect() as conn:
                row = conn.execute(select(migration_tasks).where(migration_tasks.c.id == task_id)).mappings().one()
            if row["status"] in (4, 5) or server.poll() is not None or procs[0].poll() is not None:
                break
            time.sleep(1.0)
        load.append(os.getloadavg()[0])
        peaks = {name: dist.peak_rss_mb(pid) for name, pid in watched.items()}
        cpu = {name: _cpu_s_of(pid) for name, pid in watched.items()}
    finally:
        dist.stop_workers([*procs, server])
        service.close()
    seconds = float(row["finished_at"] or time.time()) - float(row["run_started_at"] or time.time())
    done = row["success_num"] + row["skip_num"]
    out = {"mode": "worker", "keys": n, "phase": phase, "status": row["status"], "ok": row["status"] == 5 and
           done == n, "success": row["success_num"], "skipped": row["skip_num"], "failed": row["fail_num"],
           "task_s": round(seconds, 1), "keys_per_s": round(done / seconds) if seconds > 0 else None,
           "load_avg": [round(x, 1) for x in load],
           "worker_peak_rss_mb": peaks["worker"], "server_peak_rss_mb": peaks["server"],
           "worker_cpu_s": cpu["worker"], "server_cpu_s": cpu["server"]}
    for name, values in samples.items():
        # A dozen points along the run, to see whether the resident set grows with the keys done.
        out[f"{name}_rss_mb"] = [round(v) for v in values[:: max(1, len(values) // 12)]]
    return out


def run_worker(args: argparse.Namespace) -> list[dict[str, Any]]:
    import distributed as dist

    n = args.keys
    root = Path(args.data_dir)
    results: list[dict[str, Any]] = []
    phases = ["first", "rerun"] if args.phase == "both" else [args.phase]
    os.environ.setdefault("FERRY_MASTER_KEY", os.urandom(32).hex())
    with seaweed_pair(root) as (src, dst), tempfile.TemporaryDirectory(prefix="ferry-huge-worker-") as tmp:
        src_bucket = filled(src, f"huge-src-{n}", n, root, root / f"filled-{n}")
        if args.in_place:
            # The source bucket is its own in-step destination (both ends mapped to one server): the same two
            # listings, sorts, comparisons and skip results as a filled pair, without filling a second bucket.
            dst, phases = src, ["rerun"]
        os.environ["FERRY_ENDPOINT_OVERRIDES"] = json.dumps(
            {f"Aliyun/{dist.SRC_REGION}": src.endpoint, f"HuaweiCloud/{dist.DST_REGION}": dst.endpoint})
        db_url, (admin, name) = dist.fresh_database()
        try:
            for phase in phases:
                if phase == "first":
                    dst_bucket = dst.create_bucket(f"huge-wdst-{n}-{int(time.time())}")
                else:
                    dst_bucket = src_bucket if args.in_place else in_step_bucket(dst, n, root)
                work = Path(tmp) / phase
                work.mkdir()
                result = _worker_run(phase, n, src, src_bucket, dst, dst_bucket, db_url, work, args.timeout,
                                     args.baseline_src or str(dist.ROOT / "src"))
                result["code"] = args.baseline_src or "this tree"
                if phase == "first" and result["ok"]:
                    (root / f"in-step-{n}").write_text(dst_bucket)  # the rerun's destination from now on
                if not result["ok"] and args.logs:
                    shutil.copytree(work, Path(args.logs) / phase, dirs_exist_ok=True)
                results.append(result)
                print(json.dumps(result), flush=True)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("mode", choices=["memory", "seaweed", "worker", "_child"])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--phase", choices=["first", "rerun", "both"], default="both")
    parser.add_argument("--state", help="state directory (kept); default a fresh temp one, removed")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--unordered", action="store_true",
                        help="memory: both listings declared unordered (as SeaweedFS's): the planner sorts them")
    parser.add_argument("--data-dir", default=str(Path(__file__).parent / "out" / "huge-weed"),
                        help="seaweed: where both servers keep their data (the filled source is reused)")
    parser.add_argument("--rclone", action="store_true", help="seaweed: also time rclone's in-step rerun")
    parser.add_argument("--baseline-src", help="seaweed: also time the rerun by ferry from this src directory; "
                                               "worker: run the server and the worker from it")
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="worker: seconds a task may take")
    parser.add_argument("--in-place", action="store_true",
                        help="worker: an in-step rerun from the source bucket into itself (no second bucket to fill)")
    parser.add_argument("--logs", help="worker: keep the server's and worker's logs of a failed run here")
    args = parser.parse_args()
    if args.mode == "_child":
        print(json.dumps(asyncio.run(_memory_child(args.keys, args.phase, Path(args.state), args.concurrency,
                                                   args.tracemalloc, args.unordered))))
    elif args.mode == "memory":
        run_memory(args)
    elif args.mode == "worker":
        run_worker(args)
    else:
        run_seaweed(args)


if __name__ == "__main__":
    main()
