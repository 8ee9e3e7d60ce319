"""Every outbound HTTP call goes through one client, `storage.http1`: no module of Ferry imports another."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import ferry

SRC = Path(ferry.__file__).parent
PYPROJECT = SRC.parents[1] / "pyproject.toml"
OTHER_CLIENTS = ("aiohttp", "yarl", "urllib.request", "urllib3", "http.client", "requests", "httpx")
# The sandbox's blocking stdlib call creates buckets on the local servers it started itself (demo, tests):
# no outbound call of the service.
HARNESS = {"sandbox.py"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_module_uses_another_http_client() -> None:
    offenders = {
        str(path.relative_to(SRC)): sorted(name for name in _imports(path)
                                           if any(name == c or name.startswith(c + ".") for c in OTHER_CLIENTS))
        for path in SRC.rglob("*.py") if str(path.relative_to(SRC)) not in HARNESS
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_aiohttp_is_not_a_runtime_dependency() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    runtime = {dep.split(">")[0].split("=")[0].split(";")[0].strip().lower() for dep in project["dependencies"]}
    assert not runtime & {"aiohttp", "yarl", "anycrc"}
    assert "aiohttp" in {d.split(">")[0].lower() for d in project["optional-dependencies"]["test"]}  # test servers
