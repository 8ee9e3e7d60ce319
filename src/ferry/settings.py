"""Deployment settings read from the environment, with embedded defaults that need no external service."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """Where Ferry keeps its state: `FERRY_DATA_DIR`, else the per-user data directory."""
    raw = os.environ.get("FERRY_DATA_DIR")
    if raw:
        path = Path(raw).expanduser()
    else:
        import platformdirs  # only when no directory is given: ~3 ms of a run's start-up

        path = Path(platformdirs.user_data_dir("ferry", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_url(state_dir: Path | None = None) -> str:
    """`FERRY_DATABASE_URL` (e.g. PostgreSQL) or an embedded SQLite file in the state directory."""
    url = os.environ.get("FERRY_DATABASE_URL")
    if url and state_dir is None:
        return url
    base = state_dir if state_dir is not None else data_dir()
    base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{base / 'ferry.db'}"


def records_dir(data_dir: Path, project_id: str, task_id: int) -> Path:
    """Where the service writes a task's failed/success/skip object lists."""
    return data_dir / "records" / project_id / str(task_id)


def reports_dir(state_dir: Path) -> Path:
    """Where `ferry migrate` (and the demo) write the failed-object report of a job."""
    return state_dir / "reports"
