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


@dataclass(frozen=True, slots=True)
class ObjectResult:
    key: str
    status: str  # success, skipped, failed; restore: waiting for its restore (engine/restores.py)
    size: int
    etag: str | None = None
    reason: str | None = None


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
    restoring: int = 0  # objects waiting for a restore (not finished)
