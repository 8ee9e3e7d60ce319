"""Start-up checks of distributed mode: each failure is one line naming what to fix, with no password from a URL
and nothing of the master key; what may pass later is retried, what will not is said at once."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.secrets import SecretBox
from ferry.service.cluster_checks import (
    ClusterConfigError,
    ClusterUnreachableError,
    check_broker,
    check_database,
    check_database_url,
    check_distributed,
    check_master_key,
    redact_url,
    wait_distributed,
)
from pgdb import pg_database

PASSWORD = "s3cr3t-Pa55"
KEY_A, KEY_B = bytes(range(32)), bytes(range(1, 33))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from pg_database()


def _one_line_without_secrets(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and PASSWORD not in text and "Traceback" not in text
    return text


def test_passwords_in_urls_are_redacted() -> None:
    assert redact_url(f"postgresql://ferry:{PASSWORD}@db.internal:5432/ferry") == \
        "postgresql://ferry:***@db.internal:5432/ferry"
    assert redact_url(f"redis://:{PASSWORD}@[::1]:6379/0") == "redis://:***@[::1]:6379/0"
    assert redact_url(f"amqp://guest:{PASSWORD}@mq/vhost?heartbeat=30") == "amqp://guest:***@mq/vhost?heartbeat=30"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_sqlite_and_unknown_brokers_are_refused_at_once() -> None:
    with pytest.raises(ClusterConfigError) as exc:
        check_database_url("sqlite:////var/lib/ferry/ferry.db")
    assert "needs PostgreSQL" in _one_line_without_secrets(exc.value)
    with pytest.raises(ClusterConfigError) as exc:
        check_broker(f"kafka://u:{PASSWORD}@host:9092")
    assert "redis:// or amqp://" in _one_line_without_secrets(exc.value)


@pytest.mark.parametrize("scheme", ["postgresql", "redis", "amqp"])
def test_an_unreachable_server_is_one_line_without_its_password(scheme: str) -> None:
    url = f"{scheme}://ferry:{PASSWORD}@127.0.0.1:{_free_port()}/x"
    with pytest.raises(ClusterUnreachableError) as exc:
        (check_database if scheme == "postgresql" else check_broker)(url)
    text = _one_line_without_secrets(exc.value)
    assert text.startswith(f"cannot reach the {'database' if scheme == 'postgresql' else 'broker'} at "
                           f"{scheme}://ferry:***@127.0.0.1:"), text


def test_the_running_servers_pass(pg_url: str) -> None:
    check_database(pg_url)
    check_broker("redis://127.0.0.1:6379/0")
    check_broker("redis://127.0.0.1:6379/0?namespace=ferry-test")  # Ferry's own parameter, not the client's
    check_broker("amqp://guest:guest@127.0.0.1:5672/%2F")


def test_a_wrong_password_is_said_without_it(pg_url: str) -> None:
    with pytest.raises(ClusterUnreachableError) as exc:
        check_broker(f"amqp://guest:{PASSWORD}@127.0.0.1:5672/%2F")
    assert "amqp://guest:***@127.0.0.1:5672" in _one_line_without_secrets(exc.value)


def test_a_worker_with_another_master_key_is_refused(pg_url: str) -> None:
    check_master_key(pg_url, SecretBox(KEY_A))  # the first process sets the cluster's fingerprint
    check_master_key(pg_url, SecretBox(KEY_A))  # the same key again: fine
    with pytest.raises(ClusterConfigError) as exc:
        check_master_key(pg_url, SecretBox(KEY_B))
    text = _one_line_without_secrets(exc.value)
    assert "FERRY_MASTER_KEY" in text
    for form in (KEY_B.hex(), base64.b64encode(KEY_B).decode(), KEY_A.hex(), base64.b64encode(KEY_A).decode()):
        assert form not in text
    # The full check in order: SQLite is said before anything is reached.
    with pytest.raises(ClusterConfigError, match="needs PostgreSQL"):
        check_distributed("sqlite:///x.db", f"redis://:{PASSWORD}@127.0.0.1:{_free_port()}", SecretBox(KEY_A))
    check_distributed(pg_url, "redis://127.0.0.1:6379/0", SecretBox(KEY_A))


def test_unreachable_is_tried_again_until_the_patience_runs_out(pg_url: str) -> None:
    said: list[str] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    broker = f"redis://:{PASSWORD}@127.0.0.1:{_free_port()}/0"
    with pytest.raises(ClusterUnreachableError):
        wait_distributed(pg_url, broker, SecretBox(KEY_A), 10.0, said.append, every=2.0, clock=lambda: now[0],
                         sleep=sleep)
    assert len(said) == 5 and all(s.endswith("; trying again in 2 s") and PASSWORD not in s for s in said)
    # A setup error is not retried.
    said.clear()
    with pytest.raises(ClusterConfigError):
        wait_distributed("sqlite:///x.db", broker, SecretBox(KEY_A), 10.0, said.append, clock=lambda: now[0],
                         sleep=sleep)
    assert said == []


def _serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, FERRY_DATA_DIR=str(tmp_path), FERRY_STARTUP_PATIENCE="0", **env)
    if "FERRY_DATABASE_URL" not in env:
        full.pop("FERRY_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "ferry.cli", "serve", "--port", str(_free_port())], env=full,
                          capture_output=True, text=True, timeout=120)


def _said(run: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in run.stderr and PASSWORD not in run.stderr, run.stderr
    return lines[0]


def test_serve_in_distributed_mode_says_what_is_wrong_in_one_line(tmp_path: Path, pg_url: str) -> None:
    sqlite = _serve(tmp_path / "a", FERRY_BROKER_URL="redis://127.0.0.1:6379/0")
    assert sqlite.returncode == 2 and "needs PostgreSQL" in _said(sqlite)

    broker = f"redis://:{PASSWORD}@127.0.0.1:{_free_port()}/0"
    down = _serve(tmp_path / "b", FERRY_BROKER_URL=broker, FERRY_DATABASE_URL=pg_url)
    assert down.returncode == 1 and "cannot reach the broker at redis://:***@127.0.0.1:" in _said(down)

    check_master_key(pg_url, SecretBox(KEY_A))
    other = _serve(tmp_path / "c", FERRY_BROKER_URL="redis://127.0.0.1:6379/0", FERRY_DATABASE_URL=pg_url,
                   FERRY_MASTER_KEY=KEY_B.hex())
    assert other.returncode == 2 and "FERRY_MASTER_KEY is not the key this cluster uses" in _said(other)


def test_a_worker_with_another_key_or_no_broker_says_so_in_one_line(tmp_path: Path, pg_url: str) -> None:
    check_master_key(pg_url, SecretBox(KEY_A))

    def worker(**env: str) -> subprocess.CompletedProcess[str]:
        full = dict(os.environ, FERRY_DATA_DIR=str(tmp_path), FERRY_STARTUP_PATIENCE="0", FERRY_DATABASE_URL=pg_url,
                    **env)
        return subprocess.run([sys.executable, "-m", "ferry.cli", "worker"], env=full, capture_output=True,
                              text=True, timeout=120)

    other = worker(FERRY_BROKER_URL="redis://127.0.0.1:6379/0?namespace=ferry-check", FERRY_MASTER_KEY=KEY_B.hex())
    assert other.returncode == 2 and "FERRY_MASTER_KEY is not the key this cluster uses" in _said(other)
    down = worker(FERRY_BROKER_URL=f"amqp://ferry:{PASSWORD}@127.0.0.1:{_free_port()}/%2F",
                  FERRY_MASTER_KEY=KEY_A.hex())
    assert down.returncode == 1 and "cannot reach the broker at amqp://ferry:***@127.0.0.1:" in _said(down)
