"""A plain directory tree as a read-only source: every regular file is an object, its key the relative path with `/`.

This is the tree a user has (photos/2024/a.jpg), not Ferry's own local layout (storage/local.py, which encodes
keys into names so that any S3 key round-trips). `storage.registry` tells them apart: a directory Ferry wrote
holds its marker `.%ferry/layout` (older ones: an encoded `%2F` directory or a sidecar at the top).

What a tree holds that is not a plain object is never skipped silently: it is listed under the key it would
have and fails as that object, with the reason, when it is read:
- a symbolic link (not followed: a link may leave the tree or loop; copy what it points to instead);
- a FIFO, socket or device (not a regular file);
- a name that is not UTF-8 (listed with the odd bytes as `\\xNN`), or a key longer than 1024 bytes;
- a file that cannot be read (permissions): found by the listing, refused by the read;
- a directory that cannot be listed: the key `dir/` fails, naming it.
Empty directories hold no object and are left out (object stores have no directories).

Listing is in UTF-8 byte order of the keys (each directory's entries sorted by their name, a directory's as
`name/`), walked depth first, so resuming after a key is exact. A file's `etag` is `<inode>-<mtime_ns>-<size>`:
a read pinned to it fails with SourceChangedError once the file was replaced or rewritten. The content type is
guessed from the name's extension, as `aws s3 sync` does.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import mimetypes
import os
import stat
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from typing import Any, BinaryIO, Final

from ferry.errors import FatalError, NotFoundError, PermanentError, SourceChangedError, TransientError
from ferry.objects import ObjectInfo, ObjectMeta
from ferry.storage.base import Backend, Capabilities, ListOrder, take
from ferry.storage.read_only import ReadOnlySource

__all__ = ["TreeBackend"]

_CAPS: Final = Capabilities(list_order=ListOrder.LEXICOGRAPHIC, copy_group=None, multipart=False, etag_is_md5=False,
                            mtime_precision=1e-6)
_BATCH: Final = 256
_CHUNK: Final = 1024 * 1024
_MAX_KEY_BYTES: Final = 1024


def _name_key(raw: bytes) -> tuple[str, str | None]:
    """A directory entry's name as key text, and why it cannot be an object key (None when it can)."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), "the file name is not UTF-8, so it cannot be an object key"


def _etag(st: os.stat_result) -> str:
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


class TreeBackend(ReadOnlySource):
    """The regular files under `root` (optionally only those under a key prefix) as objects."""

    READ_ONLY = ("a plain directory tree is read as a source only; as a destination, a directory is "
                 "written in Ferry's own layout")

    def __init__(self, root: str | os.PathLike[str], prefix: str = "") -> None:
        self._root = os.path.abspath(os.fspath(root))
        self._broot = os.fsencode(self._root)
        self._prefix = prefix
        # Keys the listing found but cannot be objects, with why: a read of one fails with that reason.
        self._refused: dict[str, str] = {}

    @property
    def capabilities(self) -> Capabilities:
        return _CAPS

    @property
    def name(self) -> str:
        return f"file://{self._root}/" + self._prefix

    def __repr__(self) -> str:
        return f"TreeBackend({self._root!r}, prefix={self._prefix!r})"

    # -- listing ----------------------------------------------------------------------------------------------
    def _scan(self, path: bytes, key_prefix: str) -> builtins.list[tuple[bytes, str, bytes, bool, os.DirEntry[bytes]]]:
        """(sort key, key, path, is_dir, entry) of one directory's entries, in key order."""
        out: builtins.list[tuple[bytes, str, bytes, bool, os.DirEntry[bytes]]] = []
        with os.scandir(path) as entries:
            for entry in entries:
                text, _ = _name_key(entry.name)
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                key = key_prefix + text + ("/" if is_dir else "")
                out.append((key.encode(), key, entry.path, is_dir, entry))
        out.sort(key=lambda item: item[0])
        return out

    def _walk(self, prefix: str, after: str | None) -> Generator[ObjectInfo, None, None]:
        if not os.path.isdir(self._broot):
            raise FatalError(f"{self.name}: the directory does not exist")
        full_prefix = self._prefix + prefix
        after_b = None if after is None else (self._prefix + after).encode()
        strip = len(self._prefix)

        def wanted_dir(key: str) -> bool:
            # Some key below `key` may match the prefix, and some may come after `after`.
            kb = key.encode()
            if not (key.startswith(full_prefix) or full_prefix.startswith(key)):
                return False
            return after_b is None or after_b < kb or after_b.startswith(kb)

        stack: builtins.list[Iterator[Any]] = []
        try:
            stack.append(iter(self._scan(self._broot, "")))
        except OSError as exc:
            raise FatalError(f"{self.name}: the directory cannot be listed: {exc.strerror}") from None
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            sort_key, key, path, is_dir, entry = item
            if is_dir:
                if not wanted_dir(key):
                    continue
                try:
                    stack.append(iter(self._scan(path, key)))
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                        continue  # gone since it was seen
                    yield self._refuse(key, strip, f"the directory cannot be listed: {exc.strerror}")
                continue
            if not key.startswith(full_prefix) or (after_b is not None and sort_key <= after_b):
                continue
            info = self._listed(key, strip, entry)
            if info is not None:
                yield info

    def _listed(self, key: str, strip: int, entry: os.DirEntry[bytes]) -> ObjectInfo | None:
        _, odd = _name_key(entry.name)
        if odd:
            return self._refuse(key, strip, odd)
        if len(key.encode()) > _MAX_KEY_BYTES:
            return self._refuse(key, strip, f"the path is {len(key.encode())} bytes; object keys have at most 1024")
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self._refuse(key, strip, f"the file cannot be examined: {exc.strerror}")
        if stat.S_ISLNK(st.st_mode):
            return self._refuse(key, strip, "a symbolic link; links are not followed (copy what it points to)", st)
        if not stat.S_ISREG(st.st_mode):
            return self._refuse(key, strip, "not a regular file (a FIFO, socket or device)", st)
        return ObjectInfo(key[strip:], st.st_size, st.st_mtime, _etag(st))

    def _refuse(self, key: str, strip: int, reason: str, st: os.stat_result | None = None) -> ObjectInfo:
        self._refused[key[strip:]] = reason
        return ObjectInfo(key[strip:], 0, st.st_mtime if st is not None else 0.0, None)

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        walker = self._walk(prefix, start_after)
        try:
            while True:
                # One thread hop per batch: the walk is many small blocking calls.
                batch = await asyncio.to_thread(take, walker, _BATCH)
                for info in batch:
                    yield info
                if len(batch) < _BATCH:
                    return
        finally:
            walker.close()

    # -- reads ------------------------------------------------------------------------------------------------
    def _open(self, key: str, if_match: str | None) -> tuple[ObjectInfo, BinaryIO]:
        """The opened file of `key` and its info (meta filled); the errors of the taxonomy, per object."""
        reason = self._refused.get(key)
        if reason is not None:
            raise PermanentError(f"{self.name}{key}: {reason}", key=key)
        full = self._prefix + key
        if not key or full.startswith("/") or "\0" in full or any(p in (".", "..", "") for p in full.split("/")):
            raise NotFoundError(f"{self.name}{key}: no such file", key=key)
        path = os.path.join(self._root, *full.split("/"))
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise NotFoundError(f"{self.name}{key}: no such file", key=key) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PermanentError(f"{self.name}{key}: a symbolic link; links are not followed", key=key) from None
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG):
                raise PermanentError(f"{self.name}{key}: the file cannot be read: {exc.strerror}", key=key) from None
            raise TransientError(f"{self.name}{key}: {exc.strerror}", key=key) from None
        f = os.fdopen(fd, "rb")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            f.close()
            raise PermanentError(f"{self.name}{key}: not a regular file", key=key)
        if if_match is not None and if_match.strip('"') != _etag(st):
            f.close()
            raise SourceChangedError(f"{self.name}{key}: the file changed since it was listed", key=key)
        meta = ObjectMeta(content_type=mimetypes.guess_type(key)[0] or "application/octet-stream")
        return ObjectInfo(key, st.st_size, st.st_mtime, _etag(st), meta=meta), f

    async def head(self, key: str) -> ObjectInfo:
        info, f = await asyncio.to_thread(self._open, key, None)
        f.close()
        return info

    def _read_sync(self, key: str, offset: int, length: int | None, if_match: str | None) -> bytes:
        _, f = self._open(key, if_match)
        with f:
            f.seek(offset)
            return f.read() if length is None else f.read(length)

    async def read(self, key: str, *, offset: int = 0, length: int | None = None,
                   if_match: str | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise PermanentError(f"invalid range offset={offset} length={length}", key=key)
        data: bytes = await self._io(key, self._read_sync, key, offset, length, if_match)
        return data

    def _read_object_sync(self, key: str, if_match: str | None) -> tuple[ObjectInfo, bytes]:
        info, f = self._open(key, if_match)
        with f:
            data = f.read()
        if len(data) != info.size:
            raise SourceChangedError(f"{self.name}{key}: the file changed while it was read", key=key)
        return info, data

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        found: tuple[ObjectInfo, bytes] = await self._io(key, self._read_object_sync, key, if_match)
        return found

    async def part_sizes(self, key: str, *, if_match: str | None = None) -> builtins.list[int] | None:
        return None  # a plain file was never a multipart upload

    async def read_stream(self, key: str, *, if_match: str | None = None
                          ) -> tuple[ObjectInfo, AsyncGenerator[bytes, None]]:
        info, f = await asyncio.to_thread(self._open, key, if_match)

        async def pieces() -> AsyncGenerator[bytes, None]:
            try:
                left = info.size
                while left > 0:
                    piece = await self._io(key, f.read, min(_CHUNK, left))
                    if not piece:
                        raise SourceChangedError(f"{self.name}{key}: the file got {left} bytes shorter", key=key)
                    left -= len(piece)
                    yield piece
            finally:
                f.close()

        return info, pieces()

    async def _io(self, key: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except OSError as exc:  # EIO and the like, mid-read
            raise TransientError(f"{self.name}{key}: {exc.strerror or exc}", key=key) from None

    # -- a source is never written ------------------------------------------------------------------------------
    async def close(self) -> None:
        return None


def _conforms(backend: TreeBackend) -> Backend:
    return backend  # mypy proves here that TreeBackend satisfies the protocol
