"""The streaming planner, driven with plain lists: one right action per source key, whatever the orders."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import tracemalloc
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.engine.compare import CopyReason, OverwriteMode, SkipReason
from ferry.engine.planner import Action, Copy, DstOnly, Fail, Planner, Skip
from ferry.errors import FatalError, ListingOrderError
from ferry.objects import ObjectInfo
from ferry.storage.base import ListOrder

L, U = ListOrder.LEXICOGRAPHIC, ListOrder.UNORDERED
T = TypeVar("T")


async def agen(items: Iterable[T]) -> AsyncIterator[T]:
    for item in items:
        yield item


def run_plan(*args: Any, **kwargs: Any) -> tuple[list[Action], Planner]:
    async def go() -> tuple[list[Action], Planner]:
        planner = Planner(*args, **kwargs)
        return [a async for a in planner], planner

    return asyncio.run(go())


def o(key: str, size: int = 1, mtime: float = 100.0, crc64: int | None = None) -> ObjectInfo:
    return ObjectInfo(key, size, mtime, etag="e", storage_class="STANDARD", crc64=crc64)


def keys_of(actions: list[Action]) -> list[str]:
    return [a.src.key for a in actions]


# --- byte order ----------------------------------------------------------------------------------------------


@given(st.lists(st.text(), max_size=30))
def test_str_order_is_utf8_byte_order(keys: list[str]) -> None:
    # The planner compares keys as str; S3 lists in UTF-8 byte order. They must agree, astral planes included.
    assert sorted(keys) == sorted(keys, key=lambda k: k.encode("utf-8"))


# --- property: one right action per distinct source key --------------------------------------------------

SPECIAL = ["a", "a/", "a/b", "a b/c", "a b", "a+b", "a%2Fb", "a?b", "a#b", "a/b/", "/", "//", "a//b", " ", "+"]
CHARS = st.sampled_from([*"ab/ +%?#~-._", "é", "中", "\U0001f600", "\x7f", "\x01", "Z", "0"])
KEY = st.one_of(
    st.sampled_from(SPECIAL),
    st.text(CHARS, min_size=1, max_size=8),
    st.text(CHARS, min_size=200, max_size=260),  # long keys share long prefixes with nothing else
    st.text(min_size=1, max_size=6).filter(lambda k: "\x00" not in k),
)
ORDERS = ["sorted", "sorted-declared-unordered", "shuffled", "directory", "reversed"]


def arrange(records: list[ObjectInfo], how: str, rnd: random.Random) -> tuple[list[ObjectInfo], ListOrder]:
    """The records in a store's listing order. Sorts are stable, so a repeated key keeps its first record first."""
    if how == "sorted":
        return sorted(records, key=lambda r: r.key), L
    if how == "sorted-declared-unordered":
        return sorted(records, key=lambda r: r.key), U
    if how == "directory":  # SeaweedFS: a, a/b, a b/c
        return sorted(records, key=lambda r: r.key.split("/")), U
    if how == "reversed":
        return sorted(records, key=lambda r: r.key, reverse=True), U
    shuffled = list(records)
    rnd.shuffle(shuffled)
    return shuffled, U


def first_of_each(listing: list[ObjectInfo]) -> dict[str, ObjectInfo]:
    first: dict[str, ObjectInfo] = {}
    for rec in listing:
        first.setdefault(rec.key, rec)
    return first


def should_skip(src: ObjectInfo, dst: ObjectInfo, mode: OverwriteMode) -> bool:
    """An oracle written from the OMS rules, independent of compare.decide."""
    size_mtime = src.size == dst.size and dst.mtime >= src.mtime
    if mode is OverwriteMode.NO_OVERWRITE:
        return True
    if mode is OverwriteMode.FULL_OVERWRITE:
        return False
    if mode is OverwriteMode.CRC64_COMPARISON_OVERWRITE and src.crc64 is not None and dst.crc64 is not None:
        return src.crc64 == dst.crc64 and src.size == dst.size
    return size_mtime


RECORD = st.tuples(st.integers(0, 2), st.integers(0, 2), st.none() | st.integers(0, 1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    keys=st.lists(KEY, unique=True, max_size=40),
    data=st.data(),
    src_how=st.sampled_from(ORDERS),
    dst_how=st.sampled_from(ORDERS),
    mode=st.sampled_from(list(OverwriteMode)),
    since=st.none() | st.integers(0, 3),
    run_size=st.sampled_from([1, 2, 3, 100_000]),
    fan_in=st.sampled_from([2, 3, 64]),
    use_async=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_one_right_action_per_source_key(
    keys: list[str],
    data: st.DataObject,
    src_how: str,
    dst_how: str,
    mode: OverwriteMode,
    since: int | None,
    run_size: int,
    fan_in: int,
    use_async: bool,
    seed: int,
) -> None:
    rnd = random.Random(seed)
    src_records: list[ObjectInfo] = []
    dst_records: list[ObjectInfo] = []
    for key in keys:
        where = data.draw(st.sampled_from(["src", "dst", "both", "both"]))
        for side, out in (("src", src_records), ("dst", dst_records)):
            if where in (side, "both"):
                # Sometimes the listing repeats a key with other attributes (pagination glitches).
                for _ in range(data.draw(st.sampled_from([1, 1, 1, 2]))):
                    size, mtime, crc = data.draw(RECORD)
                    out.append(o(key, size, float(mtime), crc))
    src_list, src_order = arrange(src_records, src_how, rnd)
    dst_list, dst_order = arrange(dst_records, dst_how, rnd)
    src_first, dst_first = first_of_each(src_list), first_of_each(dst_list)
    finished = sorted(k for k in src_first if rnd.random() < 0.2)

    wrap: Any = agen if use_async else list
    actions, planner = run_plan(
        wrap(src_list), src_order, wrap(dst_list), dst_order,
        finished=wrap(finished), overwrite_mode=mode, migrate_since=since, run_size=run_size, fan_in=fan_in,
    )

    assert keys_of(actions) == sorted(src_first)  # one each, ascending, nothing for destination-only keys
    for action in actions:
        src = src_first[action.src.key]
        dst = dst_first.get(src.key)
        assert action.src == src  # the first record of a repeated key wins
        if src.key in finished:
            assert action == Skip(src, SkipReason.ALREADY_DONE)
        elif since is not None and src.mtime < since:
            assert action == Skip(src, SkipReason.OLDER_THAN_MIGRATE_SINCE)
        elif dst is None:
            assert action == Copy(src, None, CopyReason.MISSING)
        elif should_skip(src, dst, mode):
            assert isinstance(action, Skip)
        else:
            assert isinstance(action, Copy)
            assert action.dst == dst
    stats = planner.stats
    assert stats.planned == len(actions) == stats.copies + stats.skips
    assert stats.copies == sum(stats.copied_by_reason.values())
    assert stats.skips == sum(stats.skipped_by_reason.values())
    assert stats.skipped_by_reason[SkipReason.ALREADY_DONE] == len(finished)
    assert stats.source.listed == len(src_list)
    assert stats.source.duplicates == len(src_list) - len(src_first)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    keys=st.lists(KEY, unique=True, max_size=40),
    data=st.data(),
    src_how=st.sampled_from(ORDERS),
    dst_how=st.sampled_from(ORDERS),
    mode=st.sampled_from(list(OverwriteMode)),
    run_size=st.sampled_from([1, 3, 100_000]),
    use_async=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_one_pass_also_names_the_destination_only_keys(
    keys: list[str], data: st.DataObject, src_how: str, dst_how: str, mode: OverwriteMode, run_size: int,
    use_async: bool, seed: int,
) -> None:
    """march(): the plan's own actions, plus one DstOnly per destination key with no source twin, all in one
    ascending key order (rclone's march: SrcOnly / DstOnly / Match), whatever the two listings' orders."""
    rnd = random.Random(seed)
    src_records: list[ObjectInfo] = []
    dst_records: list[ObjectInfo] = []
    for key in keys:
        where = data.draw(st.sampled_from(["src", "dst", "both"]))
        for side, out in (("src", src_records), ("dst", dst_records)):
            if where in (side, "both"):
                for _ in range(data.draw(st.sampled_from([1, 1, 2]))):
                    size, mtime, crc = data.draw(RECORD)
                    out.append(o(key, size, float(mtime), crc))
    src_list, src_order = arrange(src_records, src_how, rnd)
    dst_list, dst_order = arrange(dst_records, dst_how, rnd)
    src_first, dst_first = first_of_each(src_list), first_of_each(dst_list)
    wrap: Any = agen if use_async else list

    async def march() -> tuple[list[Action | DstOnly], Planner]:
        planner = Planner(wrap(src_list), src_order, wrap(dst_list), dst_order, overwrite_mode=mode,
                          run_size=run_size, fan_in=2)
        return [a async for a in planner.march()], planner

    items, planner = asyncio.run(march())
    plain, _ = run_plan(wrap(src_list), src_order, wrap(dst_list), dst_order, overwrite_mode=mode,
                        run_size=run_size, fan_in=2)
    named = [a.dst.key if isinstance(a, DstOnly) else a.src.key for a in items]
    assert named == sorted(src_first.keys() | dst_first.keys())  # each key once, ascending
    assert [a for a in items if not isinstance(a, DstOnly)] == plain
    only = [a for a in items if isinstance(a, DstOnly)]
    assert only == [DstOnly(dst_first[k]) for k in sorted(dst_first.keys() - src_first.keys())]
    assert planner.stats.destination_only == len(only)
    assert planner.stats.destination.listed == len(dst_list)


def test_march_checks_the_destination_order_too() -> None:
    async def march() -> None:
        async for _ in Planner([o("a")], L, [o("a"), o("c"), o("b")], L).march():
            pass

    with pytest.raises(ListingOrderError, match="destination listing"):
        asyncio.run(march())


# --- orders of real stores -------------------------------------------------------------------------------

SEAWEED = [o("a"), o("a/b"), o("a b/c")]
AWS = [o("a"), o("a b/c"), o("a/b")]


@pytest.mark.parametrize(("src", "src_order"), [(SEAWEED, U), (AWS, L)])
@pytest.mark.parametrize(("dst", "dst_order"), [(SEAWEED, U), (AWS, L)])
def test_seaweedfs_and_aws_orders_pair_up(
    src: list[ObjectInfo], src_order: ListOrder, dst: list[ObjectInfo], dst_order: ListOrder
) -> None:
    actions, _ = run_plan(src, src_order, dst, dst_order)
    assert keys_of(actions) == ["a", "a b/c", "a/b"]
    assert all(a == Skip(a.src, SkipReason.SAME_SIZE_NOT_OLDER) for a in actions)


def test_directory_order_declared_lexicographic_is_caught() -> None:
    with pytest.raises(ListingOrderError) as err:
        run_plan(agen(SEAWEED), L, [], L)
    assert err.value.key == "a b/c"
    assert "source listing" in err.value.message


def test_destination_going_backwards_is_caught() -> None:
    with pytest.raises(ListingOrderError, match="destination listing"):
        run_plan([o("a"), o("b"), o("c")], L, [o("a"), o("c"), o("b")], L)
    # even past the last source key, where the twin it hid has already been planned
    with pytest.raises(ListingOrderError, match="destination listing"):
        run_plan([o("a"), o("b")], L, [o("a"), o("c"), o("b")], L)


def test_finished_keys_going_backwards_is_caught() -> None:
    with pytest.raises(ListingOrderError, match="finished keys"):
        run_plan([o("a"), o("b"), o("c")], L, [], L, finished=["b", "a"])


def test_adjacent_repeats_in_a_lexicographic_listing_are_not_an_order_error() -> None:
    actions, planner = run_plan([o("a"), o("a", 5), o("b")], L, [o("a", 5), o("a", 5)], L)
    assert keys_of(actions) == ["a", "b"]
    assert actions[0] == Copy(o("a"), o("a", 5), CopyReason.SIZE_DIFFERS)
    assert planner.stats.source.duplicates == 1


def test_destination_only_keys_get_no_action() -> None:
    actions, _ = run_plan([o("m")], L, [o("a"), o("m"), o("z")], L)
    assert keys_of(actions) == ["m"]


def test_directory_markers_are_ordinary_objects() -> None:
    actions, _ = run_plan([o("d/"), o("d/x"), o("d")], U, [o("d/", 0)], L)
    assert [(a.src.key, type(a)) for a in actions] == [("d", Copy), ("d/", Copy), ("d/x", Copy)]


def test_too_long_keys_fail_with_a_reason() -> None:
    long_key = "é" * 600  # 600 chars, 1200 bytes
    actions, planner = run_plan([o("ok"), o(long_key)], U, [], L, max_key_bytes=1024)
    assert isinstance(actions[0], Copy)
    assert isinstance(actions[1], Fail)
    assert "1200 bytes" in actions[1].reason
    assert planner.stats.failures == 1
    # what would be skipped anyway is skipped, not failed
    actions, _ = run_plan([o(long_key, mtime=1.0)], L, [], L, max_key_bytes=1024, migrate_since=50)
    assert actions == [Skip(o(long_key, mtime=1.0), SkipReason.OLDER_THAN_MIGRATE_SINCE)]


def test_counters() -> None:
    src = [o("a", 1), o("b", 2, mtime=50.0), o("c", 3), o("d", 4, mtime=200.0), o("e", 5)]
    dst = [o("c", 3), o("d", 4), o("e", 9)]
    _, planner = run_plan(src, L, dst, U, migrate_since=60, finished=["e"])
    s = planner.stats
    assert (s.planned, s.copies, s.skips, s.failures) == (5, 2, 3, 0)
    assert s.copied_by_reason[CopyReason.MISSING] == 1
    assert s.copied_by_reason[CopyReason.SOURCE_NEWER] == 1
    assert s.skipped_by_reason[SkipReason.OLDER_THAN_MIGRATE_SINCE] == 1
    assert s.skipped_by_reason[SkipReason.SAME_SIZE_NOT_OLDER] == 1
    assert s.skipped_by_reason[SkipReason.ALREADY_DONE] == 1
    assert (s.copy_bytes, s.skip_bytes) == (1 + 4, 2 + 3 + 5)
    assert (s.source.listed, s.destination.listed) == (5, 3)


# --- external sort ---------------------------------------------------------------------------------------


def test_external_sort_with_many_spills(tmp_path: Path) -> None:
    rnd = random.Random(7)
    n = 5000
    keys = [f"{rnd.choice(['a', 'a/', 'a b/', 'é/', ''])}{i}" for i in range(n)]
    src = [o(k, i % 3) for i, k in enumerate(keys)]
    src += [o(keys[i], 99) for i in range(0, n, 10)]  # later repeats must lose to the first record
    rnd.shuffle(src)
    dst = [o(k, 1, mtime=500.0) for k in keys[::3]]
    rnd.shuffle(dst)

    seen: list[set[str]] = []

    async def go() -> tuple[list[Action], Planner]:
        planner = Planner(
            agen(src), U, agen(dst), U, run_size=7, fan_in=3, spill_dir=str(tmp_path)
        )
        out: list[Action] = []
        async for action in planner:
            if not out:
                seen.append({p.name for p in tmp_path.iterdir()})
            out.append(action)
        return out, planner

    actions, planner = asyncio.run(go())
    assert keys_of(actions) == sorted(keys)
    first = first_of_each(src)
    assert all(a.src == first[a.src.key] for a in actions)
    assert planner.stats.source.spilled_runs == -(-len(src) // 7)
    assert planner.stats.destination.spilled_runs == -(-len(dst) // 7)
    assert planner.stats.source.duplicates == n // 10
    assert seen[0] and all(name.startswith("ferry-plan-") for name in seen[0])  # spilled under spill_dir
    assert list(tmp_path.iterdir()) == []  # and cleaned up


def test_abandoned_plan_removes_its_spill_files(tmp_path: Path) -> None:
    src = [o(f"k{i:05d}") for i in range(1000)][::-1]

    async def go() -> None:
        planner = Planner(src, U, [], L, run_size=10, spill_dir=str(tmp_path))
        async for _ in planner:
            break
        assert any(tmp_path.iterdir())
        await planner.aclose()

    asyncio.run(go())
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_error_while_listing_removes_spill_files(tmp_path: Path) -> None:
    async def broken() -> AsyncIterator[ObjectInfo]:
        for i in range(100):
            yield o(f"k{i}")
        raise RuntimeError("listing died")

    async def go() -> None:
        async for _ in Planner(broken(), U, [], L, run_size=10, spill_dir=str(tmp_path)):
            pass

    with pytest.raises(RuntimeError, match="listing died"):
        asyncio.run(go())
    assert list(tmp_path.iterdir()) == []


def test_unwritable_spill_dir_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(FatalError, match="sort runs"):
        run_plan([o(f"k{i}") for i in range(30)], U, [], L, run_size=10, spill_dir=str(tmp_path / "missing"))


# --- memory ----------------------------------------------------------------------------------------------


def _listing(n: int, *, shuffled: bool, newer: bool) -> Iterator[ObjectInfo]:
    """n keys without holding them: a fixed permutation (i * a prime mod n) when shuffled."""
    mtime = 500.0 if newer else 100.0
    for i in range(n):
        j = (i * 7_919) % n if shuffled else i
        if newer and j % 3 == 0:
            continue
        yield ObjectInfo(f"dir{j // 1000:04d}/object-{j:07d}.bin", 1000 + j % 7, mtime, "etag", "STANDARD")


@pytest.mark.slow
def test_memory_stays_bounded(tmp_path: Path) -> None:
    # Source unordered (external sort, many spills) against a lexicographic destination (streamed): both paths.
    # tracemalloc makes this ~10x slower, hence one run of both rather than one per order.
    n = 100_000

    async def go() -> Planner:
        planner = Planner(
            agen(_listing(n, shuffled=True, newer=False)), U,
            agen(_listing(n, shuffled=False, newer=True)), L,
            run_size=10_000, spill_dir=str(tmp_path),
        )
        async for _ in planner:
            pass
        return planner

    tracemalloc.start()
    try:
        planner = asyncio.run(go())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert planner.stats.planned == n
    assert planner.stats.skips == n - n // 3 - 1
    assert planner.stats.source.spilled_runs == n // 10_000
    # The records alone would take ~25 MB held at once; a 10k-record run is a few MB (peak measured: 2.8 MB).
    assert peak < 10 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    assert not os.listdir(tmp_path)
