"""`ferry migrate` keeps the cyclic GC off through start-up only: it is back on however the run ends."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.cli import main


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    yield
    gc.unfreeze()
    gc.enable()


def test_gc_is_back_after_a_run_with_start_up_frozen(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"hello")
    (tmp_path / "dst").mkdir()
    gc.unfreeze()
    code = main(["migrate", str(src), str(tmp_path / "dst"), "--state-dir", str(tmp_path / "state"), "--json",
                 "--no-progress"])
    assert code == 0
    assert (tmp_path / "dst" / "a.txt").read_bytes() == b"hello"
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0  # frozen once the job database was open


def test_gc_is_back_after_bad_usage(tmp_path: Path) -> None:
    code = main(["migrate", str(tmp_path), str(tmp_path / "dst"), "--concurrency", "0",
                 "--state-dir", str(tmp_path / "state")])
    assert code == 2
    assert gc.isenabled()
