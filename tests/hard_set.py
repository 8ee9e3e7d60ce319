"""The hard set of objects every kind of source is proved with (tests/integration/test_source_matrix.py and the
CDN matrix): odd keys, an empty object, sizes around the part size, metadata."""

from __future__ import annotations

import hashlib
import os

from ferry.objects import ObjectMeta

MiB = 1024 * 1024
META = ObjectMeta(content_type="text/x-ferry", cache_control="max-age=60", content_disposition="inline",
                  user={"origin": "matrix", "team": "a-b"})
# Odd keys (spaces, plus, percent, query and fragment marks, non-ASCII), an empty object, one streamed (above a
# 1 MiB stream threshold) and objects just under, at and over an 8 MiB multipart threshold (parts of 5 MiB).
SIZES = {
    "plain.txt": 1000,
    "odd key+plus&amp=eq.txt": 10,
    "pct%25 and %.txt": 333,
    "q?mark#hash;semi.txt": 7,
    "unicode/ünï 中文.bin": 4096,
    "empty.bin": 0,
    "nested/deep/path/file.dat": 65_536,
    "big/streamed.bin": 3 * MiB + 17,
    "big/under-part.bin": 8 * MiB - 1,
    "big/at-part.bin": 8 * MiB,
    "big/multipart.bin": 11 * MiB + 5,
}


def body(key: str, size: int) -> bytes:
    """`size` bytes for `key`: repeatable for small objects, random for large ones."""
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size] if size < 4096 else os.urandom(size)


def bodies() -> dict[str, bytes]:
    return {k: body(k, n) for k, n in SIZES.items()}
