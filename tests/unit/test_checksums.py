"""CRC-64/XZ, its combine, and composite multipart ETags."""

from __future__ import annotations

import hashlib
import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.engine.checksums import Crc64, crc64, crc64_combine, md5_etag

CHECK = 0x995DC9BBDF1939FA


def _reference_crc64_xz(data: bytes) -> int:
    """Bit-at-a-time CRC-64/XZ straight from the definition, as an oracle independent of the C code."""
    crc = 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xC96C5795D7870F42 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFFFFFFFFFF


def test_check_value() -> None:
    assert crc64(b"123456789") == CHECK
    assert Crc64(b"123456789").value == CHECK
    assert Crc64().update(b"1234").update(b"").update(b"56789").value == CHECK
    assert Crc64(b"123456789").hexdigest() == "995dc9bbdf1939fa"


def test_empty() -> None:
    assert crc64(b"") == 0
    assert Crc64().value == 0
    assert Crc64().length == 0


def test_known_vendor_value() -> None:
    # Values from the Aliyun OSS SDKs' tests: an OSS response for b"hello world" carries
    # `x-oss-hash-crc64ecma: 5981764153023615706`.
    assert crc64(b"hello world") == 5981764153023615706
    assert crc64(b"test\0hello\1world\2!\3") == 6745424696046691431


@given(st.binary(max_size=300))
def test_matches_reference(data: bytes) -> None:
    assert crc64(data) == _reference_crc64_xz(data)


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_incremental_equals_whole(a: bytes, b: bytes) -> None:
    c = Crc64(a)
    c.update(memoryview(bytearray(b)))
    assert c.value == crc64(a + b)
    assert c.length == len(a) + len(b)
    assert crc64(b, crc64(a)) == crc64(a + b)


@given(st.binary(max_size=500), st.binary(max_size=500))
def test_combine_property(a: bytes, b: bytes) -> None:
    assert crc64_combine(crc64(a), crc64(b), len(b)) == crc64(a + b)


@settings(max_examples=50)
@given(st.lists(st.binary(max_size=100), min_size=1, max_size=8))
def test_parts_combine_to_whole(parts: list[bytes]) -> None:
    whole = Crc64()
    for part in parts:
        whole.combine(Crc64(part))
    assert whole.value == crc64(b"".join(parts))
    assert whole.length == sum(map(len, parts))


def test_combine_large_lengths_against_anycrc() -> None:
    # Multipart objects reach terabytes; check lengths far beyond what we can hash here against an
    # independent implementation (anycrc's C combine).
    anycrc = pytest.importorskip("anycrc")
    model = anycrc.Model("CRC64-XZ")
    for len_b in (1, 7, 8 << 20, 5 << 30, (48_800 << 30) + 12345, (1 << 62) + 1):
        assert crc64_combine(0x0123456789ABCDEF, 0xFEDCBA9876543210, len_b) == model.combine(
            0x0123456789ABCDEF, 0xFEDCBA9876543210, len_b
        )


def test_combine_real_parts() -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    cut = [0, 1024 * 1024, 2 * 1024 * 1024 + 5, len(data)]
    total = 0
    for lo, hi in itertools.pairwise(cut):
        total = crc64_combine(total, crc64(data[lo:hi]), hi - lo)
    assert total == crc64(data)


def test_combine_zero_length_and_negative() -> None:
    assert crc64_combine(CHECK, 0, 0) == CHECK
    with pytest.raises(ValueError):
        crc64_combine(1, 2, -1)


def test_copy_is_independent() -> None:
    c = Crc64(b"1234")
    d = c.copy()
    d.update(b"56789")
    assert c.value == crc64(b"1234")
    assert d.value == CHECK


def test_md5_etag() -> None:
    parts = [b"a" * 10, b"b" * 20, b"c"]
    digests = [hashlib.md5(p).digest() for p in parts]
    expected = hashlib.md5(b"".join(digests)).hexdigest() + "-3"
    assert md5_etag(digests) == expected
    assert md5_etag(d.hex() for d in digests) == expected
    assert md5_etag(f'"{d.hex()}"' for d in digests) == expected
    assert md5_etag([digests[0]]).endswith("-1")


def test_md5_etag_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        md5_etag([])
    with pytest.raises(ValueError):
        md5_etag([b"short"])
