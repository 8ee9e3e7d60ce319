"""The aws-chunked body of a streamed PUT with a trailing CRC32C: framing, announced length, checksum."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncGenerator

import fastcrc
import pytest

from ferry.storage.http1 import HttpError
from ferry.storage.s3 import _Crc32cTrailer

MiB = 1024 * 1024


async def _pieces(data: bytes, sizes: list[int]) -> AsyncGenerator[bytes, None]:
    at = 0
    for n in sizes:
        yield data[at:at + n]
        at += n
    if at < len(data):
        yield data[at:]


def _decode(encoded: bytes) -> tuple[bytes, list[int], dict[str, str]]:
    """Parse aws-chunked: the data, each frame's length, and the trailer fields."""
    data, frames, pos = b"", [], 0
    while True:
        eol = encoded.index(b"\r\n", pos)
        n = int(encoded[pos:eol], 16)
        pos = eol + 2
        if n == 0:
            break
        frames.append(n)
        data += encoded[pos:pos + n]
        assert encoded[pos + n:pos + n + 2] == b"\r\n"
        pos += n + 2
    fields = encoded[pos:].decode().split("\r\n")
    assert fields[-2:] == ["", ""]
    return data, frames, dict(f.split(":", 1) for f in fields[:-2])


@pytest.mark.parametrize("size,sizes", [
    (0, []),
    (5, [5]),
    (MiB + 1, [7, MiB - 7, 1]),
    (3 * MiB + 12345, [100_000] * 5 + [2 * MiB]),
])
async def test_frames_have_the_announced_length_and_the_crc_trailer(size: int, sizes: list[int]) -> None:
    data = os.urandom(size)
    trailer = _Crc32cTrailer(size)
    encoded = b"".join([bytes(p) async for p in trailer.frame(_pieces(data, sizes))])
    assert len(encoded) == trailer.length
    got, frames, fields = _decode(encoded)
    assert got == data and frames == ([size] if size else [])
    value = base64.b64encode(fastcrc.crc32.iscsi(data).to_bytes(4, "big")).decode()
    assert fields == {"x-amz-checksum-crc32c": value} and trailer.value == value


async def test_a_body_longer_than_announced_is_refused() -> None:
    trailer = _Crc32cTrailer(10)
    with pytest.raises(HttpError, match="longer"):
        async for _ in trailer.frame(_pieces(b"x" * 11, [11])):
            pass
