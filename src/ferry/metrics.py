"""Process-wide event tallies (store request errors and retries, sync latency, API latency) that `/metrics` exports.

These are plain locked dictionaries, not prometheus_client objects: importing prometheus_client costs about 40 ms
(its exposition module pulls in http.server), two thirds again of the whole CLI's start-up, and the data plane
(storage wrappers, the sync workers) must not pay for an exporter it may never serve. The API layer turns
`families()` into Prometheus text. Bumping a tally is one lock and one dict update: per request, never per byte.

Every tally caps its label sets (`max_series`): label values past the cap count under "other", so a store that
answers with ever new error codes cannot grow the exposition without bound. No label ever carries an object key.

Tallies of one process reach another's `/metrics` through `snapshot()` / `merge()`: a process without an API
(the sync worker process) publishes its snapshot to the database, and the server adds it to its own.
"""

from __future__ import annotations

import bisect
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

OTHER: Final = "other"
_CODE_RE: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,48}$")


@dataclass(frozen=True, slots=True)
class Sample:
    """One series of a family at one moment: its label values and value (histograms: bucket counts, sum)."""

    labels: tuple[str, ...]
    value: float = 0.0
    buckets: tuple[float, ...] = ()  # cumulative counts, one per bound, +Inf last (histograms only)
    total: float = 0.0  # sum of observations (histograms only)


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: str  # counter | histogram
    help: str
    labelnames: tuple[str, ...]
    bounds: tuple[float, ...]  # histogram bucket bounds without +Inf
    samples: tuple[Sample, ...]


class _Tally(ABC):
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str], max_series: int, register: bool) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self.max_series = max_series
        self._lock = threading.Lock()
        if register:
            _ALL.append(self)

    @abstractmethod
    def blank(self, max_series: int) -> _Tally:
        """An empty, unregistered tally of the same family, to merge snapshots into."""

    @abstractmethod
    def family(self) -> Family:
        """The tally as one metric family for a scrape."""

    @abstractmethod
    def add(self, sample: Sample) -> None:
        """Add another process's series (from its snapshot) to this one."""

    def _key(self, labels: tuple[str, ...], table: Mapping[tuple[str, ...], Any]) -> tuple[str, ...]:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, not {labels}")
        if labels in table or len(table) < self.max_series:
            return labels
        return (OTHER,) * len(labels)


class CounterTally(_Tally):
    """A monotonic count per label set."""

    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (), max_series: int = 1000, *,
                 register: bool = True) -> None:
        super().__init__(name, help, labelnames, max_series, register)
        self._values: dict[tuple[str, ...], float] = {}

    def blank(self, max_series: int) -> CounterTally:
        return CounterTally(self.name, self.help, self.labelnames, max_series, register=False)

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            key = self._key(labels, self._values)
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def family(self) -> Family:
        with self._lock:
            samples = tuple(Sample(k, v) for k, v in sorted(self._values.items()))
        return Family(self.name, self.kind, self.help, self.labelnames, (), samples)

    def add(self, sample: Sample) -> None:
        with self._lock:
            key = self._key(sample.labels, self._values)
            self._values[key] = self._values.get(key, 0.0) + sample.value


class HistogramTally(_Tally):
    """Observations counted into fixed buckets per label set."""

    kind = "histogram"

    def __init__(self, name: str, help: str, bounds: Sequence[float], labelnames: Sequence[str] = (),
                 max_series: int = 500, *, register: bool = True) -> None:
        super().__init__(name, help, labelnames, max_series, register)
        self.bounds = tuple(sorted(bounds))
        # Per label set: [count in each bucket (not cumulative), +Inf bucket] and the sum of observations.
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = {}

    def blank(self, max_series: int) -> HistogramTally:
        return HistogramTally(self.name, self.help, self.bounds, self.labelnames, max_series, register=False)

    def observe(self, value: float, *labels: str) -> None:
        i = bisect.bisect_left(self.bounds, value)
        with self._lock:
            key = self._key(labels, self._counts)
            counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = [0] * (len(self.bounds) + 1)
            counts[i] += 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, *labels: str) -> int:
        with self._lock:
            return sum(self._counts.get(labels, ()))

    def family(self) -> Family:
        with self._lock:
            samples = []
            for key, counts in sorted(self._counts.items()):
                cumulative, running = [], 0
                for c in counts:
                    running += c
                    cumulative.append(float(running))
                samples.append(Sample(key, float(running), tuple(cumulative), self._sums.get(key, 0.0)))
        return Family(self.name, self.kind, self.help, self.labelnames, self.bounds, tuple(samples))

    def add(self, sample: Sample) -> None:
        if len(sample.buckets) != len(self.bounds) + 1:
            return  # published with other bounds (another version): not comparable
        with self._lock:
            key = self._key(sample.labels, self._counts)
            counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = [0] * (len(self.bounds) + 1)
            previous = 0.0
            for i, cumulative in enumerate(sample.buckets):
                counts[i] += int(cumulative - previous)
                previous = cumulative
            self._sums[key] = self._sums.get(key, 0.0) + sample.total


_ALL: list[_Tally] = []


def families(extra: Iterable[Mapping[str, Any]] = ()) -> list[Family]:
    """This process's tallies, each with the snapshots of other processes (`snapshot()` results) added."""
    extra = list(extra)
    if not extra:
        return [tally.family() for tally in _ALL]
    out = []
    for tally in _ALL:
        merged = tally.blank(tally.max_series * (1 + len(extra)))
        for own in tally.family().samples:
            merged.add(own)
        for snap in extra:
            for raw in snap.get(tally.name, ()):
                theirs = _sample_of(raw)
                if theirs is not None and len(theirs.labels) == len(tally.labelnames):
                    merged.add(theirs)
        out.append(merged.family())
    return out


def snapshot() -> dict[str, list[list[Any]]]:
    """Every tally's series as JSON-ready lists, for another process to add with `families(extra=...)`."""
    return {
        f.name: [[list(s.labels), s.value, list(s.buckets), s.total] for s in f.samples]
        for f in (t.family() for t in _ALL)
    }


def _sample_of(raw: Any) -> Sample | None:
    try:
        labels, value, buckets, total = raw
        return Sample(tuple(str(v) for v in labels), float(value), tuple(float(b) for b in buckets), float(total))
    except (TypeError, ValueError):
        return None  # a row written by another version: skipped, not fatal to the scrape


def error_code(exc: BaseException) -> str:
    """A bounded label for a failed store request: the store's error code when it looks like one, else its HTTP
    status, else the error's class (a timeout, a reset connection)."""
    code = getattr(exc, "s3_code", None)
    if isinstance(code, str) and _CODE_RE.match(code):
        return code
    status = getattr(exc, "http_status", None)
    if isinstance(status, int):
        return str(status)
    return type(exc).__name__


def backend_kind(name: str) -> str:
    """The kind of store from a backend's display name (`s3://bucket/prefix` -> `s3`): bucket and prefix are
    the user's and left out of labels."""
    kind, sep, _ = name.partition("://")
    return kind if sep and _CODE_RE.match(kind) else OTHER


# -- the tallies -------------------------------------------------------------------------------------------------
STORE_REQUEST_ERRORS: Final = CounterTally(
    "ferry_store_request_errors_total",
    "Store requests that failed, by kind of store, operation and error code (S3 code, HTTP status or error class).",
    ("backend", "operation", "code"),
)
STORE_RETRIES: Final = CounterTally(
    "ferry_store_retries_total",
    "Store requests tried again, by kind of store, operation and why (throttled: the store asked to slow down).",
    ("backend", "operation", "reason"),
)
SYNC_EVENT_LATENCY: Final = HistogramTally(
    "ferry_sync_event_latency_seconds",
    "From a sync event's acceptance to its key being settled: copied and verified (outcome=success), or found "
    "already the same on the destination (outcome=skip).",
    (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
    ("outcome",),
)
API_REQUEST_DURATION: Final = HistogramTally(
    "ferry_api_request_duration_seconds",
    "API requests by method, route template and HTTP status, from arrival to the answer's start.",
    (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    ("method", "route", "status"),
)
