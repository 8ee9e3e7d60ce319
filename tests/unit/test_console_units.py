"""The console's parts that need no browser: its session cookie, CSRF wiring, paging, failure grouping, and the
throughput a task's speed chart is drawn from."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi import APIRouter
from starlette.requests import Request

from ferry.api.auth import InMemoryCredentialStore
from ferry.console.app import create_console
from ferry.console.context import ConsoleContext
from ferry.console.paging import MAX_OFFSET, Paging
from ferry.console.session import COOKIE, CurrentProject, seal_session, session_of
from ferry.db.job_repo import JobRepo
from ferry.db.job_report import JobReport
from ferry.db.jobdb import open_sqlite
from ferry.secrets import SecretBox
from ferry.service.task_report import reason_group

PROJECT = "0" * 31 + "1"


def _ctx(store: InMemoryCredentialStore, key: bytes = b"k" * 32, ttl: float = 3600) -> ConsoleContext:
    return ConsoleContext(credentials=store, session_key=key, session_ttl=ttl)


def _request(cookie: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/console/tasks", "query_string": b"",
                    "headers": [(b"cookie", f"{COOKIE}={cookie}".encode())]})


async def test_the_session_cookie_is_sealed_expires_and_lives_only_as_long_as_its_credential() -> None:
    store = InMemoryCredentialStore()
    store.add_access_key("AK1", "secret-one", PROJECT)
    store.add_token("tok-1", PROJECT)
    ctx = _ctx(store)
    value, made = seal_session(ctx, PROJECT, "aksk", "AK1")
    assert "AK1" not in value and PROJECT not in value  # sealed, not merely signed
    got = await session_of(_request(value), ctx)
    assert got is not None and got.project_id == PROJECT and got.csrf_token == made.csrf_token
    # Another session has another CSRF token.
    assert seal_session(ctx, PROJECT, "aksk", "AK1")[1].csrf_token != made.csrf_token
    # One changed character, another server key, or past its expiry: no session.
    flipped = value[:10] + ("A" if value[10] != "A" else "B") + value[11:]
    assert await session_of(_request(flipped), ctx) is None
    assert await session_of(_request(value), _ctx(store, key=b"o" * 32)) is None
    old, _ = seal_session(ctx, PROJECT, "aksk", "AK1", now=time.time() - 7200)
    assert await session_of(_request(old), ctx) is None
    # A token session ends with its token; a key session when the key maps elsewhere or is gone.
    tok, _ = seal_session(ctx, PROJECT, "token", "tok-1")
    assert await session_of(_request(tok), ctx) is not None
    assert await session_of(_request(seal_session(ctx, PROJECT, "token", "tok-2")[0]), ctx) is None
    store.add_access_key("AK1", "secret-one", "f" * 32)
    assert await session_of(_request(value), ctx) is None
    # Signed out: refused even though the cookie is intact.
    store.add_access_key("AK1", "secret-one", PROJECT)
    ctx.signed_out.add(made.session_id, made.expires_at)
    assert await session_of(_request(value), ctx) is None


def test_the_session_key_is_derived_per_purpose_from_the_master_key() -> None:
    box = SecretBox(b"m" * 32)
    assert box.derive_key("console-session") == SecretBox(b"m" * 32).derive_key("console-session")
    assert box.derive_key("console-session") != box.derive_key("other")
    assert box.derive_key("console-session") != SecretBox(b"n" * 32).derive_key("console-session")
    assert len(box.derive_key("console-session")) == 32


def test_a_post_route_without_the_csrf_check_is_not_served() -> None:
    careless = APIRouter()

    @careless.post("/tasks/{task_id}/stop")
    async def stop(session: CurrentProject, task_id: int) -> None:
        return None

    with pytest.raises(RuntimeError, match="without the CSRF check"):
        create_console(_ctx(InMemoryCredentialStore()), routers=(careless,))


def test_paging_stays_within_the_api_bounds() -> None:
    p = Paging.parse("/console/tasks", "50", "75", "2").with_count(4321)
    assert (p.limit, p.offset, p.first_row, p.last_row) == (50, 50, 51, 100)
    assert p.prev_link == "/console/tasks?limit=50&offset=0&status=2"
    assert p.next_link == "/console/tasks?limit=50&offset=100&status=2"
    assert p.last_link == "/console/tasks?limit=50&offset=4300&status=2"
    junk = Paging.parse("/console/tasks", "7", "x", None)
    assert (junk.limit, junk.offset) == (20, 0)
    far = Paging.parse("/console/tasks", "100", "999999", None).with_count(50_000)
    assert far.offset == MAX_OFFSET and far.next_link is None
    assert far.last_link is None or int(far.last_link.split("offset=")[1]) <= MAX_OFFSET


def test_reasons_that_differ_only_by_the_object_are_one_group() -> None:
    a = ("the source object is archived and not restored (GET s3://src/cold/1.bin: HTTP 403 InvalidObjectState "
         "(not valid for the storage class; request id 4442587FB7D0A2F9) (archived; restore it first))")
    b = a.replace("cold/1.bin", "cold/2.bin").replace("4442587FB7D0A2F9", "ABCDEF0123456789")
    assert reason_group(a, "cold/1.bin") == reason_group(b, "cold/2.bin")
    assert "cold/1.bin" not in reason_group(a, "cold/1.bin") and "4442587F" not in reason_group(a, "cold/1.bin")
    assert reason_group("HTTP 404 NoSuchKey", "k") != reason_group("HTTP 403 AccessDenied", "k")
    assert reason_group(None, "k") == reason_group("", "x") == "no reason recorded"


def test_throughput_is_grouped_into_buckets_of_the_run(tmp_path: Path) -> None:
    conn = open_sqlite(str(tmp_path / "jobs.db"))
    try:
        job = JobRepo(conn).create("fp", "{}").id
        t0 = 1_700_000_000.0
        rows = [("a", "success", 100, t0), ("b", "success", 300, t0 + 0.5), ("c", "skipped", 50, t0 + 1.2),
                ("d", "failed", 70, t0 + 4.9), ("e", "restore", 10, t0 + 2.0)]
        with conn.begin() as tx:
            tx.executemany("INSERT INTO job_objects (job_id, key, status, size, updated_at) VALUES"
                           " (:j, :k, :s, :n, :t)",
                           [{"j": job, "k": k, "s": s, "n": n, "t": t} for k, s, n, t in rows])
        report = JobReport(conn)
        assert report.span(job) == (t0, t0 + 4.9)
        got = [(b.start - t0, b.bytes_copied, b.objects) for b in report.throughput(job, t0, 2.0)]
        # Only successes count as bytes copied; every finished object counts; one still restoring does not.
        assert got == [(0.0, 400, 3), (4.0, 0, 1)]
    finally:
        conn.close()


def test_the_wheel_carries_every_console_template_and_static_file() -> None:
    """Each file under console/templates and console/static matches a package-data pattern of pyproject.toml
    (setuptools' globs, relative to the package), so a built wheel serves the same pages as the work tree."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ferry"]
    package = root / "src" / "ferry"
    files = [p.relative_to(package).as_posix() for d in ("console/templates", "console/static")
             for p in (package / d).rglob("*") if p.is_file()]
    assert len(files) >= 10
    # fnmatch's `*` crosses "/", setuptools' does not: compare segment by segment.
    def covered(path: str) -> bool:
        parts = path.split("/")
        return any(len(pat.split("/")) == len(parts) and all(fnmatch.fnmatchcase(a, b) for a, b in
                                                              zip(parts, pat.split("/"), strict=True))
                   for pat in patterns)
    assert [f for f in files if not covered(f)] == []
