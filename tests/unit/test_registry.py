"""open_backend: spec parsing, validation messages, and the process-wide memory stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.errors import UsageError
from ferry.objects import ObjectMeta
from ferry.storage.local import LocalBackend
from ferry.storage.memory import MemoryBackend
from ferry.storage.registry import BackendSpec, memory_store, open_backend, parse_spec, reset_memory_stores

KEYS = {"endpoint": "http://127.0.0.1:9", "region": "us-east-1", "access_key": "AK", "secret_key": "SK"}


@pytest.fixture(autouse=True)
def fresh_stores() -> Iterator[None]:
    reset_memory_stores()
    yield
    reset_memory_stores()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("s3://bucket", BackendSpec("s3", "bucket", "")),
        ("s3://bucket/", BackendSpec("s3", "bucket", "")),
        ("s3://bucket/photos/", BackendSpec("s3", "bucket", "photos/")),
        ("S3://bucket/a?b#c%20d/+", BackendSpec("s3", "bucket", "a?b#c%20d/+/")),  # verbatim, no decoding
        ("s3://bucket//lead", BackendSpec("s3", "bucket", "/lead/")),
        # A prefix is a folder, as in `aws s3 sync` and rclone: `all` is `all/`, never glued onto keys.
        ("s3://backup/all", BackendSpec("s3", "backup", "all/")),
        ("mem://data/docs", BackendSpec("mem", "data", "docs/")),
        ("mem://data/x/", BackendSpec("mem", "data", "x/")),
        ("memory://data", BackendSpec("mem", "data", "")),
        ("file:///srv/data", BackendSpec("file", path="/srv/data")),
        ("file://localhost/srv/data", BackendSpec("file", path="/srv/data")),
        ("/srv/my data", BackendSpec("file", path="/srv/my data")),
        ("relative/dir", BackendSpec("file", path="relative/dir")),
    ],
)
def test_parse_spec(spec: str, expected: BackendSpec) -> None:
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty location"),
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("file://relative/path", "absolute path"),
        ("gcs://bucket", "unsupported location"),
        ("gs://bucket", "needs a service-account key file"),
        ("gs://Upper/x", "invalid Google Cloud Storage bucket name"),
        ("mem://UPPER", "lower-case"),
        ("mem://ab", "3 to 63"),
        ("mem://a..b", "two dots"),
        ("mem://192.168.1.10", "IP address"),
        ("mem://-bucket", "starting and ending"),
        ("mem://ok-bucket/" + "k" * 1025, "1024"),
        ("mem://ok-bucket/" + "k" * 1024, "1025 bytes"),  # with the folder's `/`
        ("mem://ok-bucket/a\nb", "control character"),
    ],
)
def test_bad_specs_say_why(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        open_backend(spec)


def test_home_is_expanded_for_plain_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_spec("~/data").path == str(tmp_path / "data")


async def test_mem_specs_share_one_store() -> None:
    a = open_backend("mem://bucket-one/x/")
    b = open_backend("mem://bucket-one")
    other = open_backend("mem://bucket-two")
    assert isinstance(a, MemoryBackend) and a.name == "mem://bucket-one/x/"
    await a.put("k", b"v", ObjectMeta())
    assert await b.read("x/k") == b"v"
    assert a.capabilities.copy_group == other.capabilities.copy_group
    await other.copy_from(a, "k", "copied", None)
    assert await other.read("copied") == b"v"
    assert memory_store().bucket_names() == ["bucket-one", "bucket-two"]
    assert memory_store("elsewhere") is not memory_store()


async def test_local_specs(tmp_path: Path) -> None:
    target = tmp_path / "new" / "dir"
    backend = open_backend(f"file://{target}")
    assert isinstance(backend, LocalBackend) and backend.root == target
    await backend.put("k", b"v", ObjectMeta())  # a destination directory is created by the first write
    assert (await open_backend(str(target)).read("k")) == b"v"
    (tmp_path / "plain-file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        open_backend(str(tmp_path / "plain-file"))


def test_s3_needs_keys_and_a_valid_endpoint_and_bucket() -> None:
    with pytest.raises(UsageError, match="access key"):
        open_backend("s3://bucket", endpoint="http://127.0.0.1:9")
    with pytest.raises(UsageError, match="endpoint"):
        open_backend("s3://bucket", **{**KEYS, "endpoint": "127.0.0.1:9/x y"})
    with pytest.raises(UsageError, match="lower-case"):
        open_backend("s3://Bucket_Name", **KEYS)
    with pytest.raises(UsageError, match=r"Tencent|APPID|appid"):
        open_backend("s3://plain-bucket", profile="tencent", **KEYS)
    with pytest.raises(UsageError, match="unknown S3 provider"):
        open_backend("s3://bucket", profile="no-such-cloud", **KEYS)


async def test_s3_backend_gets_bucket_and_verbatim_prefix() -> None:
    backend = open_backend("s3://bucket/a?b#c%/", profile="seaweedfs", **KEYS)
    try:
        assert backend.name.startswith("s3://bucket/")
        assert getattr(backend, "prefix", None) == "a?b#c%/"
        assert "SK" not in backend.name
    finally:
        await backend.close()
