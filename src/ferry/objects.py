"""Domain records for objects: what a listing yields and what a write carries."""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

EMPTY_META: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """HTTP metadata of an object. Content-Type is always migrated; the rest only with metadata migration."""

    content_type: str | None = None
    cache_control: str | None = None
    content_disposition: str | None = None
    content_encoding: str | None = None
    content_language: str | None = None
    expires: str | None = None
    user: Mapping[str, str] = field(default_factory=dict)

    def content_type_only(self) -> ObjectMeta:
        return ObjectMeta(content_type=self.content_type)


class Restore(enum.Enum):
    """How a restore of an archived object stands, as the store's HEAD reports it."""

    ONGOING = "ongoing"  # requested and not finished: the object cannot be read yet
    DONE = "done"  # a restored copy can be read (until it expires)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object as a listing or HEAD reports it.

    `mtime` is seconds since the epoch (float); `etag` is as the store returns it, without quotes;
    `crc64` is the CRC-64/ECMA (XZ) value when the store reports one or Ferry stored one; `meta` is only
    filled by HEAD, never by a listing, and so is `md5`: the content's MD5 (lowercase hex) when the store
    vouches that the ETag is one (a single-part upload not encrypted under a KMS or customer key), or
    reports the content's MD5 itself (Azure Content-MD5, the md5 of GCS `x-goog-hash`); `crc32c` is the
    content's CRC32C (Castagnoli) when the store reports one (GCS `x-goog-hash`, `x-amz-checksum-crc32c` of a
    whole-object checksum); `sha256`, `sha1` (hex) and `crc32` are whole-object `x-amz-checksum-*` values.
    `restore` is how a restore of an archived object stands, from HEAD (`x-amz-restore` and the vendors' like
    it); None when the store reports none (never restored, expired, or not archived).
    """

    key: str
    size: int
    mtime: float
    etag: str | None = None
    storage_class: str | None = None
    crc64: int | None = None
    meta: ObjectMeta | None = None
    md5: str | None = None
    crc32c: int | None = None
    sha256: str | None = None
    sha1: str | None = None
    crc32: int | None = None
    restore: Restore | None = None


_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")


def md5_of_etag(etag: str | None) -> str | None:
    """`etag` as a lowercase MD5 hex when it has that form (a multipart ETag, `<hex>-<n>`, does not)."""
    return etag.lower() if etag is not None and _MD5_HEX.fullmatch(etag) else None


def composite_etag(md5s: Sequence[str]) -> str:
    """The S3 multipart ETag of parts with these MD5s (hex): the MD5 of their digests, `-` and the part count."""
    joined = b"".join(bytes.fromhex(m) for m in md5s)
    return f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(md5s)}"


@dataclass(frozen=True, slots=True)
class PartInfo:
    """One uploaded part of a multipart upload."""

    part_number: int
    etag: str
    size: int
    crc32c_verified: bool = False  # the store checked the part against the CRC32C it was sent with


@dataclass(frozen=True, slots=True)
class PutResult:
    """What a completed write reports."""

    etag: str | None
    mtime: float | None = None
    crc32c_verified: bool = False  # the store checked the bytes against a CRC32C sent with them
