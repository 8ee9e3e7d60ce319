"""Copy/skip rules per overwrite mode, migrate_since, consistency checks, and parsing of the mode names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferry.engine.compare import (
    ConsistencyCheck,
    CopyReason,
    OverwriteMode,
    SkipReason,
    check_consistency,
    decide,
)
from ferry.errors import UsageError
from ferry.objects import ObjectInfo

M = OverwriteMode
SRC = ObjectInfo("k", 10, 1000.0, crc64=0xAB)


def obj(size: int = 10, mtime: float = 1000.0, crc64: int | None = 0xAB) -> ObjectInfo:
    return ObjectInfo("k", size, mtime, crc64=crc64)


@pytest.mark.parametrize("mode", list(M))
def test_missing_destination_is_copied_in_every_mode(mode: OverwriteMode) -> None:
    assert decide(SRC, None, mode) is CopyReason.MISSING


def test_default_mode_is_size_last_modified() -> None:
    assert decide(SRC, obj(size=11)) is CopyReason.SIZE_DIFFERS


@pytest.mark.parametrize(
    ("dst", "expected"),
    [
        (obj(), SkipReason.SAME_SIZE_NOT_OLDER),  # equal mtime: already done
        (obj(mtime=2000.0), SkipReason.SAME_SIZE_NOT_OLDER),
        (obj(mtime=999.5), CopyReason.SOURCE_NEWER),
        (obj(size=9, mtime=2000.0), CopyReason.SIZE_DIFFERS),  # newer but different size still copies
        (obj(size=11, mtime=10.0), CopyReason.SIZE_DIFFERS),
    ],
)
def test_size_last_modified(dst: ObjectInfo, expected: object) -> None:
    assert decide(SRC, dst, M.SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE) is expected


def test_no_overwrite_skips_whatever_the_destination() -> None:
    assert decide(SRC, obj(size=1, mtime=0.0, crc64=1), M.NO_OVERWRITE) is SkipReason.EXISTS


def test_full_overwrite_copies_even_identical() -> None:
    assert decide(SRC, obj(), M.FULL_OVERWRITE) is CopyReason.FULL_OVERWRITE


@pytest.mark.parametrize(
    ("src", "dst", "expected"),
    [
        (obj(), obj(mtime=1.0), SkipReason.SAME_CRC64),  # equal CRC wins over an older destination
        (obj(), obj(crc64=0xAC, mtime=5000.0), CopyReason.CRC64_DIFFERS),  # newer, same size, other content
        (obj(), obj(size=11), CopyReason.CRC64_DIFFERS),  # same CRC, other size: a collision, copy
        # either CRC unknown: size + last-modified
        (obj(crc64=None), obj(mtime=2000.0), SkipReason.SAME_SIZE_NOT_OLDER),
        (obj(), obj(crc64=None, mtime=2000.0), SkipReason.SAME_SIZE_NOT_OLDER),
        (obj(crc64=None), obj(crc64=None, mtime=1.0), CopyReason.SOURCE_NEWER),
        (obj(crc64=None), obj(size=3), CopyReason.SIZE_DIFFERS),
        (obj(crc64=0), obj(crc64=0, size=10), SkipReason.SAME_CRC64),  # 0 is a real CRC, not "unknown"
    ],
)
def test_crc64(src: ObjectInfo, dst: ObjectInfo, expected: object) -> None:
    assert decide(src, dst, M.CRC64_COMPARISON_OVERWRITE) is expected


@pytest.mark.parametrize("mode", list(M))
def test_migrate_since(mode: OverwriteMode) -> None:
    assert decide(obj(mtime=99.0), None, mode, 100.0) is SkipReason.OLDER_THAN_MIGRATE_SINCE
    assert decide(obj(mtime=99.0), obj(size=1), mode, 100.0) is SkipReason.OLDER_THAN_MIGRATE_SINCE
    assert decide(obj(mtime=100.0), None, mode, 100.0) is CopyReason.MISSING  # boundary is migrated
    assert decide(obj(mtime=0.0), None, mode, None) is CopyReason.MISSING


@given(
    size_s=st.integers(0, 3), size_d=st.integers(0, 3),
    mt_s=st.integers(0, 3), mt_d=st.integers(0, 3),
    crc_s=st.none() | st.integers(0, 2), crc_d=st.none() | st.integers(0, 2),
    mode=st.sampled_from(list(M)),
)
def test_decide_against_oracle(
    size_s: int, size_d: int, mt_s: int, mt_d: int, crc_s: int | None, crc_d: int | None, mode: OverwriteMode
) -> None:
    src, dst = ObjectInfo("k", size_s, mt_s, crc64=crc_s), ObjectInfo("k", size_d, mt_d, crc64=crc_d)
    size_mtime_skip = size_s == size_d and mt_d >= mt_s
    expected_skip = {
        M.NO_OVERWRITE: True,
        M.FULL_OVERWRITE: False,
        M.SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE: size_mtime_skip,
        M.CRC64_COMPARISON_OVERWRITE: (
            size_mtime_skip if crc_s is None or crc_d is None else (crc_s == crc_d and size_s == size_d)
        ),
    }[mode]
    assert isinstance(decide(src, dst, mode), SkipReason) is expected_skip


def test_parse_overwrite_mode() -> None:
    assert M.parse("no_overwrite") is M.NO_OVERWRITE
    assert M.parse(" Full_Overwrite ") is M.FULL_OVERWRITE
    assert M.parse(M.CRC64_COMPARISON_OVERWRITE) is M.CRC64_COMPARISON_OVERWRITE
    with pytest.raises(UsageError) as err:
        M.parse("OVERWRITE_ALL")
    assert "OVERWRITE_ALL" in err.value.message
    for member in M:
        assert member.value in err.value.message


def test_parse_consistency_check() -> None:
    assert ConsistencyCheck.parse("CRC64") is ConsistencyCheck.CRC64
    assert ConsistencyCheck.parse("size_last_modified") is ConsistencyCheck.SIZE_LAST_MODIFIED
    assert ConsistencyCheck.parse("no_check") is ConsistencyCheck.NO_CHECK
    assert ConsistencyCheck.parse("Transmission") is ConsistencyCheck.NO_CHECK
    with pytest.raises(UsageError) as err:
        ConsistencyCheck.parse("md5")
    for name in ("size_last_modified", "crc64", "no_check", "transmission"):
        assert name in err.value.message
    with pytest.raises(UsageError):
        ConsistencyCheck.parse(None)  # type: ignore[arg-type]


def test_check_consistency() -> None:
    C = ConsistencyCheck
    assert check_consistency(C.NO_CHECK, obj(), obj(size=1, mtime=0.0)) is None
    assert check_consistency(C.SIZE_LAST_MODIFIED, obj(), obj(mtime=1000.0)) is None
    assert "size" in (check_consistency(C.SIZE_LAST_MODIFIED, obj(), obj(size=9)) or "")
    assert "older" in (check_consistency(C.SIZE_LAST_MODIFIED, obj(), obj(mtime=1.0)) or "")
    assert check_consistency(C.CRC64, obj(), obj(mtime=1.0)) is None  # content proven equal
    assert "crc64" in (check_consistency(C.CRC64, obj(), obj(crc64=1, mtime=5000.0)) or "")
    assert "size" in (check_consistency(C.CRC64, obj(), obj(size=3)) or "")
    assert "older" in (check_consistency(C.CRC64, obj(crc64=None), obj(mtime=1.0)) or "")
    assert check_consistency(C.CRC64, obj(crc64=None), obj(mtime=1000.0)) is None


def test_a_source_with_sub_second_mtime_counts_at_its_second() -> None:
    # A local file written at 10.7 s and copied at 10.9 s: S3 stamps the copy 10 s. It is done, not stale.
    src, dst = ObjectInfo("k", 5, 10.7), ObjectInfo("k", 5, 10.0)
    assert decide(src, dst, OverwriteMode.SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE) is SkipReason.SAME_SIZE_NOT_OLDER
    assert check_consistency(ConsistencyCheck.SIZE_LAST_MODIFIED, src, dst) is None
    # A whole second later it is newer.
    newer = ObjectInfo("k", 5, 11.2)
    assert decide(newer, dst, OverwriteMode.SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE) is CopyReason.SOURCE_NEWER
