"""Ferry `migrate` against rclone (and the s5cmd PUT ceiling) between two local SeaweedFS servers, as ratios.

    .venv/bin/python bench/migrate_vs_rclone.py                          # every scenario, 2 repeats
    .venv/bin/python bench/migrate_vs_rclone.py --scenario small --repeat 3
    .venv/bin/python bench/migrate_vs_rclone.py --scenario all --profile  # plus a py-spy profile of ferry

Two `weed mini` servers run on 127.0.0.1 (different endpoints, so no tool can copy server-side). The source
is filled once with s5cmd from local files; every timed copy writes into a FRESH destination bucket on the
second server, which is "primed" first (one object put and deleted) so that the volume growth SeaweedFS does
on a bucket's first write is paid before the clock starts, equally for every tool. Tools run as child
processes, one at a time, in an order rotated between repeats; wall time, CPU time and peak RSS come from
os.wait4 of the child. Every copy is checked afterwards by listing the destination (count and bytes).

Scenarios (targets in brackets):
  small  10,000 x 4 KiB: ferry (default concurrency, and 32 / 128) vs `rclone copy --transfers 32
         --checkers 32` vs `s5cmd cp` of local files (64 workers: the raw PUT ceiling). [ferry >= 1.5x rclone]
  large  8 x 64 MiB: ferry vs `rclone copy --transfers 16`, MiB/s and peak RSS. [>= 1.0x, RSS < 300 MB]
  rerun  the small copy again with nothing changed, same command: time, and the GET/HEAD requests each
         server counted (SeaweedFS Prometheus metrics, HEAD counts as GET there); plus an in-process run of
         ferry.service.transfers.run_migration with counting backend wrappers. [>= 3x faster, zero GET/HEAD]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import compileall
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ferry
from ferry.objects import ObjectInfo, ObjectMeta, PutResult
from ferry.sandbox import HOST, SeaweedServer, find_binary, release_ports, reserve_ports
from ferry.storage.wrappers import BackendWrapper

KiB = 1024
MiB = 1024 * KiB
SMALL_COUNT = 10_000
SMALL_SIZE = 4 * KiB
LARGE_COUNT = 8
LARGE_SIZE = 64 * MiB
FERRY_VARIANTS = (32, 128)  # concurrency values tried besides the default
RCLONE_SMALL_FLAGS = ("--transfers", "32", "--checkers", "32")
RCLONE_LARGE_FLAGS = ("--transfers", "16")
S5CMD_WORKERS = 64
TARGET_SMALL = 1.5
TARGET_LARGE = 1.0
TARGET_RSS_MB = 300.0
TARGET_RERUN = 3.0
RUN_TIMEOUT = 900.0
BENCH_VOLUME_MB = 1024  # see MeteredSeaweed
REGION = "us-east-1"
OUT_DIR = Path(__file__).resolve().parent / "out"
REPO = Path(__file__).resolve().parent.parent


def code_version() -> str:
    """The commit under test, whether src/ differs from it, and a digest of the ferry package's sources.

    Other people commit while a long benchmark runs; comparing this at start and end tells whether every
    run measured the same code.
    """
    import ferry

    pkg = Path(ferry.__file__).resolve().parent
    digest = hashlib.sha256()
    for f in sorted(pkg.rglob("*")):
        if f.suffix in (".py", ".json") and f.is_file():
            digest.update(str(f.relative_to(pkg)).encode() + b"\0" + f.read_bytes())
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head, dirty = "?", ""
    state = f"+{len(dirty.splitlines())} changed files in src" if dirty else "clean"
    return f"commit {head or '?'} ({state}), ferry sources sha256 {digest.hexdigest()[:12]}"


# -- servers ----------------------------------------------------------------------------------------
class MeteredSeaweed(SeaweedServer):
    """`weed mini` with its Prometheus metrics on a free loopback port, to count requests from outside.

    Its volumes hold up to 1 GiB (SeaweedFS's own default is 30 GB): under the test suite's 64 MB limit nearly
    every 64 MiB object needs a freshly grown volume, and a growth holds every writer at once; the timed runs
    of both tools then had 1-2 s idle tails (7 of 8 PUTs answered in the same 10 ms), which decided the ratio.
    """

    def __init__(self) -> None:
        super().__init__(volume_size_limit_mb=BENCH_VOLUME_MB)
        self.metrics_port = 0

    def _spawn(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        (self.metrics_port,) = reserve_ports(1)
        super()._spawn([*argv, f"-metricsIp={HOST}", f"-metricsPort={self.metrics_port}"], log_path, env)

    def _kill(self, grace: float = 0.0) -> None:
        super()._kill(grace)
        if self.metrics_port:
            release_ports([self.metrics_port])
            self.metrics_port = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def request_counts(self) -> collections.Counter[str]:
        """S3 requests served so far, by SeaweedFS's type (GET includes HEAD; LIST; PUT; DELETE ...)."""
        url = f"http://{HOST}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        counts: collections.Counter[str] = collections.Counter()
        for m in re.finditer(r'^SeaweedFS_s3_request_total\{([^}]*)\} (\S+)$', text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            counts[labels.get("type", "?")] += int(float(m.group(2)))
        return counts

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far."""
        if self.pid is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def prime_bucket(self, name: str, prime: bool = True) -> str:
        """Create a fresh bucket; with `prime`, put and delete one object so volume growth is paid now."""
        self.create_bucket(name)
        if prime:
            for method, body in (("PUT", b"x"), ("DELETE", b"")):
                status, _ = self.request(method, f"/{name}/ferry-bench-prime", body=body)
                if status not in (200, 204):
                    raise RuntimeError(f"priming {name}: {method} answered HTTP {status}")
        return name

    def bucket_totals(self, bucket: str) -> tuple[int, int]:
        """(objects, bytes) in `bucket`, by our own signed ListObjectsV2 loop (independent of the tools)."""
        count = size = 0
        token: str | None = None
        while True:
            params = {"list-type": "2", "max-keys": "1000"}
            if token:
                params["continuation-token"] = token
            query = "&".join(f"{k}={urllib.parse.quote(v, safe='-_.~')}" for k, v in sorted(params.items()))
            status, body = self.request("GET", f"/{bucket}", query=query, timeout=60)
            if status != 200:
                raise RuntimeError(f"listing {bucket}: HTTP {status} {body[:200]!r}")
            root = ET.fromstring(body)
            ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            for c in root.iterfind(ns + "Contents"):
                count += 1
                size += int(c.findtext(ns + "Size") or 0)
            if (root.findtext(ns + "IsTruncated") or "").lower() != "true":
                return count, size
            token = root.findtext(ns + "NextContinuationToken")
            if not token:
                raise RuntimeError(f"listing {bucket}: truncated without a continuation token")


# -- child processes --------------------------------------------------------------------------------
@dataclass
class Proc:
    rc: int
    wall: float
    cpu: float
    sys_cpu: float
    maxrss_mb: float
    stdout: str
    stderr: str


def run_child(argv: Sequence[str], env: dict[str, str], timeout: float = RUN_TIMEOUT) -> Proc:
    """Run `argv` to the end; wall time from spawn to reap, CPU and peak RSS of that child from wait4."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        p = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                             start_new_session=True)
        timer = threading.Timer(timeout, lambda: _kill_group(p.pid))
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        wall = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        out.seek(0)
        err.seek(0)
        return Proc(p.returncode, wall, ru.ru_utime + ru.ru_stime, ru.ru_stime, ru.ru_maxrss / 1024,
                    out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def base_env() -> dict[str, str]:
    """The environment of every child, less anything that could point a tool at other stores."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "RCLONE_", "FERRY_", "S3_")) and k not in ("HTTP_PROXY", "HTTPS_PROXY",
                                                                                    "http_proxy", "https_proxy")}


@dataclass
class Bench:
    """Both servers, the tools, the source buckets and the scratch directory of one benchmark run."""

    src: MeteredSeaweed
    dst: MeteredSeaweed
    work: Path
    prime: bool
    small_count: int = SMALL_COUNT
    ferry: str = field(default_factory=lambda: find_binary("ferry"))
    rclone: str = field(default_factory=lambda: find_binary("rclone"))
    s5cmd: str = field(default_factory=lambda: find_binary("s5cmd"))

    # ---- tool command lines ----
    @property
    def small_expect(self) -> tuple[int, int]:
        return self.small_count, self.small_count * SMALL_SIZE

    def ferry_env(self) -> dict[str, str]:
        env = base_env()
        env.update(FERRY_SRC_AK=self.src.access_key, FERRY_SRC_SK=self.src.secret_key,
                   FERRY_DST_AK=self.dst.access_key, FERRY_DST_SK=self.dst.secret_key)
        return env

    def ferry_argv(self, src_bucket: str, dst_bucket: str, state: Path, concurrency: int | None) -> list[str]:
        argv = [self.ferry, "migrate", f"s3://{src_bucket}", f"s3://{dst_bucket}",
                "--src-endpoint", self.src.endpoint, "--dst-endpoint", self.dst.endpoint,
                "--src-profile", "seaweedfs", "--dst-profile", "seaweedfs",
                "--src-region", REGION, "--dst-region", REGION,
                "--state-dir", str(state), "--json", "--no-progress"]
        if concurrency is not None:
            argv += ["--concurrency", str(concurrency)]
        return argv

    def rclone_env(self) -> dict[str, str]:
        env = base_env()
        conf = self.work / "rclone.conf"
        conf.touch()
        env["RCLONE_CONFIG"] = str(conf)  # empty: the remotes below come from the environment only
        for name, server in (("SRC", self.src), ("DST", self.dst)):
            p = f"RCLONE_CONFIG_{name}_"
            env.update({p + "TYPE": "s3", p + "PROVIDER": "Other", p + "ENV_AUTH": "false",
                        p + "ACCESS_KEY_ID": server.access_key, p + "SECRET_ACCESS_KEY": server.secret_key,
                        p + "ENDPOINT": server.endpoint, p + "REGION": REGION, p + "FORCE_PATH_STYLE": "true"})
        return env

    def rclone_argv(self, src_bucket: str, dst_bucket: str, flags: Sequence[str]) -> list[str]:
        return [self.rclone, "copy", f"src:{src_bucket}", f"dst:{dst_bucket}", *flags]

    def s5cmd_env(self, server: MeteredSeaweed) -> dict[str, str]:
        env = base_env()
        env.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key,
                   AWS_REGION=REGION, AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
        return env

    def s5cmd_put_argv(self, server: MeteredSeaweed, local_dir: Path, bucket: str) -> list[str]:
        return [self.s5cmd, "--endpoint-url", server.endpoint, "--numworkers", str(S5CMD_WORKERS),
                "cp", f"{local_dir}/*", f"s3://{bucket}/"]


# -- results ----------------------------------------------------------------------------------------
@dataclass
class Result:
    scenario: str
    tool: str
    repeat: int
    wall: float
    objects: int
    nbytes: int
    cpu: float
    sys_cpu: float
    maxrss_mb: float
    server_cpu: float
    rc: int
    requests_src: dict[str, int] = field(default_factory=dict)
    requests_dst: dict[str, int] = field(default_factory=dict)
    note: str = ""

    @property
    def objects_per_s(self) -> float:
        return self.objects / self.wall if self.wall else 0.0

    @property
    def mib_per_s(self) -> float:
        return self.nbytes / MiB / self.wall if self.wall else 0.0


def measured(bench: Bench, scenario: str, tool: str, repeat: int, argv: Sequence[str], env: dict[str, str],
             *, expect: tuple[int, int] | None, dst_bucket: str | None) -> Result:
    """Run one tool with server request and CPU counters read around it; check the destination after."""
    req_src, req_dst = bench.src.request_counts(), bench.dst.request_counts()
    cpu0 = bench.src.cpu_seconds() + bench.dst.cpu_seconds()
    proc = run_child(argv, env)
    server_cpu = bench.src.cpu_seconds() + bench.dst.cpu_seconds() - cpu0
    d_src = dict(bench.src.request_counts() - req_src)
    d_dst = dict(bench.dst.request_counts() - req_dst)
    note = ""
    if proc.rc != 0:
        note = f"exit {proc.rc}: {(proc.stderr or proc.stdout).strip()[-300:]}"
    objects, nbytes = expect if expect is not None else (0, 0)
    if dst_bucket is not None and expect is not None:
        got = bench.dst.bucket_totals(dst_bucket)
        if got != expect:
            note = (note + "; " if note else "") + f"destination holds {got[0]} objects / {got[1]} bytes, " \
                                                   f"expected {expect[0]} / {expect[1]}"
    if tool.startswith("ferry") and proc.stdout.strip():
        with contextlib.suppress(ValueError, IndexError):
            summary = json.loads(proc.stdout.strip().splitlines()[-1])
            extra = f"ferry: {summary['success']} copied, {summary['skipped']} skipped, {summary['failed']} failed"
            note = (note + "; " if note else "") + extra
    r = Result(scenario, tool, repeat, proc.wall, objects, nbytes, proc.cpu, proc.sys_cpu, proc.maxrss_mb, server_cpu,
               proc.rc,
               d_src, d_dst, note)
    _print_row(r)
    return r


HEADER = (f"{'scenario':<8} {'tool':<24} {'rep':>3} {'wall s':>8} {'obj/s':>8} {'MiB/s':>8} {'cpu s':>7} {'sys s':>6} "
          f"{'RSS MB':>7} {'srv cpu':>7} {'src GET':>7} {'dst GET':>7}  note")


def _print_row(r: Result) -> None:
    print(f"{r.scenario:<8} {r.tool:<24} {r.repeat:>3} {r.wall:>8.2f} {r.objects_per_s:>8.0f} {r.mib_per_s:>8.1f} "
          f"{r.cpu:>7.2f} {r.sys_cpu:>6.2f} {r.maxrss_mb:>7.0f} {r.server_cpu:>7.2f} {r.requests_src.get('GET', 0):>7} "
          f"{r.requests_dst.get('GET', 0):>7}  {r.note}", flush=True)


# -- data -------------------------------------------------------------------------------------------
def make_local_data(root: Path, small_count: int) -> tuple[Path, Path]:
    """`small_count` (10,000) x 4 KiB files under 16 subdirectories, and 8 x 64 MiB files, of random bytes."""
    small, large = root / "small", root / "large"
    for i in range(small_count):
        d = small / f"d{i % 16:02d}"
        if i < 16:
            d.mkdir(parents=True)
        (d / f"obj-{i:05d}.bin").write_bytes(os.urandom(SMALL_SIZE))
    large.mkdir()
    for i in range(LARGE_COUNT):
        with (large / f"big-{i}.bin").open("wb") as fh:
            for _ in range(LARGE_SIZE // (4 * MiB)):
                fh.write(os.urandom(4 * MiB))
    return small, large


def populate(bench: Bench, local: Path, bucket: str, expect: tuple[int, int]) -> float:
    """s5cmd cp of local files into `bucket` on the source server; returns the seconds it took."""
    bench.src.prime_bucket(bucket, bench.prime)
    proc = run_child(bench.s5cmd_put_argv(bench.src, local, bucket), bench.s5cmd_env(bench.src))
    got = bench.src.bucket_totals(bucket)
    if proc.rc != 0 or got != expect:
        raise RuntimeError(f"populating {bucket}: exit {proc.rc}, holds {got}, expected {expect}: "
                           f"{proc.stderr[-500:]}")
    return proc.wall


# -- scenarios --------------------------------------------------------------------------------------
LARGE_EXPECT = (LARGE_COUNT, LARGE_COUNT * LARGE_SIZE)


@dataclass
class SmallState:
    """What the rerun scenario re-runs: the last ferry (default concurrency) and rclone copies."""

    ferry_argv: list[str] | None = None
    ferry_bucket: str | None = None
    rclone_argv: list[str] | None = None
    rclone_bucket: str | None = None


def _rotated(items: list[str], k: int) -> list[str]:
    k %= len(items)
    return items[k:] + items[:k]


def small_scenario(bench: Bench, repeats: int, local_small: Path, state: SmallState,
                   variants: Sequence[int]) -> list[Result]:
    results: list[Result] = []
    tools = ["ferry", "rclone", "s5cmd", *(f"ferry-c{c}" for c in variants)]
    for rep in range(1, repeats + 1):
        for tool in _rotated(tools, rep - 1):
            bucket = bench.dst.prime_bucket(f"small-{tool}-r{rep}", bench.prime)
            if tool.startswith("ferry"):
                conc = int(tool.removeprefix("ferry-c")) if tool != "ferry" else None
                sdir = bench.work / f"state-{bucket}"
                argv = bench.ferry_argv("src-small", bucket, sdir, conc)
                label = f"ferry c={conc or 'default(64)'}"
                results.append(measured(bench, "small", label, rep, argv, bench.ferry_env(),
                                        expect=bench.small_expect, dst_bucket=bucket))
                if conc is None:
                    state.ferry_argv, state.ferry_bucket = argv, bucket
            elif tool == "rclone":
                argv = bench.rclone_argv("src-small", bucket, RCLONE_SMALL_FLAGS)
                results.append(measured(bench, "small", "rclone t32/c32", rep, argv, bench.rclone_env(),
                                        expect=bench.small_expect, dst_bucket=bucket))
                state.rclone_argv, state.rclone_bucket = argv, bucket
            else:
                argv = bench.s5cmd_put_argv(bench.dst, local_small, bucket)
                results.append(measured(bench, "small", "s5cmd put (ceiling)", rep, argv,
                                        bench.s5cmd_env(bench.dst), expect=bench.small_expect, dst_bucket=bucket))
    return results


def large_scenario(bench: Bench, repeats: int) -> list[Result]:
    results: list[Result] = []
    for rep in range(1, repeats + 1):
        for tool in _rotated(["ferry", "rclone"], rep - 1):
            bucket = bench.dst.prime_bucket(f"large-{tool}-r{rep}", bench.prime)
            if tool == "ferry":
                argv = bench.ferry_argv("src-large", bucket, bench.work / f"state-{bucket}", None)
                results.append(measured(bench, "large", "ferry c=default(64)", rep, argv, bench.ferry_env(),
                                        expect=LARGE_EXPECT, dst_bucket=bucket))
            else:
                argv = bench.rclone_argv("src-large", bucket, RCLONE_LARGE_FLAGS)
                results.append(measured(bench, "large", "rclone t16", rep, argv, bench.rclone_env(),
                                        expect=LARGE_EXPECT, dst_bucket=bucket))
    return results


def rerun_scenario(bench: Bench, repeats: int, state: SmallState) -> tuple[list[Result], dict[str, int]]:
    """The same commands again with nothing changed; returns the runs and the in-process call counts."""
    if state.ferry_argv is None or state.rclone_argv is None:
        print("(rerun: first the initial copies it re-runs)", flush=True)
        bucket = bench.dst.prime_bucket("rerun-ferry", bench.prime)
        state.ferry_argv = bench.ferry_argv("src-small", bucket, bench.work / "state-rerun-ferry", None)
        state.ferry_bucket = bucket
        measured(bench, "setup", "ferry c=default(64)", 0, state.ferry_argv, bench.ferry_env(),
                 expect=bench.small_expect, dst_bucket=bucket)
        bucket = bench.dst.prime_bucket("rerun-rclone", bench.prime)
        state.rclone_argv, state.rclone_bucket = bench.rclone_argv("src-small", bucket, RCLONE_SMALL_FLAGS), bucket
        measured(bench, "setup", "rclone t32/c32", 0, state.rclone_argv, bench.rclone_env(),
                 expect=bench.small_expect, dst_bucket=bucket)
    results: list[Result] = []
    for rep in range(1, repeats + 1):
        for tool in _rotated(["ferry", "rclone"], rep - 1):
            if tool == "ferry":
                results.append(measured(bench, "rerun", "ferry (same command)", rep, state.ferry_argv,
                                        bench.ferry_env(), expect=bench.small_expect, dst_bucket=state.ferry_bucket))
            else:
                results.append(measured(bench, "rerun", "rclone t32/c32", rep, state.rclone_argv,
                                        bench.rclone_env(), expect=bench.small_expect, dst_bucket=state.rclone_bucket))
    assert state.ferry_bucket is not None
    calls = asyncio.run(counted_rerun(bench, state.ferry_bucket))
    return results, calls


class CountingBackend(BackendWrapper):
    """Counts every call that reaches the real backend (put under the retry wrapper, so retries count)."""

    def __init__(self, inner: Any, side: str, counts: collections.Counter[str]) -> None:
        super().__init__(inner)
        self.side = side
        self.counts = counts

    def _count(self, op: str) -> None:
        self.counts[f"{self.side}.{op}"] += 1

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        self._count("list")
        async for info in super().list(prefix, start_after):
            yield info

    async def head(self, key: str) -> ObjectInfo:
        self._count("head")
        return await super().head(key)

    async def read(self, key: str, *, offset: int = 0, length: int | None = None,
                   if_match: str | None = None) -> bytes:
        self._count("read")
        return await super().read(key, offset=offset, length=length, if_match=if_match)

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        self._count("read_object")
        return await super().read_object(key, if_match=if_match)

    async def put(self, key: str, data: bytes, meta: ObjectMeta, *, storage_class: str | None = None,
                  crc64: int | None = None) -> PutResult:
        self._count("put")
        return await super().put(key, data, meta, storage_class=storage_class, crc64=crc64)


async def counted_rerun(bench: Bench, dst_bucket: str) -> dict[str, int]:
    """The rerun in-process, through run_migration with the CLI's backend stack and a counting layer."""
    from ferry.db.database import open_database
    from ferry.db.job_repo import JobRepo
    from ferry.engine.pipeline import TransferOptions
    from ferry.service.transfers import run_migration
    from ferry.storage.registry import open_backend
    from ferry.storage.wrappers import RetryingBackend

    counts: collections.Counter[str] = collections.Counter()
    src = RetryingBackend(CountingBackend(open_backend(
        "s3://src-small", endpoint=bench.src.endpoint, region=REGION, access_key=bench.src.access_key,
        secret_key=bench.src.secret_key, profile="seaweedfs"), "src", counts))
    dst = RetryingBackend(CountingBackend(open_backend(
        f"s3://{dst_bucket}", endpoint=bench.dst.endpoint, region=REGION, access_key=bench.dst.access_key,
        secret_key=bench.dst.secret_key, profile="seaweedfs"), "dst", counts))
    state = bench.work / "state-counted-rerun"
    repo = JobRepo(open_database(f"sqlite:///{state / 'ferry.db'}"))
    opts = TransferOptions()
    req_src, req_dst = bench.src.request_counts(), bench.dst.request_counts()
    try:
        summary = await run_migration(src, dst, repo, opts, report_dir=state / "reports")
    finally:
        await asyncio.gather(src.close(), dst.close(), return_exceptions=True)
    out = dict(counts)
    out["summary.success"], out["summary.skipped"], out["summary.failed"] = (
        summary.success, summary.skipped, summary.failed)
    for side, before, server in (("src", req_src, bench.src), ("dst", req_dst, bench.dst)):
        for kind, n in (server.request_counts() - before).items():
            out[f"server.{side}.{kind}"] = n
    return out


# -- profile ----------------------------------------------------------------------------------------
def profile_ferry(bench: Bench, rate: int = 250) -> None:
    """One more small copy under `py-spy record --gil` (not timed): where ferry's Python CPU goes.

    Only the thread holding the GIL is sampled, so time a thread spends in a system call (a loopback send,
    which may be preempted by the server it woke) does not count; that kernel time is the "sys s" column.
    """
    pyspy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if pyspy is None:
        print("\n(--profile: py-spy not found; `.venv/bin/pip install py-spy`)")
        return
    bucket = bench.dst.prime_bucket("profile-ferry", bench.prime)
    raw = bench.work / "ferry-small.pyspy.txt"
    argv = [pyspy, "record", "--rate", str(rate), "--nonblocking", "--gil", "--format", "raw", "--output", str(raw),
            "--", *bench.ferry_argv("src-small", bucket, bench.work / "state-profile", None)]
    proc = run_child(argv, bench.ferry_env())
    if not raw.exists():
        print(f"\n(--profile: py-spy failed: {proc.stderr.strip()[-300:]})")
        return
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [_short_frame(f) for f in stack.split(";")]
        total += int(n)
        self_t[frames[-1]] += int(n)
        for f in set(frames):
            incl[f] += int(n)
    kept = OUT_DIR / "ferry-small.pyspy.txt"
    OUT_DIR.mkdir(exist_ok=True)
    shutil.copyfile(raw, kept)
    print(f"\nPROFILE ferry small copy under py-spy --gil ({total} samples holding the GIL at {rate}/s; "
          f"wall {proc.wall:.1f}s, cpu {proc.cpu:.1f}s; raw stacks in {kept})")
    print("  self %   function                                  | incl %   function")
    left, right = self_t.most_common(22), [x for x in incl.most_common(40) if x[0] != "<module>"][:22]
    for (fs, ns), (fi, ni) in zip(left, right, strict=False):
        print(f"  {100 * ns / total:5.1f}   {fs[:42]:<42} | {100 * ni / total:5.1f}   {fi[:60]}")


def _short_frame(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py)"
    m = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not m:
        return frame
    return f"{m.group(1)} ({Path(m.group(2)).name})"


# -- reporting --------------------------------------------------------------------------------------
def _stats(values: list[float]) -> tuple[float, float]:
    return (max(values), statistics.median(values)) if values else (0.0, 0.0)


def _total_cpu(r: Result) -> float:
    return r.cpu + r.server_cpu


def _cpu_ratio(ratios: dict[str, Any], scenario: str, ferry: list[Result], rclone: list[Result]) -> None:
    """rclone's CPU (tool + both servers) over ferry's, medians: what decides a dedicated 2-core machine,
    and much steadier than wall time when other work shares the machine."""
    fc = statistics.median(_total_cpu(r) for r in ferry)
    rc = statistics.median(_total_cpu(r) for r in rclone)
    ratios[f"{scenario}_rclone_over_ferry_total_cpu_median"] = round(rc / fc, 3)
    print(f"         CPU-s tool+servers per run (median): ferry {fc:.1f}, rclone {rc:.1f} -> rclone/ferry "
          f"{rc / fc:.2f}x (steadier than wall time on a shared machine)")


def _paired(a: list[Result], b: list[Result], metric: Callable[[Result], float]) -> list[float]:
    """metric(a) / metric(b) for the runs of the same repeat (they ran minutes apart at most)."""
    bs = {r.repeat: metric(r) for r in b}
    return [round(metric(r) / bs[r.repeat], 3) for r in a if bs.get(r.repeat)]


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(results: list[Result], calls: dict[str, int] | None, ferry_import_s: float | None) -> dict[str, Any]:
    ratios: dict[str, Any] = {}
    by: dict[tuple[str, str], list[Result]] = collections.defaultdict(list)
    for r in results:
        by[(r.scenario, r.tool)].append(r)
    print("\nSUMMARY (best / median over repeats)")
    for (scenario, tool), rs in by.items():
        ok = [r for r in rs if r.rc == 0]
        if scenario == "large":
            best, med = _stats([r.mib_per_s for r in ok])
            rss = max((r.maxrss_mb for r in rs), default=0.0)
            print(f"  {scenario:<6} {tool:<24} {best:8.1f} / {med:8.1f} MiB/s   peak RSS {rss:.0f} MB  (n={len(rs)})")
        elif scenario == "rerun":
            walls = [r.wall for r in ok]
            print(f"  {scenario:<6} {tool:<24} {min(walls, default=0):8.2f} / "
                  f"{statistics.median(walls) if walls else 0:8.2f} s       (n={len(rs)})")
        else:
            best, med = _stats([r.objects_per_s for r in ok])
            print(f"  {scenario:<6} {tool:<24} {best:8.0f} / {med:8.0f} objects/s  (n={len(rs)})")
    if ferry_import_s is not None:
        print(f"  (ferry's own process start: importing what runs before data moves takes {ferry_import_s:.2f} s "
              "of every run; the job database opens alongside the copy)")

    print("\nRATIOS")

    def pick(scenario: str, tool: str) -> list[Result]:
        return [r for r in by.get((scenario, tool), []) if r.rc == 0 and "expected" not in r.note]

    f_small, r_small, s_small = pick("small", "ferry c=default(64)"), pick("small", "rclone t32/c32"), pick(
        "small", "s5cmd put (ceiling)")
    if f_small and r_small:
        fb, fm = _stats([r.objects_per_s for r in f_small])
        rb, rm = _stats([r.objects_per_s for r in r_small])
        ratio = fm / rm
        paired = _paired(f_small, r_small, lambda r: r.objects_per_s)
        ratios["small_ferry_over_rclone_median"] = round(ratio, 3)
        ratios["small_ferry_over_rclone_best"] = round(fb / rb, 3)
        ratios["small_ferry_over_rclone_paired"] = paired
        print(f"  small  ferry/rclone objects/s: median {ratio:.2f}x, best {fb / rb:.2f}x "
              f"({fm:.0f} vs {rm:.0f} obj/s median)   target >= {TARGET_SMALL}x  {_verdict(ratio >= TARGET_SMALL)}")
        print(f"         same-repeat pairs: {', '.join(f'{x:.2f}x' for x in paired)}")
        for c in FERRY_VARIANTS:
            v = pick("small", f"ferry c={c}")
            if v:
                vb, vm = _stats([r.objects_per_s for r in v])
                ratios[f"small_ferry_c{c}_over_rclone_median"] = round(vm / rm, 3)
                print(f"  small  ferry c={c:<3}/rclone:        median {vm / rm:.2f}x, best {vb / rb:.2f}x")
        if s_small:
            _, sm = _stats([r.objects_per_s for r in s_small])
            ratios["small_ferry_over_s5cmd_ceiling_median"] = round(fm / sm, 3)
            ratios["small_rclone_over_s5cmd_ceiling_median"] = round(rm / sm, 3)
            print(f"  small  share of the s5cmd PUT ceiling ({sm:.0f} obj/s median): ferry {fm / sm:.0%}, "
                  f"rclone {rm / sm:.0%}")
        _cpu_ratio(ratios, "small", f_small, r_small)
    f_large, r_large = pick("large", "ferry c=default(64)"), pick("large", "rclone t16")
    if f_large and r_large:
        fb, fm = _stats([r.mib_per_s for r in f_large])
        rb, rm = _stats([r.mib_per_s for r in r_large])
        rss = max(r.maxrss_mb for r in by[("large", "ferry c=default(64)")])
        rrss = max(r.maxrss_mb for r in by[("large", "rclone t16")])
        ratios["large_ferry_over_rclone_median"] = round(fm / rm, 3)
        ratios["large_ferry_over_rclone_paired"] = _paired(f_large, r_large, lambda r: r.mib_per_s)
        ratios["large_ferry_peak_rss_mb"] = round(rss, 1)
        print(f"  large  ferry/rclone MiB/s: median {fm / rm:.2f}x, best {fb / rb:.2f}x "
              f"({fm:.1f} vs {rm:.1f} MiB/s median)   target >= {TARGET_LARGE}x  {_verdict(fm / rm >= TARGET_LARGE)}")
        print(f"         same-repeat pairs: "
              f"{', '.join(f'{x:.2f}x' for x in ratios['large_ferry_over_rclone_paired'])}")
        _cpu_ratio(ratios, "large", f_large, r_large)
        print(f"  large  ferry peak RSS {rss:.0f} MB (rclone {rrss:.0f} MB)   target < {TARGET_RSS_MB:.0f} MB  "
              f"{_verdict(rss < TARGET_RSS_MB)}")
    f_re, r_re = pick("rerun", "ferry (same command)"), pick("rerun", "rclone t32/c32")
    if f_re and r_re:
        fmed = statistics.median(r.wall for r in f_re)
        rmed = statistics.median(r.wall for r in r_re)
        gets = max(r.requests_src.get("GET", 0) + r.requests_dst.get("GET", 0) for r in f_re)
        rgets = statistics.median(r.requests_src.get("GET", 0) + r.requests_dst.get("GET", 0) for r in r_re)
        ratios["rerun_rclone_over_ferry_time_median"] = round(rmed / fmed, 3)
        ratios["rerun_ferry_get_head_requests_max"] = gets
        print(f"  rerun  rclone/ferry time: median {rmed / fmed:.2f}x ({fmed:.2f} s vs {rmed:.2f} s)   "
              f"target >= {TARGET_RERUN}x  {_verdict(rmed / fmed >= TARGET_RERUN)}")
        print(f"  rerun  ferry GET+HEAD requests counted by the servers: {gets} (rclone: {rgets:.0f})   "
              f"target 0  {_verdict(gets == 0)}")
        if calls is not None:
            reads = sum(v for k, v in calls.items() if k.split(".")[-1] in ("head", "read", "read_object"))
            ratios["rerun_in_process_calls"] = calls
            shown = ", ".join(f"{k}={v}" for k, v in sorted(calls.items()))
            print(f"  rerun  in-process run_migration, backend calls: {shown}")
            print(f"  rerun  in-process head/read calls: {reads}   target 0  {_verdict(reads == 0)}")
    return ratios


def ferry_import_seconds(bench: Bench) -> float:
    """Wall time of a child that only imports what `ferry migrate` imports before data moves (median of 3);
    the job database (SQLAlchemy) is imported and opened in a thread alongside the copy."""
    code = ("import ferry.cli, ferry.storage.s3, ferry.storage.registry, ferry.storage.wrappers, "
            "ferry.engine.pipeline, ferry.engine.progress, ferry.db.deferred, ferry.service.transfers")
    return statistics.median(run_child([sys.executable, "-c", code], base_env()).wall for _ in range(3))


# -- main -------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--scenario", choices=["small", "large", "rerun", "all"], default="all")
    p.add_argument("--repeat", type=int, default=2, help="repeats of each scenario (default 2)")
    p.add_argument("--variants", default=",".join(map(str, FERRY_VARIANTS)),
                   help="extra ferry --concurrency values for the small scenario, comma separated ('' for none)")
    p.add_argument("--small-objects", type=int, default=SMALL_COUNT,
                   help=f"objects in the small scenario (default {SMALL_COUNT}; fewer only for a smoke test)")
    p.add_argument("--no-prime", action="store_true",
                   help="do not pre-grow each fresh destination bucket's volumes before the clock starts")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up copies")
    p.add_argument("--profile", action="store_true", help="also profile one ferry small copy with py-spy")
    p.add_argument("--json-out", type=Path, default=None, help=f"results as JSON (default {OUT_DIR}/...)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    variants = [int(v) for v in args.variants.split(",") if v.strip()]
    scenarios = ["small", "large", "rerun"] if args.scenario == "all" else [args.scenario]

    work = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    results: list[Result] = []
    calls: dict[str, int] | None = None
    try:
        with MeteredSeaweed() as src, MeteredSeaweed() as dst:
            load0 = round(os.getloadavg()[0], 2)
            version0 = code_version()
            print(f"code under test: {version0}", flush=True)
            # As installed: bytecode cached for every module, as scripts/bootstrap.sh leaves it. Edited since,
            # every ferry run would compile the changed modules again (PYTHONDONTWRITEBYTECODE may forbid
            # caching them) and the timings would include it.
            compileall.compile_dir(Path(ferry.__file__).parent, quiet=1)
            bench = Bench(src, dst, work, prime=not args.no_prime, small_count=args.small_objects)
            print(f"source {src.endpoint}, destination {dst.endpoint}; tools: {bench.ferry}, {bench.rclone}, "
                  f"{bench.s5cmd}; cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}", flush=True)
            t = time.monotonic()
            local_small, local_large = make_local_data(work / "data", args.small_objects)
            print(f"local data written in {time.monotonic() - t:.1f}s", flush=True)
            need_small = any(s in scenarios for s in ("small", "rerun")) or args.profile
            if need_small:
                w = populate(bench, local_small, "src-small", bench.small_expect)
                print(f"source src-small: {bench.small_count} x {SMALL_SIZE // KiB} KiB populated by s5cmd in {w:.1f}s",
                      flush=True)
            if "large" in scenarios:
                w = populate(bench, local_large, "src-large", LARGE_EXPECT)
                print(f"source src-large: {LARGE_COUNT} x {LARGE_SIZE // MiB} MiB populated by s5cmd in {w:.1f}s",
                      flush=True)
            if not args.no_warmup:
                # Untimed: warm both servers' read/write paths, the page cache and every tool's binary.
                t = time.monotonic()
                if need_small:
                    b = dst.prime_bucket("warmup-ferry", bench.prime)
                    run_child(bench.ferry_argv("src-small", b, work / "state-warmup", None), bench.ferry_env())
                    b = dst.prime_bucket("warmup-rclone", bench.prime)
                    run_child(bench.rclone_argv("src-small", b, RCLONE_SMALL_FLAGS), bench.rclone_env())
                    b = dst.prime_bucket("warmup-s5cmd", bench.prime)
                    run_child(bench.s5cmd_put_argv(dst, local_small, b), bench.s5cmd_env(dst))
                print(f"warm-up done in {time.monotonic() - t:.1f}s", flush=True)
            import_s = ferry_import_seconds(bench)
            print(f"\n{HEADER}", flush=True)
            state = SmallState()
            if "small" in scenarios:
                results += small_scenario(bench, args.repeat, local_small, state, variants)
            if "large" in scenarios:
                if not args.no_warmup:
                    # Right before the timed runs, not with the others: a whole small scenario in between
                    # leaves the servers cold for large writes, and the first tool timed would pay for it.
                    b = dst.prime_bucket("warmup-large", bench.prime)
                    run_child(bench.rclone_argv("src-large", b, RCLONE_LARGE_FLAGS), bench.rclone_env())
                results += large_scenario(bench, args.repeat)
            if "rerun" in scenarios:
                rr, calls = rerun_scenario(bench, args.repeat, state)
                results += rr
            if args.profile:
                profile_ferry(bench)
            ratios = report(results, calls, import_s)
            ratios["load_average_1m_start_end"] = [load0, round(os.getloadavg()[0], 2)]
            version1 = code_version()
            ratios["code_under_test"] = version0
            if version1 != version0:
                ratios["code_under_test_at_end"] = version1
                print(f"\nWARNING: the ferry sources changed during the run ({version0} -> {version1}); "
                      "runs before and after measured different code")
            busy = "other work was running: expect noise" if load0 > 1.0 else "the machine was quiet"
            print(f"\nload average (1 min) before the servers started {load0:.1f} on {os.cpu_count()} cpus "
                  f"({busy}); at the end {os.getloadavg()[0]:.1f} (this benchmark's own work included)")
            print("\nflags: ferry migrate --src-profile seaweedfs --dst-profile seaweedfs --json --no-progress "
                  "[--concurrency N] (its defaults otherwise: see `ferry migrate --help`); "
                  f"rclone copy {' '.join(RCLONE_SMALL_FLAGS)} (small) / "
                  f"{' '.join(RCLONE_LARGE_FLAGS)} (large), s3 provider Other, path style, defaults otherwise; "
                  f"s5cmd --numworkers {S5CMD_WORKERS} cp; destination buckets "
                  f"{'primed' if bench.prime else 'not primed'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = args.json_out or OUT_DIR / f"migrate_vs_rclone-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": [asdict(r) for r in results], "ratios": ratios}, indent=1))
    print(f"results: {out}")
    return 0 if all(r.rc == 0 and "expected" not in r.note for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
