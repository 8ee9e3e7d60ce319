"""What a source vouches for an object's content, and the sums over the bytes read that are checked against it.

Every copy path feeds the bytes it read, in order, to one ContentSums; what they must match is the strongest
checksum the source itself gave (SourceChecksum), never one computed from the same bytes. Against random damage
(a NIC, a cache, a middlebox) any of these is ample, so the order favours what costs least: the content MD5
first (a streamed copy hands it to the destination as Content-MD5, so its bytes need no pass here), then a
whole-object SHA-256 or SHA-1, the vendor CRC-64, the multipart ETag (its part layout takes a HEAD or more),
CRC32C and CRC32. A source that offers none is checked by its size only, and says so (`size_only`).
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import fastcrc

from ferry.engine.checksums import Crc64
from ferry.objects import ObjectInfo, composite_etag

__all__ = ["CRC32", "CRC32C", "CRC64", "MD5", "MULTIPART", "SHA1", "SHA256", "SIZE", "UNCHECKED", "ContentSums",
           "SourceChecksum", "multipart_count", "source_checksum"]

_MULTIPART_ETAG: Final = re.compile(r"^([0-9a-fA-F]{32})-([1-9][0-9]{0,4})$")

MD5: Final = "MD5"
SHA256: Final = "SHA-256"
SHA1: Final = "SHA-1"
CRC64: Final = "CRC64"
MULTIPART: Final = "multipart ETag"
CRC32C: Final = "CRC32C"
CRC32: Final = "CRC32"
SIZE: Final = "size"
UNCHECKED: Final = "unchecked"  # no_check: nothing is verified, not even counted as verified by size


@dataclass(frozen=True, slots=True)
class SourceChecksum:
    """One checksum the source gave for an object's content: `kind` (MD5, CRC64, ...; "size" when it gave
    none), its `value` normalised (lower-case hex, or the decimal CRC), and for a multipart ETag the sizes of
    the parts it was uploaded in."""

    kind: str
    value: str = ""
    parts: tuple[int, ...] = ()

    @property
    def size_only(self) -> bool:
        return self.kind == SIZE


def multipart_count(info: ObjectInfo) -> int | None:
    """The part count of `info`'s multipart ETag (`<md5 of part md5s>-<n>`), None for any other ETag."""
    m = _MULTIPART_ETAG.match(info.etag or "")
    return int(m.group(2)) if m else None


def source_checksum(info: ObjectInfo, part_sizes: Sequence[int] | None = None) -> SourceChecksum:
    """The strongest checksum `info` (as a GET or HEAD of the source reported it) carries; `part_sizes`, the
    layout of a multipart upload, makes its ETag usable when the parts add up to the object's size."""
    if info.md5 is not None:
        return SourceChecksum(MD5, info.md5.lower())
    if info.sha256 is not None:
        return SourceChecksum(SHA256, info.sha256.lower())
    if info.sha1 is not None:
        return SourceChecksum(SHA1, info.sha1.lower())
    if info.crc64 is not None:
        return SourceChecksum(CRC64, str(info.crc64))
    count = multipart_count(info)
    if (count is not None and part_sizes is not None and len(part_sizes) == count and sum(part_sizes) == info.size
            and all(p > 0 for p in part_sizes)):
        return SourceChecksum(MULTIPART, (info.etag or "").lower(), tuple(part_sizes))
    if info.crc32c is not None:
        return SourceChecksum(CRC32C, str(info.crc32c))
    if info.crc32 is not None:
        return SourceChecksum(CRC32, str(info.crc32))
    return SourceChecksum(SIZE)


class ContentSums:
    """The sums of one object's bytes, fed in order (`update`, from one thread at a time): what `check` needs,
    plus the content MD5 (`md5`) and CRC-64 (`crc64`) when the caller wants them for its own checks."""

    __slots__ = ("_crc32", "_crc32c", "_digest", "_md5", "_part", "_part_left", "_part_md5s", "_parts", "_want",
                 "check", "crc64_sum", "size")

    def __init__(self, check: SourceChecksum, *, md5: bool = False, crc64: bool = False) -> None:
        self.check = check
        self._want = (md5, crc64)
        self.reset()

    def reset(self) -> None:
        """Forget what was fed: a read starts again from the first byte."""
        check, (md5, crc64) = self.check, self._want
        kind = check.kind
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 or kind == MD5 else None
        self.crc64_sum = Crc64() if crc64 or kind == CRC64 else None
        self._digest = (hashlib.sha256() if kind == SHA256 else hashlib.sha1(usedforsecurity=False) if kind == SHA1
                        else None)
        self._crc32c: int | None = 0 if kind == CRC32C else None
        self._crc32: int | None = 0 if kind == CRC32 else None
        self._parts = list(check.parts)
        self._part_md5s: list[str] = []
        self._part = hashlib.md5(usedforsecurity=False) if self._parts else None
        self._part_left = self._parts[0] if self._parts else 0
        self.size = 0

    @property
    def hashing(self) -> bool:
        """Whether feeding the bytes does anything (a size-only check with nothing asked for does not)."""
        return any(s is not None for s in (self._md5, self.crc64_sum, self._digest, self._crc32c, self._crc32,
                                           self._part))

    def update(self, data: bytes | memoryview) -> None:
        if self._md5 is not None:
            self._md5.update(data)
        if self.crc64_sum is not None:
            self.crc64_sum.update(data)
        if self._digest is not None:
            self._digest.update(data)
        if self._crc32c is not None:
            self._crc32c = fastcrc.crc32.iscsi(data, self._crc32c)
        if self._crc32 is not None:
            self._crc32 = zlib.crc32(data, self._crc32)
        if self._part is not None:
            self._along_parts(memoryview(data))
        self.size += data.nbytes if isinstance(data, memoryview) else len(data)

    def _along_parts(self, view: memoryview) -> None:
        """Hash `view` along the source's part boundaries, whatever pieces it arrives in."""
        while len(view):
            if self._part is None:  # more bytes than the parts hold: the size check says so
                return
            take = min(self._part_left, len(view))
            self._part.update(view[:take])
            view = view[take:]
            self._part_left -= take
            if self._part_left == 0:
                self._part_md5s.append(self._part.hexdigest())
                nxt = len(self._part_md5s)
                if nxt < len(self._parts):
                    self._part, self._part_left = hashlib.md5(usedforsecurity=False), self._parts[nxt]
                else:
                    self._part = None

    @property
    def md5(self) -> str | None:
        """The MD5 (hex) of everything fed, when it was asked for."""
        return self._md5.hexdigest() if self._md5 is not None else None

    @property
    def crc64(self) -> int | None:
        return self.crc64_sum.value if self.crc64_sum is not None else None

    def computed(self) -> str:
        """The value of the check's kind over what was fed, in the check's form."""
        kind = self.check.kind
        if kind == MD5:
            return self.md5 or ""
        if kind in (SHA256, SHA1):
            return self._digest.hexdigest() if self._digest is not None else ""
        if kind == CRC64:
            return str(self.crc64)
        if kind == MULTIPART:
            done = len(self._part_md5s) == len(self._parts) and self._part is None
            return composite_etag(self._part_md5s) if done else "(an incomplete part)"
        if kind == CRC32C:
            return str(self._crc32c)
        if kind == CRC32:
            return str(self._crc32)
        return ""

    def problem(self, size: int) -> str | None:
        """Why the `size` bytes fed do not match the source's checksum, or None when they do."""
        if self.size != size:
            return f"{self.size} bytes were read of the source's {size}"
        if self.check.kind in (SIZE, UNCHECKED):
            return None
        got = self.computed()
        if got != self.check.value:
            return (f"the bytes read do not match the source's {self.check.kind} "
                    f"({_short(got)} read, {_short(self.check.value)} at the source)")
        return None


def _short(value: str) -> str:
    return value if len(value) <= 20 else value[:16] + "…"
