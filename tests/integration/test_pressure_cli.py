"""`ferry migrate` under a hostile network (tests/faultproxy.py): throttling, storms, resets, stalls, black holes.

Every run must end on its own, within a bounded time, with every object copied or failed with a clear reason.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

from cli_helpers import Run, ferry_env, migrate_argv, run_ferry, s3_client

from faultproxy import Blackhole, FaultProxy, RateCap, Reset, Stall, Status

MiB = 1024 * 1024


def _fill(client: Any, bucket: str, count: int, size: int = 1000, prefix: str = "o/") -> dict[str, bytes]:
    bodies = {f"{prefix}{i:05d}": os.urandom(size) for i in range(count)}
    for key, body in bodies.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return bodies


def _copied(client: Any, bucket: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["ETag"].strip('"')
    return out


def _md5s(bodies: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.md5(v).hexdigest() for k, v in bodies.items()}


@pytest.fixture
def stores(seaweed_a: Any, seaweed_b: Any, bucket_factory: Any, fault_proxy: Any) -> dict[str, Any]:
    """A source bucket on seaweed_a behind a fault proxy, and an empty destination bucket on seaweed_b."""
    return {"src": seaweed_a, "dst": seaweed_b, "sb": bucket_factory(seaweed_a), "db": bucket_factory(seaweed_b),
            "proxy": fault_proxy(seaweed_a)}


def _migrate(stores: dict[str, Any], tmp_path: Path, *extra: str, env: dict[str, str] | None = None,
             dst_endpoint: str | None = None, timeout: float = 120,
             during: Callable[[], None] | None = None) -> tuple[Run, float]:
    proxy: FaultProxy = stores["proxy"]
    argv = migrate_argv(stores["src"], stores["sb"], stores["dst"], stores["db"], tmp_path / "state", *extra)
    argv[argv.index("--src-endpoint") + 1] = proxy.endpoint
    if dst_endpoint is not None:
        argv[argv.index("--dst-endpoint") + 1] = dst_endpoint
    started = time.monotonic()
    env = {**ferry_env(stores["src"], stores["dst"]), **(env or {})}
    if during is None:
        return run_ferry(argv, env, timeout=timeout), time.monotonic() - started
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        try:
            during()
            out, err = p.communicate(timeout=timeout)
        finally:
            p.kill()
    return Run(p.returncode, out, err), time.monotonic() - started


def test_a_store_capped_at_n_requests_per_second_is_copied_whole_near_n(stores: dict[str, Any],
                                                                        tmp_path: Path) -> None:
    src = s3_client(stores["src"])
    bodies = _fill(src, stores["sb"], 240)
    cap = 60.0
    rule = stores["proxy"].add(RateCap(per_second=cap, burst=cap / 2))
    run, elapsed = _migrate(stores, tmp_path, "--concurrency", "64")
    assert run.code == 0, run.stderr
    assert run.summary["failed"] == 0 and run.summary["success"] == len(bodies)
    assert _copied(s3_client(stores["dst"]), stores["db"]) == _md5s(bodies)
    accepted = rule.matched - rule.fired
    sent_rate, accepted_rate = rule.matched / elapsed, accepted / elapsed
    print(f"cap {cap}/s: {rule.matched} requests ({rule.fired} refused) in {elapsed:.1f}s: "
          f"sent {sent_rate:.1f}/s, accepted {accepted_rate:.1f}/s")
    assert rule.fired > 0  # the cap bound
    # Without backing off, 64 workers against a local store send thousands of requests a second and most are
    # refused; adapting, Ferry sends about as many as the store takes. (Generous: a loaded machine is noisy.)
    assert rule.fired < rule.matched // 2
    assert sent_rate < 2.5 * cap
    assert "throttling" in run.stderr  # said once in a while, not per request
    assert run.stderr.count("throttling") < 20


def test_a_503_storm_is_survived_without_failing_an_object(stores: dict[str, Any], tmp_path: Path) -> None:
    bodies = _fill(s3_client(stores["src"]), stores["sb"], 300)
    proxy: FaultProxy = stores["proxy"]
    storm = None

    def storm_for_three_seconds() -> None:
        nonlocal storm
        proxy.wait(lambda: proxy.methods["GET"] > 30)  # under way at full speed
        storm = proxy.add(Status(503), method="GET", key="^o/")
        time.sleep(3)
        proxy.remove(storm)

    run, elapsed = _migrate(stores, tmp_path, "--concurrency", "16", during=storm_for_three_seconds)
    assert run.code == 0, run.stderr
    assert storm is not None and storm.fired > 0 and run.summary["failed"] == 0
    assert _copied(s3_client(stores["dst"]), stores["db"]) == _md5s(bodies)
    assert elapsed < 60  # back to speed soon after the storm


def test_429_with_retry_after_is_waited_out(stores: dict[str, Any], tmp_path: Path) -> None:
    bodies = _fill(s3_client(stores["src"]), stores["sb"], 20)
    rule = stores["proxy"].add(Status(429, retry_after=1), method="GET", key="^o/", first=20)
    run, elapsed = _migrate(stores, tmp_path)
    assert run.code == 0, run.stderr
    assert rule.fired == 20 and run.summary["failed"] == 0 and elapsed >= 1
    assert _copied(s3_client(stores["dst"]), stores["db"]) == _md5s(bodies)


@pytest.mark.parametrize("fault", [Status(500), Reset(after=300)], ids=["always-500", "always-reset"])
def test_one_bad_object_fails_with_its_reason_and_the_run_finishes(stores: dict[str, Any], tmp_path: Path,
                                                                   fault: Any) -> None:
    src = s3_client(stores["src"])
    bodies = _fill(src, stores["sb"], 40)
    src.put_object(Bucket=stores["sb"], Key="bad", Body=os.urandom(5000))
    rule = stores["proxy"].add(fault, method="GET", key="^bad$")
    run, elapsed = _migrate(stores, tmp_path, "--concurrency", "8")
    assert run.code == 1, run.stderr
    assert run.summary["failed"] == 1 and run.summary["success"] == len(bodies)
    assert rule.fired >= 5
    report = next((tmp_path / "state" / "reports").glob("*"))
    text = report.read_text()
    assert '"bad"' in text and ("gave up" in text or "spent" in text), text
    assert "InternalError" in text if isinstance(fault, Status) else "reset" in text
    assert elapsed < 60
    assert _copied(s3_client(stores["dst"]), stores["db"]) == _md5s(bodies)


def test_a_source_that_stops_sending_mid_body_is_read_again(stores: dict[str, Any], tmp_path: Path) -> None:
    bodies = _fill(s3_client(stores["src"]), stores["sb"], 10, size=200_000)
    rule = stores["proxy"].add(Stall(after=50_000), method="GET", key="^o/", first=3)
    run, elapsed = _migrate(stores, tmp_path, env={"FERRY_STALL_TIMEOUT": "1"})
    assert run.code == 0, run.stderr
    assert rule.fired == 3 and run.summary["failed"] == 0
    assert _copied(s3_client(stores["dst"]), stores["db"]) == _md5s(bodies)
    assert elapsed < 60


def test_a_slow_trickle_is_no_stall(stores: dict[str, Any], tmp_path: Path) -> None:
    from faultproxy import Trickle

    bodies = _fill(s3_client(stores["src"]), stores["sb"], 2, size=60_000)
    rule = stores["proxy"].add(Trickle(rate=30_000), method="GET", key="^o/")
    run, elapsed = _migrate(stores, tmp_path, env={"FERRY_STALL_TIMEOUT": "1"})
    assert run.code == 0, run.stderr
    assert rule.fired == 2 and run.summary["failed"] == 0 and elapsed >= 2  # slower than a stall, yet whole
    assert _copied(s3_client(stores["dst"]), stores["db"]) == _md5s(bodies)


def test_a_destination_that_never_answers_times_out_and_is_tried_again(
        stores: dict[str, Any], tmp_path: Path, fault_proxy: Any) -> None:
    bodies = _fill(s3_client(stores["src"]), stores["sb"], 10)
    dst_proxy: FaultProxy = fault_proxy(stores["dst"])
    rule = dst_proxy.add(Blackhole(), method="PUT", first=3)
    run, elapsed = _migrate(stores, tmp_path, env={"FERRY_STALL_TIMEOUT": "1"}, dst_endpoint=dst_proxy.endpoint)
    assert run.code == 0, run.stderr
    assert rule.fired == 3 and run.summary["failed"] == 0
    assert _copied(s3_client(stores["dst"]), stores["db"]) == _md5s(bodies)
    assert elapsed < 60


def test_a_destination_that_never_answers_for_one_key_fails_it_in_bounded_time(
        stores: dict[str, Any], tmp_path: Path, fault_proxy: Any) -> None:
    src = s3_client(stores["src"])
    bodies = _fill(src, stores["sb"], 10)
    src.put_object(Bucket=stores["sb"], Key="hole", Body=b"x" * 1000)
    dst_proxy: FaultProxy = fault_proxy(stores["dst"])
    dst_proxy.add(Blackhole(), method="PUT", key="^hole$")
    run, elapsed = _migrate(stores, tmp_path, env={"FERRY_STALL_TIMEOUT": "1"}, dst_endpoint=dst_proxy.endpoint)
    assert run.code == 1, run.stderr
    assert run.summary["failed"] == 1 and run.summary["success"] == len(bodies)
    text = next((tmp_path / "state" / "reports").glob("*")).read_text()
    assert '"hole"' in text and "timed out" in text, text
    assert elapsed < 60


@pytest.mark.parametrize("where", ["create", "part", "complete", "complete-answer"])
def test_a_reset_at_any_point_of_a_multipart_upload_is_retried(stores: dict[str, Any], tmp_path: Path,
                                                               fault_proxy: Any, where: str) -> None:
    src = s3_client(stores["src"])
    big = os.urandom(11 * MiB + 7)
    src.put_object(Bucket=stores["sb"], Key="big", Body=big)
    dst_proxy: FaultProxy = fault_proxy(stores["dst"])
    rule = {
        "create": lambda: dst_proxy.add(Reset(), method="POST", query="uploads", first=1),
        "part": lambda: dst_proxy.add(Reset(after=MiB), method="PUT", query="partNumber=2", first=1),
        "complete": lambda: dst_proxy.add(Reset(side="request"), method="POST", query="uploadId=", first=1),
        # The store completes the upload; only its answer is lost.
        "complete-answer": lambda: dst_proxy.add(Reset(side="response"), method="POST", query="uploadId=",
                                                 first=1),
    }[where]()
    run, elapsed = _migrate(stores, tmp_path, "--part-size", "5", "--multipart-threshold", "5",
                            dst_endpoint=dst_proxy.endpoint)
    assert run.code == 0, run.stderr
    assert rule.fired == 1 and run.summary["failed"] == 0
    got = s3_client(stores["dst"]).get_object(Bucket=stores["db"], Key="big")["Body"].read()
    assert hashlib.md5(got).digest() == hashlib.md5(big).digest()
    assert elapsed < 60


@pytest.mark.parametrize("size", [17 * MiB, 11 * MiB], ids=["streamed", "multipart"])
def test_a_large_object_whose_source_stalls_mid_body_is_read_again(stores: dict[str, Any], tmp_path: Path,
                                                                   size: int) -> None:
    big = os.urandom(size)
    s3_client(stores["src"]).put_object(Bucket=stores["sb"], Key="big", Body=big)
    rule = stores["proxy"].add(Stall(after=2 * MiB), method="GET", key="^big$", first=1)
    extra = ("--part-size", "5", "--multipart-threshold", "5") if size < 16 * MiB else ()
    # 3 s, not 1: SeaweedFS on a loaded machine can take over a second to answer a 17 MiB PUT after its last
    # byte, and that wait counts as a stall too (it is how a destination that never answers is caught).
    run, elapsed = _migrate(stores, tmp_path, *extra, env={"FERRY_STALL_TIMEOUT": "3"})
    assert run.code == 0, run.stderr
    assert rule.fired == 1 and run.summary["failed"] == 0
    got = s3_client(stores["dst"]).get_object(Bucket=stores["db"], Key="big")["Body"].read()
    assert hashlib.md5(got).digest() == hashlib.md5(big).digest()
    assert elapsed < 60
