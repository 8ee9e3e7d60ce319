"""Test helper: `ferry worker` processes against a real broker and PostgreSQL, and a sender of due units."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from ferry.db.unit_repo import UnitRepo
from ferry.runner.broker import Sender

SRC = Path(__file__).resolve().parents[2] / "src"
REDIS = "redis://127.0.0.1:6379/0"


def broker_url() -> str:
    """A Redis broker URL with a namespace of its own, so that no other test's queue is shared."""
    return f"{REDIS}?namespace=ferry-test-{uuid.uuid4().hex[:10]}"


@dataclass
class Workers:
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in self.logs:
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            out.append(f"--- {path.name}\n" + "\n".join(text[-lines:]))
        return "\n".join(out)


@contextmanager
def workers(n: int, env: Mapping[str, str], logs: Path, threads: int = 2) -> Iterator[Workers]:
    """`n` worker processes (`ferry worker --threads threads`) with `env` over this process's environment;
    SIGTERM (a drain) at the end, SIGKILL if one is still there 30 s later."""
    full = {**os.environ, **env, "PYTHONPATH": str(SRC), "FERRY_LOG_LEVEL": "INFO"}
    out = Workers()
    try:
        for i in range(n):
            path = logs / f"worker-{i}.log"
            out.logs.append(path)
            with path.open("wb") as fh:
                out.procs.append(subprocess.Popen(
                    [sys.executable, "-c", "import sys; from ferry.cli import main; sys.exit(main(sys.argv[1:]))",
                     "worker", "--threads", str(threads), "--drain-timeout", "5"],
                    env=full, stdout=fh, stderr=subprocess.STDOUT))
        yield out
    finally:
        for p in out.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in out.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


@contextmanager
def sending(engine: Engine, url: str, resend_after: float = 5.0, every: float = 0.3) -> Iterator[None]:
    """Send a message for every unit that is due (new, lost, or whose worker died), as the server's
    coordinator does; a duplicate is harmless (the claim is one conditional update)."""
    units = UnitRepo(engine)
    sender = Sender(url)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                due = units.due_again(resend_after)
                if due:
                    sender.send(due)
                    units.mark_sent(due)
            except Exception:  # the broker or the database may be restarting: try again
                pass
            stop.wait(every)

    thread = threading.Thread(target=loop, name="test-unit-sender", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
        sender.close()
