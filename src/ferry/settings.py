"""Deployment settings read from the environment, with embedded defaults that need no external service."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ferry.errors import UsageError

log = logging.getLogger("ferry.settings")


def data_dir() -> Path:
    """Where Ferry keeps its state: `FERRY_DATA_DIR`, else the per-user data directory; private to its owner."""
    raw = os.environ.get("FERRY_DATA_DIR")
    if raw:
        path = Path(raw).expanduser()
    else:
        import platformdirs  # only when no directory is given: ~3 ms of a run's start-up

        path = Path(platformdirs.user_data_dir("ferry", appauthor=False))
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    make_private(path)
    return path


def make_private(path: Path) -> None:
    """Take group and other permissions off `path` (a directory becomes 0700, a file 0600) if it has any: it
    holds the database, the master key and object lists, and older versions created it 0755/0644."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            path.chmod(mode & 0o700)
            log.warning("tightened the permissions of %s from %04o to %04o", path, mode, mode & 0o700)
    except FileNotFoundError:
        pass  # gone meanwhile (an SQLite journal): nothing left to protect
    except OSError as exc:  # not ours to change (another owner): the operator's call, not a reason to stop
        log.warning("could not check the permissions of %s: %s", path, exc.strerror)


def database_url(state_dir: Path | None = None) -> str:
    """`FERRY_DATABASE_URL` (e.g. PostgreSQL) or an embedded SQLite file in the state directory."""
    url = os.environ.get("FERRY_DATABASE_URL")
    if url and state_dir is None:
        return url
    base = state_dir if state_dir is not None else data_dir()
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return f"sqlite:///{base / 'ferry.db'}"


def startup_patience() -> float:
    """How long a server or worker in distributed mode waits for its database and broker to be reachable at
    start-up (they may be starting alongside) before it exits: FERRY_STARTUP_PATIENCE seconds."""
    return _number("FERRY_STARTUP_PATIENCE", 60.0, 0.0, 86400.0)


def public_url() -> str | None:
    """`FERRY_PUBLIC_URL`: the address clients reach the API at (behind a proxy), for links the API hands out;
    None when unset, and links then name the address the connection came in on, never the Host header."""
    raw = os.environ.get("FERRY_PUBLIC_URL", "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment or "@" in (
        parts.netloc
    ):
        raise UsageError("FERRY_PUBLIC_URL must be an http(s) URL without query or credentials, "
                         "e.g. https://ferry.example.com")
    return raw.rstrip("/")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """How long `ferry serve` waits for slow or idle clients, and how many connections it serves at once
    (against slowloris); from FERRY_HTTP_* variables."""

    header_timeout: float = 10.0  # the request line and headers must all arrive within this
    body_timeout: float = 10.0  # a body may take this long, plus its length at body_min_rate
    body_min_rate: int = 16 * 1024  # bytes per second
    keep_alive: float = 5.0  # a connection idle between requests is closed after this
    max_connections: int = 256  # requests on connections beyond this are answered 503

    def body_deadline(self, length: int) -> float:
        """Seconds a body of `length` bytes may take to arrive."""
        return self.body_timeout + length / self.body_min_rate

    @classmethod
    def from_env(cls) -> HttpLimits:
        d = cls()
        return cls(
            header_timeout=_number("FERRY_HTTP_HEADER_TIMEOUT", d.header_timeout, 0.1, 3600),
            body_timeout=_number("FERRY_HTTP_BODY_TIMEOUT", d.body_timeout, 0.1, 3600),
            body_min_rate=int(_number("FERRY_HTTP_BODY_MIN_RATE", d.body_min_rate, 1, 1 << 30)),
            keep_alive=_number("FERRY_HTTP_KEEP_ALIVE", d.keep_alive, 0.1, 3600),
            max_connections=int(_number("FERRY_HTTP_MAX_CONNECTIONS", d.max_connections, 1, 1_000_000)),
        )


@dataclass(frozen=True, slots=True)
class StoreTimeouts:
    """How long Ferry waits on a store before a request counts as failed (and is retried), from FERRY_* variables.

    A stall is no byte either way (request body out, answer in) for `stall` seconds, at any point of a request:
    a source that stops sending mid-body, a destination that takes a body and never answers. An endpoint that
    answered before and then cannot be connected to (its name no longer resolves, connections are refused) is
    tried again for `unreachable` seconds before the run stops on it; one never reached stops it at once."""

    connect: float = 10.0  # FERRY_CONNECT_TIMEOUT
    stall: float = 120.0  # FERRY_STALL_TIMEOUT
    unreachable: float = 60.0  # FERRY_UNREACHABLE_SECONDS
    throttle: float = 900.0  # FERRY_THROTTLE_SECONDS: how long one request is retried while the store throttles

    @classmethod
    def from_env(cls) -> StoreTimeouts:
        d = cls()
        return cls(
            connect=_number("FERRY_CONNECT_TIMEOUT", d.connect, 0.01, 3600),
            stall=_number("FERRY_STALL_TIMEOUT", d.stall, 0.01, 86400),
            unreachable=_number("FERRY_UNREACHABLE_SECONDS", d.unreachable, 0, 86400),
            throttle=_number("FERRY_THROTTLE_SECONDS", d.throttle, 0, 7 * 86400),
        )


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """What `GET /metrics` shows and who may read it, from FERRY_METRICS_* variables.

    Per-task series are kept bounded: every task that runs or waits to run, then tasks updated within
    `recent_seconds` (finished, failed or paused lately), at most `max_tasks` in all (running ones first). A task
    older than that drops out of the per-task series; the totals by status still count it."""

    token: str | None = None  # FERRY_METRICS_TOKEN: when set, scrapes must send `Authorization: Bearer <it>`
    recent_seconds: float = 3600.0  # FERRY_METRICS_RECENT_SECONDS
    max_tasks: int = 1000  # FERRY_METRICS_MAX_TASKS
    # FERRY_METRICS_PUBLISH_SECONDS: how often a process without an API (the sync worker process) publishes its
    # tallies to the database for /metrics to add.
    publish_seconds: float = 5.0

    @classmethod
    def from_env(cls) -> MetricsSettings:
        d = cls()
        token = os.environ.get("FERRY_METRICS_TOKEN", "").strip() or None
        return cls(
            token=token,
            recent_seconds=_number("FERRY_METRICS_RECENT_SECONDS", d.recent_seconds, 0, 366 * 86400),
            max_tasks=int(_number("FERRY_METRICS_MAX_TASKS", d.max_tasks, 0, 1_000_000)),
            publish_seconds=_number("FERRY_METRICS_PUBLISH_SECONDS", d.publish_seconds, 0.1, 3600),
        )


def console_session_ttl() -> float:
    """How long a web console sign-in lasts, in seconds (FERRY_CONSOLE_SESSION_HOURS, 8 by default)."""
    return _number("FERRY_CONSOLE_SESSION_HOURS", 8, 0.05, 720) * 3600


def _number(name: str, default: float, low: float, high: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise UsageError(f"{name} must be a number from {low:g} to {high:g}, not {raw!r}")
    return value


def state_patience() -> float:
    """How long `ferry migrate` waits, paused, for its job database to take writes again (a full disk freed, a
    lock released, a database restarted) before it stops with that error: FERRY_STATE_PATIENCE seconds."""
    return _number("FERRY_STATE_PATIENCE", 30.0, 0.0, 86400.0)


def records_dir(data_dir: Path, project_id: str, task_id: int) -> Path:
    """Where the service writes a task's failed/success/skip object lists."""
    return data_dir / "records" / project_id / str(task_id)


def reports_dir(state_dir: Path) -> Path:
    """Where `ferry migrate` (and the demo) write the failed-object report of a job."""
    return state_dir / "reports"
