"""The write half of the Backend protocol for stores that are only ever read (URL lists, plain folders)."""

from __future__ import annotations

import builtins
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import ClassVar, NoReturn

from ferry.errors import FatalError
from ferry.objects import ObjectMeta, PartInfo, PutResult
from ferry.storage.base import Backend


class ReadOnlySource:
    """Every write fails the run with `READ_ONLY` (the subclass says why it cannot be written); restore is a
    no-op, as nothing such a source holds is archived."""

    READ_ONLY: ClassVar[str] = "this source is read-only"

    def _read_only(self) -> NoReturn:
        raise FatalError(self.READ_ONLY)

    async def put(self, key: str, data: bytes, meta: ObjectMeta, *, storage_class: str | None = None,
                  crc64: int | None = None) -> PutResult:
        self._read_only()

    async def put_stream(
        self, key: str, size: int, body: Callable[[], AsyncGenerator[bytes, None]], meta: ObjectMeta, *,
        storage_class: str | None = None, crc64: int | None = None, content_md5: str | None = None,
        trailing_crc32c: bool = False,
    ) -> PutResult:
        self._read_only()

    async def create_multipart(self, key: str, meta: ObjectMeta, *, storage_class: str | None = None,
                               crc64: int | None = None) -> str:
        self._read_only()

    async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes, *,
                          crc32c: int | None = None) -> PartInfo:
        self._read_only()

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        self._read_only()

    async def complete_multipart(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> PutResult:
        self._read_only()

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        self._read_only()

    async def copy_from(self, source: Backend, src_key: str, key: str, meta: ObjectMeta | None, *,
                        if_match: str | None = None, storage_class: str | None = None,
                        crc64: int | None = None) -> PutResult:
        self._read_only()

    async def delete(self, key: str) -> None:
        self._read_only()

    async def restore(self, key: str, days: int) -> None:
        return None
