"""List files of `list` and `url_list` tasks are read line by line, never whole (a 100 MB file is allowed)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ferry.objects import ObjectMeta
from ferry.runner.migration import read_list_keys, read_url_entries
from ferry.sandbox import SeaweedServer
from ferry.storage.profiles import get_profile
from ferry.storage.s3 import S3Backend

MiB = 1024 * 1024
FILE_SIZE = 8 * MiB


async def _peak(call: Callable[[], Awaitable[Any]]) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = await call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind", ["list", "url_list"])
async def test_a_large_list_file_is_read_in_bounded_memory(seaweed_a: SeaweedServer, bucket_factory: Any,
                                                           kind: str) -> None:
    """8 MiB of lines naming 100 distinct objects: reading it whole would hold the file several times over
    (bytes, text, lines); read line by line, the peak stays at a few MiB of ranged reads."""
    if kind == "list":
        lines = [f"dir%20{i}/{'x' * 60}-{i:03d}.bin" for i in range(100)]
    else:
        lines = [f"https://cdn.example.com/{'x' * 40}/{i}.bin\tmedia/{i:03d}.bin" for i in range(100)]
    block = ("\n".join(lines) + "\n").encode()
    body = block * (FILE_SIZE // len(block))
    backend = S3Backend(seaweed_a.endpoint, seaweed_a.region, seaweed_a.access_key, seaweed_a.secret_key,
                        bucket_factory(seaweed_a), "", get_profile("seaweedfs"))
    try:
        await backend.put("list.txt", body, ObjectMeta(content_type="text/plain"))
        del body
        if kind == "list":
            keys, peak = await _peak(lambda: read_list_keys(backend, "list.txt"))
            assert set(keys) == {f"dir {i}/{'x' * 60}-{i:03d}.bin" for i in range(100)}
        else:
            entries, peak = await _peak(lambda: read_url_entries(backend, "list.txt"))
            assert entries == [(f"media/{i:03d}.bin", f"https://cdn.example.com/{'x' * 40}/{i}.bin")
                               for i in range(100)]
    finally:
        await backend.close()
    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB while reading a {FILE_SIZE / MiB:.0f} MiB list file"
