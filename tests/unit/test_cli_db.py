"""`ferry migrate` on its embedded SQLite database imports no SQLAlchemy unless the schema needs upgrading."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from ferry.db.heads import MIGRATIONS, heads

# The run happens in a fresh interpreter: this one imported SQLAlchemy long ago.
_RUN = """
import json, sys
from ferry.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "sqlalchemy": sorted(m for m in sys.modules if m.split(".")[0] == "sqlalchemy")}))
"""


def _migrate(tmp_path: Path, state: Path) -> tuple[dict[str, object], list[str]]:
    run = subprocess.run(
        [sys.executable, "-c", _RUN, "migrate", str(tmp_path / "src"), str(tmp_path / "dst"), "--state-dir",
         str(state), "--json", "--no-progress"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 0, run.stderr
    summary, imports = (json.loads(line) for line in run.stdout.splitlines()[-2:])
    assert imports["code"] == 0
    return summary, imports["sqlalchemy"]


def _sources(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    (tmp_path / "src" / "a.txt").write_bytes(b"hello")
    (tmp_path / "src" / "b.txt").write_bytes(b"world")


def _versions(state: Path) -> set[str]:
    engine = create_engine(f"sqlite:///{state / 'ferry.db'}")
    with engine.connect() as conn:
        got = {r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))}
    engine.dispose()
    return got


def test_a_fresh_and_a_current_database_need_no_sqlalchemy(tmp_path: Path) -> None:
    _sources(tmp_path)
    state = tmp_path / "state"
    summary, imported = _migrate(tmp_path, state)
    assert (summary["status"], summary["success"]) == ("succeeded", 2) and imported == []
    assert (tmp_path / "dst" / "b.txt").read_bytes() == b"world"
    assert _versions(state) == heads()
    again, imported = _migrate(tmp_path, state)  # the database exists now, at the newest schema
    assert (again["status"], again["skipped"]) == ("succeeded", 2) and imported == []


def test_an_older_database_is_upgraded_first(tmp_path: Path) -> None:
    _sources(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    engine = create_engine(f"sqlite:///{state / 'ferry.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")  # the jobs tables only, as the first release left them
    engine.dispose()
    summary, imported = _migrate(tmp_path, state)
    assert (summary["status"], summary["success"]) == ("succeeded", 2) and "sqlalchemy" in imported
    assert _versions(state) == heads()
