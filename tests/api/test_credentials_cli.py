"""`ferry credentials` and `ferry tokens` against the real database, used by the live service through the SDK."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
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
from ferry.db.api_models import api_credentials, api_seen_signatures, api_tokens, privacy_agreements
from pgdb import pg_database

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
    # Read by another process: closing a descriptor of the database in this one (which runs the server) would
    # drop the server's SQLite locks, and the next CLI run would then delete the WAL under it.
    raw = subprocess.run(["cat", *map(str, home.glob("ferry.db*"))], capture_output=True, check=True).stdout
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


def _token_status(server: Any, project: str, token: str) -> int:
    r = requests.get(f"{server.url}/v2/{project}/tasks", headers={"X-Auth-Token": token}, timeout=10)
    if r.status_code == 401:
        assert r.json() == {"error_code": "APIGW.0301",
                            "error_msg": "Incorrect IAM authentication information: verify aksk signature fail"}
    return r.status_code


def _lines(run: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert run.returncode == 0, run.stderr
    return [json.loads(x) for x in run.stdout.splitlines()]


def test_tokens(server: Any, env: dict[str, str]) -> None:
    project = uuid.uuid4().hex
    key = json.loads(ferry(env, "credentials", "create", "--project-id", project).stdout)["access_key"]
    made = ferry(env, "tokens", "create", "--project-id", project, "--ttl", "600")
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)
    assert set(token) == {"token", "token_id", "project_id", "access_key", "expires_at"}
    assert token["project_id"] == project and token["access_key"] == key
    ok = requests.get(f"{server.url}/v2/{project}/tasks", headers={"X-Auth-Token": token["token"]}, timeout=10)
    assert ok.status_code == 200 and ok.json() == {"tasks": [], "count": 0}
    other = requests.get(f"{server.url}/v2/{uuid.uuid4().hex}/tasks", headers={"X-Auth-Token": token["token"]},
                         timeout=10)
    assert other.status_code == 403
    assert _token_status(server, project, token["token"] + "x") == 401
    short = ferry(env, "tokens", "create", "--project-id", project, "--ttl", "5")
    assert short.returncode == 2 and short.stderr.startswith("ferry: error:")


def test_tokens_are_listed_without_secrets_and_revoked(server: Any, env: dict[str, str], home: Path) -> None:
    project, bystander = uuid.uuid4().hex, uuid.uuid4().hex
    for p in (project, bystander):
        assert ferry(env, "credentials", "create", "--project-id", p).returncode == 0
    made = [json.loads(ferry(env, "tokens", "create", "--project-id", project).stdout) for _ in range(3)]
    kept = json.loads(ferry(env, "tokens", "create", "--project-id", bystander).stdout)
    assert all(_token_status(server, project, t["token"]) == 200 for t in made)

    listed = ferry(env, "tokens", "list", "--project-id", project)
    rows = _lines(listed)
    assert sorted(r["token_id"] for r in rows) == sorted(t["token_id"] for t in made)
    assert all(r["status"] == "active" and r["project_id"] == project for r in rows)
    everything = listed.stdout + ferry(env, "tokens", "list").stdout
    assert not any(t["token"] in everything for t in [*made, kept]), "a token secret was listed"
    assert kept["token_id"] in everything

    gone = ferry(env, "tokens", "revoke", made[0]["token_id"])
    assert _lines(gone) == [{"token_id": made[0]["token_id"], "status": "revoked"}]
    assert _token_status(server, project, made[0]["token"]) == 401
    assert _token_status(server, project, made[1]["token"]) == 200
    again = ferry(env, "tokens", "revoke", made[0]["token_id"])
    assert again.returncode == 2 and again.stderr.startswith("ferry: error:") and "token" in again.stderr
    bad = ferry(env, "tokens", "revoke", "not-an-id")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1

    every = ferry(env, "tokens", "revoke", "--project-id", project, "--all")
    assert _lines(every) == [{"project_id": project, "revoked": 2}]
    assert [_token_status(server, project, t["token"]) for t in made] == [401, 401, 401]
    assert _token_status(server, bystander, kept["token"]) == 200
    assert {r["status"] for r in _lines(ferry(env, "tokens", "list", "--project-id", project))} == {"revoked"}
    for argv in (["tokens", "revoke"], ["tokens", "revoke", "--all"], ["tokens", "revoke", "--project-id", project],
                 ["tokens", "revoke", made[1]["token_id"], "--project-id", project, "--all"]):
        wrong = ferry(env, *argv)
        assert wrong.returncode == 2 and wrong.stderr.startswith("ferry: error:"), argv


def test_a_token_dies_with_its_access_key(server: Any, env: dict[str, str]) -> None:
    project = uuid.uuid4().hex
    none = ferry(env, "tokens", "create", "--project-id", project)
    assert none.returncode == 2 and "credentials create" in none.stderr
    first, second = (json.loads(ferry(env, "credentials", "create", "--project-id", project).stdout)["access_key"]
                     for _ in range(2))
    ambiguous = ferry(env, "tokens", "create", "--project-id", project)
    assert ambiguous.returncode == 2 and "--access-key" in ambiguous.stderr
    foreign = ferry(env, "tokens", "create", "--project-id", uuid.uuid4().hex, "--access-key", first)
    assert foreign.returncode == 2 and foreign.stderr.startswith("ferry: error:")
    t1 = json.loads(ferry(env, "tokens", "create", "--project-id", project, "--access-key", first).stdout)
    t2 = json.loads(ferry(env, "tokens", "create", "--project-id", project, "--access-key", second).stdout)
    assert (t1["access_key"], t2["access_key"]) == (first, second)
    assert _token_status(server, project, t1["token"]) == 200

    assert ferry(env, "credentials", "revoke", first).returncode == 0
    assert _token_status(server, project, t1["token"]) == 401
    assert _token_status(server, project, t2["token"]) == 200
    status = {r["token_id"]: r["status"] for r in _lines(ferry(env, "tokens", "list", "--project-id", project))}
    assert status == {t1["token_id"]: "key revoked", t2["token_id"]: "active"}
    retired = ferry(env, "tokens", "create", "--project-id", project, "--access-key", first)
    assert retired.returncode == 2 and retired.stderr.startswith("ferry: error:")


def test_a_token_from_before_keys_were_recorded_lives_while_its_project_has_a_key(server: Any) -> None:
    """Tokens created by older versions name no key: they die once their project has no active key."""
    from ferry.service import credentials

    engine = server.service.engine
    project = uuid.uuid4().hex
    key = credentials.create_credential(engine, server.service.box, project)
    token = "legacy-" + uuid.uuid4().hex
    with engine.begin() as conn:
        conn.execute(api_tokens.insert().values(
            token_hash=hashlib.sha256(token.encode()).hexdigest(), project_id=project, created_at=time.time(),
            expires_at=time.time() + 600, revoked_at=None))
    assert _token_status(server, project, token) == 200
    credentials.revoke_credential(engine, key.access_key)
    assert _token_status(server, project, token) == 401


@pytest.fixture(params=["sqlite", "postgresql"])
def store_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    from ferry.db.database import open_database

    pg = pg_database() if request.param == "postgresql" else None
    url = next(pg) if pg is not None else f"sqlite:///{tmp_path / 'ferry.db'}"
    engine = open_database(url)
    try:
        yield engine
    finally:
        engine.dispose()
        if pg is not None:
            next(pg, None)


def test_the_credential_store_on_each_database(store_engine: Any, tmp_path: Path) -> None:
    """Token lookup (key and project rules) and the replay store, on SQLite and PostgreSQL alike."""
    from ferry.secrets import SecretBox
    from ferry.service import credentials

    box = SecretBox.load(tmp_path)
    store = credentials.DbCredentialStore(store_engine, box)
    project = uuid.uuid4().hex
    first = credentials.create_credential(store_engine, box, project)
    second = credentials.create_credential(store_engine, box, project)
    token = credentials.create_token(store_engine, project, access_key=first.access_key)
    legacy = "legacy-" + uuid.uuid4().hex
    with store_engine.begin() as conn:
        conn.execute(api_tokens.insert().values(
            token_hash=hashlib.sha256(legacy.encode()).hexdigest(), project_id=project, created_at=time.time(),
            expires_at=time.time() + 600, revoked_at=None))
    assert store.lookup_token(token.token) == project and store.lookup_token(legacy) == project
    credentials.revoke_credential(store_engine, first.access_key)
    assert store.lookup_token(token.token) is None and store.lookup_token(legacy) == project
    credentials.revoke_credential(store_engine, second.access_key)
    assert store.lookup_token(legacy) is None
    assert [t.status for t in credentials.list_tokens(store_engine, project)] == ["key revoked"] * 2
    assert credentials.revoke_token(store_engine, token.token_id)
    assert not credentials.revoke_token(store_engine, token.token_id)
    assert credentials.revoke_project_tokens(store_engine, project) == 1

    now = time.time()
    assert store.remember_signature("a" * 64, now + 900, now)
    assert not store.remember_signature("a" * 64, now + 900, now)
    assert store.remember_signature("b" * 64, now + 900, now)
    # Much later both have expired; the next write purges them.
    assert store.remember_signature("c" * 64, now + 2000, now + 1000)
    with store_engine.connect() as conn:
        assert conn.execute(select(api_seen_signatures.c.signature)).scalars().all() == ["c" * 64]
