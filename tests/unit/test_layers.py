"""The layer contract in pyproject.toml ([tool.importlinter]): imports only point down, and lint-imports says so."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    return subprocess.run([str(LINT), "--no-cache", "--no-logo", str(tree / "pyproject.toml")], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_tree_keeps_its_layers() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "upward"), [
    ("runner/migration.py", "ferry.service.tasks"),  # a runner calling a service
    ("runner/groups.py", "ferry.api.deps"),  # a runner reaching into the API
    ("oms/tasks.py", "ferry.runner.migration"),  # the vocabulary sits below the runners
    ("settings.py", "ferry.secrets"),
    ("engine/pipeline.py", "ferry.runner.migration"),
    ("storage/s3.py", "ferry.engine.copier"),
    ("db/job_repo.py", "ferry.storage.base"),  # siblings of one layer stay apart
    ("demo.py", "ferry.cli"),
    ("secrets.py", "ferry.db.database"),
    ("console/app.py", "ferry.api.deps"),  # the console and the API are siblings: neither reaches into the other
    ("service/tasks.py", "ferry.console.session"),
])
def test_an_upward_import_breaks_the_contract(tmp_path: Path, module: str, upward: str) -> None:
    shutil.copytree(ROOT / "src" / "ferry", tmp_path / "src" / "ferry", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    importer = "ferry." + module.removesuffix(".py").replace("/", ".")
    with (tmp_path / "src" / "ferry" / module).open("a", encoding="utf-8") as fh:
        fh.write(f"\nimport {upward}  # noqa: E402\n")
    result = lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 kept, 1 broken" in result.stdout
    assert f"- {importer} -> {upward} (l." in result.stdout
