"""Plans N keys from in-process listings and reports peak RSS and time (target: < 200 MB at 1,000,000 keys).

    .venv/bin/python bench/plan_memory.py                 # both variants, 1,000,000 keys
    .venv/bin/python bench/plan_memory.py --keys 200000 --variant unordered --run-size 50000

Each variant runs in a fresh child process so its peak RSS (getrusage ru_maxrss) is its own. "unordered"
declares both listings UNORDERED and feeds them shuffled, forcing the external sort on both sides;
"lexicographic" feeds both in byte order and streams the merge. The destination holds two thirds of the
keys: half of those identical (skipped), the rest older or of another size (copied).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

from ferry.engine.planner import Planner
from ferry.objects import ObjectInfo
from ferry.storage.base import ListOrder


def _stride(n: int) -> int:
    """A multiplier coprime with n, so i -> i * stride mod n is a permutation that needs no memory."""
    stride = 7_919
    while math.gcd(stride, n) != 1:
        stride += 2
    return stride


def _key(j: int) -> str:
    # Monotonic in j, so the lexicographic variant can generate in order; ~40 bytes like real object keys.
    return f"data/{j // 1000:06d}/part-{j:09d}.parquet"


def source_listing(n: int, shuffled: bool) -> Iterator[ObjectInfo]:
    stride = _stride(n)
    for i in range(n):
        j = (i * stride) % n if shuffled else i
        yield ObjectInfo(_key(j), 4096 + j % 1000, 1_700_000_000.0, f"{j:032x}", "STANDARD")


def destination_listing(n: int, shuffled: bool) -> Iterator[ObjectInfo]:
    stride = _stride(n)
    for i in range(n):
        j = (i * stride) % n if shuffled else i
        kind = j % 6
        if kind < 2:
            continue  # missing: copied
        size = 4096 + j % 1000 + (1 if kind == 5 else 0)  # kind 5: other size, copied
        mtime = 1_600_000_000.0 if kind == 4 else 1_800_000_000.0  # kind 4: older, copied; 2-3 skipped
        yield ObjectInfo(_key(j), size, mtime, f"{j:032x}", "STANDARD")


async def _aiter(items: Iterator[ObjectInfo]) -> AsyncIterator[ObjectInfo]:
    for item in items:
        yield item


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


async def _child(variant: str, n: int, run_size: int) -> None:
    shuffled = variant == "unordered"
    order = ListOrder.UNORDERED if shuffled else ListOrder.LEXICOGRAPHIC
    baseline = _rss_mb()

    # What the two listings cost alone, so the planner's own share can be told apart.
    started = time.process_time()
    for _ in source_listing(n, shuffled):
        pass
    for _ in destination_listing(n, shuffled):
        pass
    generate_s = time.process_time() - started

    planner = Planner(
        _aiter(source_listing(n, shuffled)), order,
        _aiter(destination_listing(n, shuffled)), order,
        run_size=run_size,
    )
    started = time.perf_counter()
    cpu_started = time.process_time()
    first_action_s = None
    async for _ in planner:
        if first_action_s is None:
            first_action_s = time.perf_counter() - started
    total_s = time.perf_counter() - started
    # CPU time as well as wall time: on a shared 2-core box the wall clock mostly measures the neighbours.
    cpu_s = time.process_time() - cpu_started
    stats = planner.stats
    assert stats.planned == n, stats
    print(
        f"{variant:13} keys={n:,} run_size={run_size:,}  peak RSS {_rss_mb():6.1f} MB "
        f"(after imports {baseline:.1f} MB)  plan {total_s:5.2f} s wall, {cpu_s:5.2f} s CPU "
        f"(first action after {first_action_s or 0:.2f} s; generating the listings alone {generate_s:.2f} s CPU)  "
        f"{n / total_s:,.0f} keys/s  copies={stats.copies:,} skips={stats.skips:,} "
        f"spilled runs={stats.source.spilled_runs}+{stats.destination.spilled_runs}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--variant", choices=["unordered", "lexicographic", "all"], default="all")
    parser.add_argument("--run-size", type=int, default=100_000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(_child(args.variant, args.keys, args.run_size))
        return
    variants = ["unordered", "lexicographic"] if args.variant == "all" else [args.variant]
    for variant in variants:
        subprocess.run(
            [sys.executable, __file__, "--child", "--variant", variant, "--keys", str(args.keys),
             "--run-size", str(args.run_size)],
            check=True,
        )


if __name__ == "__main__":
    main()
