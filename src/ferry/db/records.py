"""The records a job's state is made of, free of any database import so the engine can load without one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class JobRow:
    id: str
    fingerprint: str
    spec: str
    status: str
    watermark: str | None


# The reason recorded with a success whose source gave no checksum of its content: checked by its size only.
SIZE_ONLY = "verified by size only"


@dataclass(frozen=True, slots=True)
class ObjectResult:
    key: str
    status: str  # success, skipped, failed; restore: waiting for its restore (engine/restores.py)
    size: int
    etag: str | None = None
    reason: str | None = None  # why it failed or was skipped; SIZE_ONLY on a success checked by size only


@dataclass(frozen=True, slots=True)
class UploadRow:
    key: str
    upload_id: str
    src_etag: str | None
    size: int
    part_size: int


@dataclass(frozen=True, slots=True)
class PartRow:
    part_number: int
    etag: str
    size: int
    crc64: int | None
    md5: str | None


@dataclass(frozen=True, slots=True)
class Tally:
    success: int = 0
    skipped: int = 0
    failed: int = 0
    success_bytes: int = 0
    skipped_bytes: int = 0
    failed_bytes: int = 0
    size_only: int = 0  # successes verified by their size only (SIZE_ONLY)
    restoring: int = 0  # objects waiting for a restore (not finished)
