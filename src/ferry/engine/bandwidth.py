"""Time-window bandwidth policies (OMS `bandwidth_policy`): which byte rate applies at a given moment."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

_DAY = 24 * 60


@dataclass(frozen=True, slots=True)
class Window:
    """`start` inclusive, `end` exclusive, in minutes of the day; `end <= start` wraps past midnight."""

    start: int
    end: int
    max_bandwidth: int  # bytes per second

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Window:
        return cls(_minutes(str(raw["start"])), _minutes(str(raw["end"])), int(raw["max_bandwidth"]))

    def covers(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        # A window whose end is not after its start runs through midnight ("22:00"-"06:00"); equal ends
        # ("00:00"-"00:00") cover the whole day.
        return minute >= self.start or minute < self.end


def _minutes(hhmm: str) -> int:
    hours, _, minutes = hhmm.partition(":")
    value = int(hours) * 60 + int(minutes)
    if not 0 <= value < _DAY:
        raise ValueError(f"not a time of day: {hhmm!r}")
    return value


def parse_policy(raw: Iterable[Mapping[str, Any]]) -> list[Window]:
    return [Window.parse(item) for item in raw]


def limit_at(windows: Iterable[Window], when: datetime) -> int | None:
    """The cap (bytes/s) of the window covering `when` (its local time of day), or None: unlimited.

    Windows are read in the server's local time; the API rejects overlapping windows, so the first match is
    the only one.
    """
    minute = when.hour * 60 + when.minute
    for window in windows:
        if window.covers(minute):
            return window.max_bandwidth
    return None
