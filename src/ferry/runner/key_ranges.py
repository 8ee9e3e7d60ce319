"""Key ranges of a byte-ordered listing: bounds found by probing (a skip-scan of the keys' first characters).

A range is (after, last]: the keys above its first bound and up to its second, None open. Contiguous ranges
from `spans` hold every key exactly once whatever the bounds (a key equal to a bound is the range it ends), so
bounds only balance the work. `probe_bounds` finds them with at most `probes` listing requests, one per branch
of the key space found, never reading the keys in between: a huge bucket is probed in about as long as a
small one. Sync reconciliation (runner.sync_units) and a task's range units (runner.task_units) cut by it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Final

from ferry.errors import TransientError
from ferry.objects import ObjectInfo
from ferry.storage.base import Backend, ListOrder, listing
from ferry.storage.wrappers import unwrap

KeyRange = tuple[str | None, str | None]  # keys after the first and up to the second; None = open
# Above every character a key can hold: `p + TOP` sorts after every key that starts with `p` (but one that
# goes on with U+10FFFF itself, which only moves a bound, never loses a key).
TOP: Final = "\U0010ffff"


def spans(bounds: list[str], first: str | None = None, last: str | None = None) -> list[KeyRange]:
    """(first, b1], (b1, b2], ..., (bn, last] from sorted, distinct bounds strictly between first and last."""
    edges: list[str | None] = [first, *bounds, last]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def in_range(key: str, span: KeyRange) -> bool:
    """Whether `key` is one of the range's keys."""
    after, last = span
    return (after is None or key > after) and (last is None or key <= last)


async def ranged_listing(backend: Backend, after: str | None, last: str | None) -> AsyncIterator[ObjectInfo]:
    """The backend's keys in (after, last]. A byte-ordered listing starts after the range's first key and ends
    past its last; any other order is read whole and filtered (`str` order is byte order, see
    ferry.engine.planner)."""
    ordered = backend.capabilities.list_order is ListOrder.LEXICOGRAPHIC
    async for info in listing(backend, "", after if ordered else None):
        key = info.key
        if after is not None and key <= after:
            continue
        if last is not None and key > last:
            if ordered:
                return
            continue
        yield info


async def page_of(lister: Any, prefix: str, **options: Any) -> Any:
    """One `list_page` request (the S3 family's: `delimiter`, `start_after`, `continuation`, `max_keys`) of a
    store that has it, retried a few times on transient errors."""
    delay = 0.5
    for attempt in range(5):
        try:
            return await lister.list_page(prefix, **options)
        except TransientError:
            if attempt == 4:
                raise
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


async def _first(src: Backend, prefix: str, after: str | None) -> str | None:
    inner = unwrap(src)
    if callable(getattr(inner, "list_page", None)):
        # One key per request, not a page of 1,000: a probe is then a round trip, whatever the keys.
        page = await page_of(inner, prefix, start_after=after, max_keys=1)
        if page.objects:
            return str(page.objects[0].key)
        if not page.truncated:
            return None
    async for info in listing(src, prefix, after):
        return info.key
    return None


async def _children(src: Backend, prefix: str, budget: list[int],
                    floor: str | None) -> tuple[list[tuple[str, bool]], bool]:
    """The distinct one-character-longer prefixes of the keys under `prefix` above `floor`, one probe each, each
    with whether it can be expanded further (a key equal to `prefix` is a leaf); and whether they are all of
    them (False: the probe budget ran out first)."""
    found: list[tuple[str, bool]] = []
    after = floor
    while True:
        if budget[0] <= 0:
            return found, False
        budget[0] -= 1
        key = await _first(src, prefix, after)
        if key is None:
            return found, True
        child = key[:len(prefix) + 1]
        if found and found[-1][0] == child:
            # A key going on with U+10FFFF after the child (`child + TOP + "z"`): stepped over one at a time,
            # else the same child would be found again until the budget ran out.
            after = key
            continue
        leaf = len(child) == len(prefix)
        found.append((child, not leaf))
        after = child if leaf else child + TOP


async def probe_bounds(src: Backend, units: int, probes: int, prefix: str = "",
                       floor: str | None = None) -> list[str]:
    """Bounds cutting the keys under `prefix` (and above `floor`) of a byte-ordered source into up to `units`
    ranges: expand key prefixes a character at a time, widest level first, until there are about four branches
    per unit (or the probes run out); then every unit gets as many branches. Every bound is above `floor`;
    none when the keys do not branch."""
    budget = [probes]
    branches: list[tuple[str, bool]] = [(prefix, True)]
    per_branch = 0.0  # probes the last level spent per branch it widened
    while len(branches) < units * 4:
        expandable_now = sum(1 for _, more in branches if more)
        if len(branches) >= units and expandable_now * per_branch > budget[0]:
            # This level already gives every unit a branch and the next would (by the last one's cost) run out
            # of probes half-way, wasting them all: stop here.
            break
        before = budget[0]
        wider: list[tuple[str, bool]] = []
        grew = False
        for i, (start, expandable) in enumerate(branches):
            if not expandable:
                wider.append((start, False))
                continue
            kids, whole = await _children(src, start, budget, floor)
            # A run of single children (a long common prefix, `logs/2024/`) is gone down at once, so that every
            # level widens each branch, however deep its keys start to differ.
            while whole and len(kids) == 1 and kids[0][1]:
                kids, whole = await _children(src, kids[0][0], budget, floor)
            if not whole:
                # Out of probes mid-level: a half-widened level weighs its unwidened branches wrong, so the last
                # whole level stands, unless it is too narrow to give every unit a branch; then the children
                # found stand for their branch (its keys past the last of them go with the next bound).
                if len(branches) >= units:
                    wider = branches
                else:
                    wider.extend(kids or [(start, expandable)])
                    wider.extend(branches[i + 1:])
                break
            # More branches, or one longer common prefix to go down: either is progress.
            grew = grew or len(kids) > 1 or any(more for _, more in kids)
            wider.extend(kids)
        per_branch = (before - budget[0]) / max(1, expandable_now)
        branches = sorted(set(wider))
        if not grew or budget[0] <= 0:
            break
    names = [start for start, _ in branches]
    per = max(1, -(-len(names) // units))
    groups = [names[i:i + per] for i in range(0, len(names), per)]
    # Each range ends after its last branch's keys; the last range is open.
    # (A branch entered through a key going on with U+10FFFF could end below the floor: dropped.)
    return sorted({g[-1] + TOP for g in groups[:-1] if floor is None or g[-1] + TOP > floor})
