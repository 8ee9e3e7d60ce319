"""A migration task's run for people: speed over the run, failures grouped by reason, and its object lists.

Read from the job's per-object results (job_objects), which hold when each object finished and why one failed
or was skipped; scoped to the project like every task operation (another project's task is "not found").
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

from ferry.db.job_repo import JobRepo
from ferry.db.job_report import JobReport
from ferry.runner.migration import record_line
from ferry.service.tasks import TaskContext, TaskError

ObjectList = Literal["failed", "skipped", "success"]
OBJECT_LISTS: Final[tuple[ObjectList, ...]] = ("failed", "skipped", "success")
# A chart of a few hundred points reads as well as one of thousands, and costs one grouped query either way.
MAX_POINTS: Final = 300
# Failures are grouped over at most this many failed objects (in key order): a page view stays well under a
# second however many failed, and the groups of the first hundred thousand tell what went wrong.
FAILURE_SCAN: Final = 100_000
_URL: Final = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s;)]+", re.IGNORECASE)
_REQUEST_ID: Final = re.compile(r"(request id|requestid|x-amz-request-id|x-ms-request-id)\s*[:=]?\s*[^\s;)]+",
                                re.IGNORECASE)
_LONG_HEX: Final = re.compile(r"\b[0-9a-f]{16,}\b", re.IGNORECASE)

__all__ = ["OBJECT_LISTS", "FailureGroup", "FailureReport", "ObjectList", "SpeedPoint", "failure_groups",
           "object_list", "reason_group", "speed_history"]


@dataclass(frozen=True)
class FailureGroup:
    """Failed objects whose reasons differ only in what names the object: the reason with those parts
    replaced (`<key>`, `<url>`, `…`), how many, and the first keys in key order."""

    reason: str
    count: int
    first_keys: tuple[str, ...]


@dataclass(frozen=True)
class FailureReport:
    groups: list[FailureGroup]
    scanned: int  # failed objects looked at (FAILURE_SCAN at most)
    complete: bool  # False when more failed than were looked at


@dataclass(frozen=True)
class SpeedPoint:
    """Mean throughput over `seconds` from `at` (epoch seconds)."""

    at: float
    seconds: float
    bytes_per_second: float
    objects_per_second: float


def _job_id(ctx: TaskContext, project_id: str, task_id: int) -> str | None:
    row = ctx.repo.get(task_id, project_id)
    if row is None:
        raise TaskError.not_found()
    return row.job_id


def speed_history(ctx: TaskContext, project_id: str, task_id: int, points: int = MAX_POINTS) -> list[SpeedPoint]:
    """The task's throughput over its run, from its first recorded result to its last, in at most `points`
    equal buckets of whole seconds; empty buckets are zero, so pauses show."""
    job_id = _job_id(ctx, project_id, task_id)
    if job_id is None:
        return []
    report = JobReport(ctx.engine)
    span = report.span(job_id)
    if span is None:
        return []
    first, last = span
    bucket = float(max(1, math.ceil((last - first) / max(points, 1))))
    got = {round((t.start - first) / bucket): t for t in report.throughput(job_id, first, bucket)}
    count = max(got, default=0) + 1
    out = []
    for i in range(count):
        t = got.get(i)
        out.append(SpeedPoint(first + i * bucket, bucket, (t.bytes_copied if t else 0) / bucket,
                              (t.objects if t else 0) / bucket))
    return out


def reason_group(reason: str | None, key: str) -> str:
    """The part of a failure's reason that is the same for every object failing the same way: the object's
    key, addresses and request ids are what make each reason unique, and are masked."""
    text = (reason or "").strip() or "no reason recorded"
    if key:
        text = text.replace(key, "<key>")
    text = _URL.sub("<url>", text)
    text = _REQUEST_ID.sub(lambda m: f"{m.group(1)} …", text)
    return _LONG_HEX.sub("…", text)


def failure_groups(ctx: TaskContext, project_id: str, task_id: int, groups: int = 20,
                   keys: int = 5) -> FailureReport:
    """The task's failed objects grouped by reason (`reason_group`), the largest group first (at most
    `groups`), with the first `keys` keys of each; over its first FAILURE_SCAN failed objects."""
    job_id = _job_id(ctx, project_id, task_id)
    if job_id is None:
        return FailureReport([], 0, True)
    counts: dict[str, int] = {}
    first: dict[str, list[str]] = {}
    scanned = 0
    complete = True
    for r in JobRepo(ctx.engine).iter_results(job_id, "failed"):
        if scanned >= FAILURE_SCAN:
            complete = False
            break
        scanned += 1
        group = reason_group(r.reason, r.key)
        counts[group] = counts.get(group, 0) + 1
        shown = first.setdefault(group, [])
        if len(shown) < keys:
            shown.append(r.key)
    ranked = sorted(counts, key=lambda g: (-counts[g], g))[:groups]
    return FailureReport([FailureGroup(g, counts[g], tuple(first[g])) for g in ranked], scanned, complete)


def object_list(ctx: TaskContext, project_id: str, task_id: int, which: ObjectList) -> Iterator[str]:
    """The task's failed, skipped or succeeded objects as JSON lines (the format of its records/ lists), read
    in pages so that memory stays flat however many there are. Ownership is checked before the first line."""
    row = ctx.repo.get(task_id, project_id)
    if row is None:
        raise TaskError.not_found()
    job_id, prefix = row.job_id, row.dst_spec.get("save_prefix") or ""

    def lines() -> Iterator[str]:
        if job_id is None:
            return
        for r in JobRepo(ctx.engine).iter_results(job_id, which):
            yield record_line(r, prefix)

    return lines()
