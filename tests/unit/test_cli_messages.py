"""`ferry` tells a user what to fix: the flag or variable, the side, the storage class, an empty source, a report
that names both keys, and where `credentials create` wrote."""

from __future__ import annotations

import gc
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.cli import main
from ferry.objects import ObjectMeta
from ferry.storage.registry import reset_memory_stores

UNREACHABLE = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in ("FERRY_SRC_AK", "FERRY_SRC_SK", "FERRY_DST_AK", "FERRY_DST_SK", "FERRY_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FERRY_DATA_DIR", str(tmp_path / "data"))
    reset_memory_stores()
    yield
    reset_memory_stores()
    gc.unfreeze()  # `ferry migrate` freezes what start-up built and turns the GC off meanwhile
    gc.enable()


def _migrate(capsys: pytest.CaptureFixture[str], tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["migrate", *argv, "--state-dir", str(tmp_path / "state"), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ferry: error: "), err
    return lines[0]


def _put(bucket: str, objects: dict[str, bytes]) -> None:
    import asyncio

    from ferry.storage.registry import open_backend

    async def fill() -> None:
        b = open_backend(f"mem://{bucket}")
        for key, data in objects.items():
            await b.put(key, data, ObjectMeta())

    asyncio.run(fill())


def _keys(bucket: str) -> list[str]:
    import asyncio

    from ferry.storage.registry import open_backend

    async def keys() -> list[str]:
        return [o.key async for o in open_backend(f"mem://{bucket}").list()]

    return asyncio.run(keys())


def test_missing_keys_name_the_variable_and_the_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = _migrate(capsys, tmp_path, "s3://bkt-one", "s3://bkt-two", "--src-endpoint", UNREACHABLE,
                            "--dst-endpoint", UNREACHABLE)
    line = _one_error_line(err)
    assert code == 2 and "source" in line and "FERRY_SRC_AK" in line and "--src-ak" in line, line
    monkeypatch.setenv("FERRY_SRC_AK", "AKEXAMPLE1")
    monkeypatch.setenv("FERRY_SRC_SK", "SKEXAMPLE1")
    monkeypatch.setenv("FERRY_DST_AK", "AKEXAMPLE2")
    code, _, err = _migrate(capsys, tmp_path, "s3://bkt-one", "s3://bkt-two", "--src-endpoint", UNREACHABLE,
                            "--dst-endpoint", UNREACHABLE)
    line = _one_error_line(err)
    assert code == 2 and "destination" in line and "FERRY_DST_SK" in line and "--dst-sk" in line, line


def test_a_side_without_endpoint_is_named_with_its_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FERRY_SRC_AK", "FERRY_SRC_SK", "FERRY_DST_AK", "FERRY_DST_SK"):
        monkeypatch.setenv(name, f"{name}-EXAMPLE")
    code, _, err = _migrate(capsys, tmp_path, "s3://bkt-one", "s3://bkt-two", "--src-endpoint", UNREACHABLE)
    line = _one_error_line(err)
    assert code == 2 and "destination" in line and "--dst-endpoint" in line, line


@pytest.mark.parametrize(("flag", "value"), [("--overwrite", "SOMETIMES"), ("--consistency-check", "md5")])
def test_a_bad_choice_names_its_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path, flag: str,
                                     value: str) -> None:
    code, _, err = _migrate(capsys, tmp_path, "mem://bkt-one", "mem://bkt-two", flag, value)
    line = _one_error_line(err)
    assert code == 2 and line.startswith(f"ferry: error: {flag} ") and value in line, line


def test_an_unknown_storage_class_is_refused_before_copying(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path) -> None:
    _put("bkt-one", {"a.txt": b"a"})
    code, _, err = _migrate(capsys, tmp_path, "mem://bkt-one", "mem://bkt-two", "--storage-class", "GLACIERX")
    line = _one_error_line(err)
    assert code == 2 and "--storage-class" in line and "GLACIERX" in line and "ARCHIVE" in line, line
    assert _keys("bkt-two") == [], "something was written"
    # An S3 destination is checked against its profile, whose own names are accepted too.
    code, _, err = _migrate(capsys, tmp_path, "mem://bkt-one", "s3://bkt-two", "--dst-endpoint", UNREACHABLE,
                            "--dst-ak", "AKEXAMPLE2", "--dst-sk", "SKEXAMPLE2", "--dst-profile", "aws",
                            "--storage-class", "GLACIERX")
    line = _one_error_line(err)
    assert code == 2 and "--storage-class" in line and "STANDARD_IA" in line, line
    code, _, err = _migrate(capsys, tmp_path, "mem://bkt-one", "mem://bkt-two", "--storage-class", "ia")
    assert code == 0, err


def test_an_empty_source_warns(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _put("bkt-one", {"docs/a.txt": b"a"})
    code, _, err = _migrate(capsys, tmp_path, "mem://bkt-one/doc", "mem://bkt-two", "--json")
    assert code == 0
    assert err.startswith("ferry: warning: no objects") and "mem://bkt-one/doc/" in err, err


def test_report_lines_name_the_source_and_the_destination_key(capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:
    long = "k" * 1000
    _put("bkt-one", {"docs/ok.txt": b"fine", f"docs/{long}": b"too long with the destination's prefix"})
    dst_prefix = "p" * 30
    code, out, _ = _migrate(capsys, tmp_path, "mem://bkt-one/docs", f"mem://bkt-two/{dst_prefix}", "--json")
    assert code == 1
    report = Path(json.loads(out.splitlines()[-1])["report"])
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    assert [(x["key"], x["dst_key"]) for x in lines] == [(f"docs/{long}", f"{dst_prefix}/{long}")]
    assert lines[0]["reason"]


def test_credentials_create_says_where_it_wrote(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["credentials", "create", "--project-id", uuid.uuid4().hex]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["secret_key"]
    assert str(tmp_path / "data") in err and "FERRY_DATA_DIR" in err, err
