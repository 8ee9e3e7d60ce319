"""`ferry credentials` and `ferry tokens` against the real database, used by the live service through the SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from ferry_service import start_service
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkoms.v2 import ListTasksRequest, UpdatePrivacyAgreementRecordRequest
from live_server import oms_client
from sqlalchemy import select

from ferry.cli import main
from ferry.db.api_models import api_credentials, privacy_agreements

FERRY = [sys.executable, "-m", "ferry.cli"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ferry-home")


@pytest.fixture(scope="module")
def env(home: Path) -> dict[str, str]:
    e = dict(os.environ, FERRY_DATA_DIR=str(home))
    for name in ("FERRY_DATABASE_URL", "FERRY_MASTER_KEY"):
        e.pop(name, None)
    return e


@pytest.fixture(scope="module")
def server(home: Path, env: dict[str, str]) -> Iterator[Any]:
    # The CLI creates the database and the master key first, as an operator would before `ferry serve`.
    ferry(env, "credentials", "list")
    started = start_service(home, f"sqlite:///{home / 'ferry.db'}", run_tasks=False)
    try:
        yield started.value
    finally:
        started.close()


def ferry(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FERRY, *args], env=env, capture_output=True, text=True, timeout=60)


def test_create_list_revoke(server: Any, env: dict[str, str], home: Path) -> None:
    project = uuid.uuid4().hex
    made = ferry(env, "credentials", "create", "--project-id", project)
    assert made.returncode == 0, made.stderr
    [line] = made.stdout.splitlines()
    cred = json.loads(line)
    assert set(cred) == {"project_id", "access_key", "secret_key"} and cred["project_id"] == project
    assert len(cred["access_key"]) == 20 and len(cred["secret_key"]) == 40

    client = oms_client(server.url, cred["access_key"], cred["secret_key"], project)
    assert client.list_tasks(ListTasksRequest()).count == 0
    client.update_privacy_agreement_record(UpdatePrivacyAgreementRecordRequest())
    with server.service.engine.connect() as conn:
        assert conn.execute(select(privacy_agreements.c.project_id)).scalars().all().count(project) == 1
        stored = conn.execute(select(api_credentials.c.secret).where(
            api_credentials.c.access_key == cred["access_key"])).scalar_one()
    assert cred["secret_key"] not in stored
    raw = b"".join(p.read_bytes() for p in home.glob("ferry.db*"))
    assert cred["secret_key"].encode() not in raw, "the secret key is stored in clear"

    listed = ferry(env, "credentials", "list", "--project-id", project)
    rows = [json.loads(x) for x in listed.stdout.splitlines()]
    assert [(r["access_key"], r["status"]) for r in rows] == [(cred["access_key"], "active")]
    assert cred["secret_key"] not in listed.stdout + ferry(env, "credentials", "list").stdout

    revoked = ferry(env, "credentials", "revoke", cred["access_key"])
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["status"] == "revoked"
    with pytest.raises(ClientRequestException) as info:
        client.list_tasks(ListTasksRequest())
    assert (info.value.status_code, info.value.error_code) == (401, "APIGW.0301")
    again = ferry(env, "credentials", "revoke", cred["access_key"])
    assert again.returncode == 2 and again.stderr.startswith("ferry: error:")


@pytest.mark.parametrize("bad", ["0123", "0123456789ABCDEF0123456789ABCDEF", "g" * 32, "0123456789abcdef" * 3])
def test_project_id_must_be_32_hex(env: dict[str, str], bad: str, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        if name.startswith("FERRY_"):
            monkeypatch.setenv(name, value)
    for args in (["credentials", "create", "--project-id", bad], ["tokens", "create", "--project-id", bad]):
        assert main(args) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert len(err.strip().splitlines()) == 1 and "32 lower-case hexadecimal" in err


def test_tokens(server: Any, env: dict[str, str]) -> None:
    project = uuid.uuid4().hex
    made = ferry(env, "tokens", "create", "--project-id", project, "--ttl", "600")
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)
    assert set(token) == {"token", "project_id", "expires_at"} and token["project_id"] == project
    ok = requests.get(f"{server.url}/v2/{project}/tasks", headers={"X-Auth-Token": token["token"]}, timeout=10)
    assert ok.status_code == 200 and ok.json() == {"tasks": [], "count": 0}
    other = requests.get(f"{server.url}/v2/{uuid.uuid4().hex}/tasks", headers={"X-Auth-Token": token["token"]},
                         timeout=10)
    assert other.status_code == 403
    forged = requests.get(f"{server.url}/v2/{project}/tasks", headers={"X-Auth-Token": token["token"] + "x"},
                          timeout=10)
    assert forged.status_code == 401 and forged.json()["error_code"] == "APIGW.0301"
    short = ferry(env, "tokens", "create", "--project-id", project, "--ttl", "5")
    assert short.returncode == 2 and short.stderr.startswith("ferry: error:")
