"""What a sync task's console page shows: the task, its month's counters, its statistics over a chosen window as
chart series, and the keys that failed with their reasons — read through the same service functions the API calls
(show_sync_task, list_sync_task_statistic, list_key_problems), so the page and the API always agree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ferry.db.sync_repo import KeyProblem, StatTotals, SyncTaskRow
from ferry.oms import SyncStatType
from ferry.service import sync

# The windows a page offers, in seconds: up to a day the service answers 5-minute points, beyond it hourly ones.
WINDOWS: Final = {"1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600, "7d": 7 * 86400, "30d": 30 * 86400}
DEFAULT_WINDOW: Final = "1h"
COUNT_TYPES: Final = (SyncStatType.REQUEST, SyncStatType.SUCCESS, SyncStatType.FAILURE, SyncStatType.SKIP)
PROBLEMS_PER_PAGE: Final = 50


@dataclass(frozen=True, slots=True)
class StatisticsChart:
    """The series of one window, ready for the chart: x in epoch seconds, one list of values per type."""

    window: str
    granularity: str
    times: tuple[int, ...]
    counts: dict[str, tuple[int, ...]]  # REQUEST, SUCCESS, FAILURE, SKIP: objects per interval
    sizes: tuple[int, ...]  # SIZE: bytes per interval

    def as_json(self) -> dict[str, Any]:
        return {"window": self.window, "granularity": self.granularity, "times": list(self.times),
                "counts": {k: list(v) for k, v in self.counts.items()}, "sizes": list(self.sizes)}

    @property
    def totals(self) -> dict[str, int]:
        return {**{k: sum(v) for k, v in self.counts.items()}, "SIZE": sum(self.sizes)}


@dataclass(frozen=True, slots=True)
class SyncPage:
    row: SyncTaskRow
    month: StatTotals
    chart: StatisticsChart
    problems: list[KeyProblem]
    problem_count: int
    offset: int


def window_of(name: str | None) -> str:
    """A known window name (an unknown one falls back to the default rather than failing the page)."""
    return name if name in WINDOWS else DEFAULT_WINDOW


def statistics_chart(ctx: sync.SyncContext, project_id: str, task_id: str, window: str, now: float) -> StatisticsChart:
    """The task's REQUEST/SUCCESS/FAILURE/SKIP/SIZE series over the window ending now."""
    window = window_of(window)
    end_ms = int(now * 1000)
    start_ms = end_ms - WINDOWS[window] * 1000
    result = sync.list_sync_task_statistic(ctx, project_id, task_id, [*COUNT_TYPES, SyncStatType.SIZE], start_ms,
                                           end_ms)
    series = {kind.value: points for kind, points in result.series}
    times = tuple(t // 1000 for t, _ in series[SyncStatType.SIZE.value])
    counts = {kind.value: tuple(n for _, n in series[kind.value]) for kind in COUNT_TYPES}
    sizes = tuple(n for _, n in series[SyncStatType.SIZE.value])
    return StatisticsChart(window, result.granularity.value, times, counts, sizes)


def sync_page(ctx: sync.SyncContext, project_id: str, task_id: str, *, window: str | None, now: float,
              offset: int = 0) -> SyncPage:
    """Everything the page shows; NotFoundError when the project has no such task."""
    row, month = sync.show_sync_task(ctx, project_id, task_id, int(now * 1000))
    chart = statistics_chart(ctx, project_id, task_id, window_of(window), now)
    problems, count = sync.list_key_problems(ctx, project_id, task_id, limit=PROBLEMS_PER_PAGE,
                                             offset=max(0, offset))
    return SyncPage(row, month, chart, problems, count, max(0, offset))
