"""The JobRepo contract, the same on stdlib sqlite3 (the CLI) and on an SQLAlchemy Engine over SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.db.database import open_database
from ferry.db.job_repo import JobRepo, ObjectResult, PartRow, Tally, UploadRow
from ferry.db.jobdb import open_sqlite
from ferry.db.records import SIZE_ONLY
from ferry.db.sqlconn import EngineConn, SqliteConn, to_pyformat
from pgdb import pg_database


@pytest.fixture(params=["sqlite3", "engine-sqlite", "engine-postgresql"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobRepo]:
    if request.param == "sqlite3":
        conn = open_sqlite(str(tmp_path / "jobs.db"))
        yield JobRepo(conn)
        conn.close()
        return
    if request.param == "engine-sqlite":
        engine = open_database(f"sqlite:///{tmp_path / 'jobs.db'}")
        yield JobRepo(engine)
        engine.dispose()
        return
    urls = pg_database()
    try:
        engine = open_database(next(urls))
        yield JobRepo(engine)
        engine.dispose()
    finally:
        urls.close()


def _job_column(repo: JobRepo, job_id: str, column: str) -> object:
    with repo.db.begin() as tx:
        return tx.execute(f"SELECT {column} FROM jobs WHERE id = :id", {"id": job_id})[0][0]


def test_the_seam_matches_the_database(repo: JobRepo, request: pytest.FixtureRequest) -> None:
    kind = request.node.callspec.params["repo"]
    assert isinstance(repo.db, SqliteConn if kind == "sqlite3" else EngineConn)
    assert repo.db.dialect == ("postgresql" if kind == "engine-postgresql" else "sqlite")


def test_jobs_are_created_found_and_updated(repo: JobRepo) -> None:
    assert repo.get("nope") is None and repo.find_resumable("fp") is None
    first = repo.create("fp", '{"a": 1}', job_id="job-1")
    assert first.id == "job-1" and first.status == "pending" and first.watermark is None
    assert repo.get("job-1") == first
    made = repo.create("fp", "{}")
    assert len(made.id) == 36 and repo.find_resumable("fp") == made  # the newest resumable one
    repo.set_status(made.id, "succeeded")
    assert repo.find_resumable("fp") == first
    repo.create("other", "{}")
    assert repo.find_resumable("fp") == first

    repo.set_status("job-1", "running")
    assert _job_column(repo, "job-1", "started_at") is not None
    assert _job_column(repo, "job-1", "finished_at") is None
    repo.set_status("job-1", "failed", error="boom")
    got = repo.get("job-1")
    assert got is not None and got.status == "failed"
    assert _job_column(repo, "job-1", "error") == "boom"
    assert _job_column(repo, "job-1", "finished_at") is not None
    repo.set_status("job-1", "stopped")
    assert _job_column(repo, "job-1", "error") is None and repo.find_resumable("fp") == repo.get("job-1")

    repo.record("job-1", [], watermark="k/050%")
    got = repo.get("job-1")
    assert got is not None and got.watermark == "k/050%"


# Python orders str by code point, which for UTF-8 is byte order: 'B' < 'a' < 'a b/c' < 'a/b' < '~' < 'é'.
KEYS = ["é", "a/b", "a", "a b/c", "B", "~", "a%_", "z\U0001f600"]


def test_results_page_in_byte_order_and_upsert(repo: JobRepo) -> None:
    repo.create("fp", "{}", job_id="j")
    repo.create("fp", "{}", job_id="other")
    repo.record("other", [ObjectResult("a", "success", 1, None, None)])
    results = [ObjectResult(k, "success" if i % 3 else "skipped", i + 1, f"e{i}", None) for i, k in enumerate(KEYS)]
    repo.record("j", results, watermark="m")
    repo.record("j", [ObjectResult("f1", "failed", 7, None, "x"), ObjectResult("f0", "failed", 3, None, "y")])
    got = repo.get("j")
    assert got is not None and got.watermark == "m"

    assert list(repo.iter_finished_keys("j", batch=3)) == sorted(KEYS)
    assert list(repo.iter_finished_keys("j", after="a b/c", batch=2)) == [k for k in sorted(KEYS) if k > "a b/c"]
    assert list(repo.iter_finished_keys("j", batch=len(KEYS))) == sorted(KEYS)  # a full last page
    assert [r.key for r in repo.iter_results("j", "failed", batch=1)] == ["f0", "f1"]
    assert list(repo.iter_results("j", "skipped", batch=2)) == sorted(
        (r for r in results if r.status == "skipped"), key=lambda r: r.key)
    size = sum(r.size for r in results)
    skipped = sum(r.size for r in results if r.status == "skipped")
    n_skipped = sum(r.status == "skipped" for r in results)
    assert repo.tally("j") == Tally(len(KEYS) - n_skipped, n_skipped, 2, size - skipped, skipped, 10)

    # Recording a key again overwrites its result (a failed object retried, a copy redone).
    repo.record("j", [ObjectResult("f1", "success", 70, "etag", None), ObjectResult("é", "failed", 5, None, "r")],
                watermark="n")
    assert list(repo.iter_results("j", "failed")) == [ObjectResult("f0", "failed", 3, None, "y"),
                                                      ObjectResult("é", "failed", 5, None, "r")]
    assert ObjectResult("f1", "success", 70, "etag", None) in list(repo.iter_results("j", "success"))
    assert "é" not in list(repo.iter_finished_keys("j"))
    assert repo.tally("j").failed == 2 and repo.tally("other") == Tally(1, 0, 0, 1, 0, 0)
    assert repo.tally("none") == Tally(0, 0, 0, 0, 0, 0)
    # Successes checked by their size only are counted apart (and still count as successes).
    repo.record("j", [ObjectResult("f0", "success", 3, None, SIZE_ONLY), ObjectResult("é", "success", 5, None,
                                                                                      SIZE_ONLY)])
    assert (repo.tally("j").size_only, repo.tally("j").failed, repo.tally("other").size_only) == (2, 0, 0)
    repo.record("j", [ObjectResult("é", "failed", 5, None, "r")])
    assert repo.tally("j").size_only == 1
    repo.record("j", [])  # nothing to write, not even a watermark
    got = repo.get("j")
    assert got is not None and got.watermark == "n"


def test_a_batch_is_one_transaction(repo: JobRepo) -> None:
    repo.create("fp", "{}", job_id="j")
    bad = [ObjectResult("a", "success", 1, None, None), ObjectResult("b", "success", None, None, None)]  # type: ignore[arg-type]
    with pytest.raises(Exception, match=r"(?i)null"):
        repo.record("j", bad, watermark="b")
    got = repo.get("j")
    assert got is not None and got.watermark is None and repo.tally("j") == Tally(0, 0, 0, 0, 0, 0)


def test_multipart_checkpoints(repo: JobRepo) -> None:
    repo.create("fp", "{}", job_id="j")
    assert repo.get_upload("j", "big") is None and repo.list_uploads("j") == [] and repo.get_parts("j", "big") == []
    repo.save_upload("j", UploadRow("big", "u1", "etag", 100, 10))
    repo.save_upload("j", UploadRow("big", "u2", None, 200, 20))  # a restarted upload replaces the old one
    repo.save_upload("j", UploadRow("other", "u3", "e", 5, 5))
    assert repo.get_upload("j", "big") == UploadRow("big", "u2", None, 200, 20)
    assert sorted(repo.list_uploads("j"), key=lambda u: u.key) == [UploadRow("big", "u2", None, 200, 20),
                                                                UploadRow("other", "u3", "e", 5, 5)]
    top = 2**64 - 1
    repo.save_part("j", "big", PartRow(2, "p2", 20, top, None))
    repo.save_part("j", "big", PartRow(1, "old", 20, None, None))
    repo.save_part("j", "big", PartRow(1, "p1", 20, 0, "d41d8cd98f00b204e9800998ecf8427e"))
    repo.save_part("j", "other", PartRow(1, "o1", 5, 7, None))
    assert repo.get_parts("j", "big") == [PartRow(1, "p1", 20, 0, "d41d8cd98f00b204e9800998ecf8427e"),
                                          PartRow(2, "p2", 20, top, None)]
    repo.drop_upload("j", "big")
    assert repo.get_upload("j", "big") is None and repo.get_parts("j", "big") == []
    assert repo.list_uploads("j") == [UploadRow("other", "u3", "e", 5, 5)]
    assert repo.get_parts("j", "other") == [PartRow(1, "o1", 5, 7, None)]


def test_named_placeholders_become_pyformat() -> None:
    assert to_pyformat("SELECT 1 WHERE a = :a AND b LIKE '5%' AND c = :c_2") == (
        "SELECT 1 WHERE a = %(a)s AND b LIKE '5%%' AND c = %(c_2)s")
    assert to_pyformat("SELECT x::text") == "SELECT x::text"


def test_a_full_disk_under_the_failed_report_says_where_and_how_much(tmp_path: Path) -> None:
    from ferry.db.faults import MIN_FREE
    from ferry.db.jobdb import open_job_repo
    from ferry.db.records import ObjectResult
    from ferry.errors import LocalStateError
    from ferry.service.transfers import write_failed_report

    repo = open_job_repo(f"sqlite:///{tmp_path / 'jobs.db'}")
    job = repo.create("fp", "{}")
    repo.record(job.id, [ObjectResult("k", "failed", 1, None, "boom")])
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    reports = tmp_path / "reports"
    reports.mkdir()
    # /dev/full answers every write with ENOSPC, as a full disk does, and needs no privileges.
    (reports / f"failed-{job.id}.jsonl").symlink_to("/dev/full")
    with pytest.raises(LocalStateError) as info:
        write_failed_report(repo, job.id, reports)
    assert info.value.kind == "disk_full"
    assert f"the disk of the data directory {reports} is full" in info.value.message
    assert f"free at least {MIN_FREE // 2**20:.1f} MiB" in info.value.message


def test_results_round_trip_whatever_their_keys_and_values(repo: JobRepo) -> None:
    # A batch travels as one JSON document on SQLite: nothing in a key or a value may be taken for JSON, and
    # no size beyond a double's exact integers may be rounded on the way.
    repo.create("fp", "{}", job_id="j")
    odd = ['say "hi"', "back\\slash", "new\nline", "tab\there", "007", "1e5", "null", "[1, 2]", "😀/ü",
           "\u2028sep", "'quote'"]
    results = [ObjectResult(k, "failed", 2**53 + 1 + i, None if i % 2 else f'"etag{i}"', f"why {k}")
               for i, k in enumerate(odd)]
    repo.record("j", results[:5])
    repo.record("j", results)  # the first five again: updated, not duplicated
    assert list(repo.iter_results("j", "failed")) == sorted(results, key=lambda r: r.key.encode())
    assert repo.tally("j").failed == len(odd)


@pytest.mark.parametrize("built", ["models", "migrations"])
def test_paging_by_key_on_postgresql_walks_an_index_not_a_sort(built: str) -> None:
    """Each page of a job's results or finished keys continues after the last key in byte order: served by the
    primary key, a page costs its own rows; sorted, it cost all the job's rows after it (quadratic)."""
    from sqlalchemy import create_engine, event, text

    from ferry.db import database

    urls = pg_database()
    try:
        url = next(urls).replace("postgresql://", "postgresql+psycopg://", 1)
        if built == "models":
            engine = open_database(url)
        else:
            engine = create_engine(url)
            database.migrate(engine)  # every revision replayed, as an existing database is upgraded
        repo = JobRepo(engine)
        job = repo.create("fp", "{}")
        repo.record(job.id, [ObjectResult(f"k{i:05d}", "success", 1, None, None) for i in range(30)])
        seen: list[tuple[str, object]] = []
        event.listen(engine, "before_cursor_execute",
                     lambda _c, _cur, sql, params, _ctx, _many: seen.append((sql, params)))
        assert len(list(repo.iter_finished_keys(job.id, batch=10))) == 30
        assert len(list(repo.iter_results(job.id, "success", batch=10))) == 30
        pages = [(sql, params) for sql, params in seen if "ORDER BY" in sql]
        assert len(pages) == 8  # 4 pages each
        with engine.connect() as conn:
            conn.execute(text("SET enable_sort = off"))  # a sort is then chosen only when no index gives the order
            for sql, params in pages:
                plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {sql}", params))  # type: ignore[arg-type]
                assert "Sort" not in plan, plan
        engine.dispose()
    finally:
        urls.close()
