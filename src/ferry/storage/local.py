"""Local-directory Backend: one directory is a bucket, and every S3 key round-trips through a path encoding.

Why an encoding: S3 keys are flat strings, a filesystem is a tree. `a` beside `a/b` needs a file and a
directory of one name; `a/` (a "directory marker" object), `a//b`, `.` and `..` have no plain path; a
900-byte key does not fit in one 255-byte file name. So a key is cut into *fragments*, left to right:

* the text up to and including the next `/` is a DIR fragment (`photos/`), stored as a directory;
* the text after the last `/` is the LEAF fragment (possibly empty, for keys ending in `/`), stored as a
  regular file holding exactly the object's bytes;
* any piece longer than FRAGMENT_CHARS (60) characters is instead cut into a CONT fragment of exactly 60
  characters, stored as a directory, and the rest of the key continues inside it.

Each fragment is escaped into a file name: `%` becomes `%25`, `/` becomes `%2F`, control characters and
DEL become `%XX`, and a leading `.` becomes `%2E`; everything else (Unicode too) stays as it is. So names:

    DIR   esc(fragment)          always ends in `%2F`            photos/      -> photos%2F
    LEAF  esc(fragment)          never contains `%2F`            cat.jpg      -> cat.jpg
    LEAF  "%_" for the empty leaf                                 a/           -> a%2F/%_
    CONT  esc(fragment) + "%+"   a 60-character piece, continued

`%_` and `%+` cannot come out of esc (it only writes `%` before two upper-case hex digits), so the three
kinds never collide: `a` is the file `a`, `a/b` is the file `b` in the directory `a%2F`. At most 60
characters of at most 4 bytes each keep every name under 255 bytes, sidecar included. A name that does not
decode, or does not re-encode to itself, is not ours and is ignored, as is everything whose name starts
with `.` (no encoded name does). Names starting with `.` hold our own files:

    .<leaf name>.meta.json   sidecar: size and mtime_ns of the data file it describes, ETag (MD5 hex, or
                             `md5-of-md5s-N` after multipart), CRC-64, storage class, HTTP and user metadata
    .%tmp-<hex>              a file being written; renamed into place when complete
    .%ferry/uploads/<id>/    a multipart upload: upload.json and one `<part:05d>-<md5>.part` per part

Listing order: a directory's entries are sorted by their decoded fragment (leaf first on a tie). Every key
below a DIR or CONT entry starts with its fragment, and no DIR or CONT fragment is a proper prefix of
another entry's fragment (a DIR fragment ends at its only `/`, CONT fragments all have the same length), so
a depth-first walk in that order yields keys in code-point order, which is UTF-8 byte order. Only the
directories on the current path are held in memory.

Atomicity: data is written to a temp file (fsync'd by default) and renamed over the target, so a reader or
a crash sees the old object or the new one, never a part. The sidecar is renamed in after the data; it
records the data file's size and mtime_ns, and a sidecar that does not match its data file (a crash between
the two renames, or someone editing the file) is ignored: the object is then reported with its size and
mtime but no ETag or metadata. Files put there by hand are reported the same way. When a rewrite would give
the new data file the same mtime_ns as the old one (coarse filesystem clocks), the new file's mtime is moved
1 ns on, so an old sidecar can never describe new data.

Limits: case-insensitive or Unicode-normalising filesystems (default macOS, Windows) can merge keys that
differ only in case or normalisation; keys whose encoded path exceeds PATH_MAX fail with PermanentError;
symlinks are not followed. `mtime` is the data file's modification time.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ferry.errors import (
    DigestMismatchError,
    FatalError,
    NotFoundError,
    PermanentError,
    SourceChangedError,
    TransientError,
)
from ferry.objects import ObjectInfo, ObjectMeta, PartInfo, PutResult, composite_etag, md5_of_etag
from ferry.storage.base import Backend, take
from ferry.storage.inproc import InProcessBackend, check_part, check_parts, check_range
from ferry.storage.wrappers import unwrap

log = logging.getLogger(__name__)
_warned: set[str] = set()  # directories whose foreign entries were named already (a listing runs more than once)

__all__ = ["FRAGMENT_CHARS", "LocalBackend", "fragments", "is_ferry_layout", "key_to_relpath", "relpath_to_key"]

FRAGMENT_CHARS = 60
LEAF, DIR, CONT = 0, 1, 2  # also the tie-break order when a leaf and a CONT share a fragment
EMPTY_LEAF = "%_"
CONT_MARK = "%+"
SIDECAR_SUFFIX = ".meta.json"
INTERNAL_DIR = ".%ferry"
TMP_PREFIX = ".%tmp-"
LAYOUT_MARKER = INTERNAL_DIR + "/layout"  # written with the first object: this directory is in our layout
_LIST_BATCH = 256
_COPY_CHUNK = 1024 * 1024
_PATH_MAX = 4000  # a little under Linux's 4096, leaving room for temp names
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_PART_NAME = re.compile(r"(\d{5})-([0-9a-f]{32})\.part")
_META_FIELDS = ("content_type", "cache_control", "content_disposition", "content_encoding",
                "content_language", "expires")

# Renames of one key's data and sidecar must not interleave between two writers, or the sidecar of one
# write could end up beside the data of the other; striped, process-wide, so backends on one root agree.
# Two paths can share a stripe, so stripes are re-entrant and a thread that needs several takes them in
# index order (`_key_locks`): completing an upload holds its folder's stripe and then its key's.
_KEY_LOCKS = [threading.RLock() for _ in range(64)]


def _key_lock(path: str) -> threading.RLock:
    return _KEY_LOCKS[hash(path) % len(_KEY_LOCKS)]


@contextlib.contextmanager
def _key_locks(*paths: str) -> Iterator[None]:
    """Hold the stripes of all `paths`, taken in a global order so two such holders cannot deadlock."""
    with contextlib.ExitStack() as stack:
        for index in sorted({hash(path) % len(_KEY_LOCKS) for path in paths}):
            stack.enter_context(_KEY_LOCKS[index])
        yield


# -- the encoding ------------------------------------------------------------------------------------------
def _esc_char(ch: str) -> str:
    code = ord(ch)
    if ch in "%/" or code < 0x20 or code == 0x7F:
        return f"%{code:02X}"
    return ch


def _esc(fragment: str) -> str:
    out = "".join(map(_esc_char, fragment))
    return "%2E" + out[1:] if out.startswith(".") else out


_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def _unesc(name: str) -> str | None:
    if "%" not in name:
        return name
    # Every `%` must start an escape; a stray one means the name is not ours.
    if name.count("%") != len(_ESCAPE.findall(name)):
        return None
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), name)


def fragments(key: str) -> builtins.list[tuple[str, int]]:
    """The (fragment, kind) pieces of `key`, the last one always a LEAF."""
    out: builtins.list[tuple[str, int]] = []
    i, n = 0, len(key)
    while True:
        slash = key.find("/", i)
        end = n if slash < 0 else slash + 1
        if end - i > FRAGMENT_CHARS:
            out.append((key[i:i + FRAGMENT_CHARS], CONT))
            i += FRAGMENT_CHARS
        elif slash < 0:
            out.append((key[i:], LEAF))
            return out
        else:
            out.append((key[i:end], DIR))
            i = end


def _name(fragment: str, kind: int) -> str:
    if kind == CONT:
        return _esc(fragment) + CONT_MARK
    if kind == LEAF and not fragment:
        return EMPTY_LEAF
    return _esc(fragment)


def _valid(fragment: str, kind: int) -> bool:
    if kind == DIR:
        return fragment.find("/") == len(fragment) - 1 and len(fragment) <= FRAGMENT_CHARS
    if "/" in fragment:
        return False
    return len(fragment) == FRAGMENT_CHARS if kind == CONT else len(fragment) <= FRAGMENT_CHARS


def _decode(name: str, is_dir: bool) -> tuple[str, int] | None:
    """The (fragment, kind) a directory entry stands for, or None when it is not one of ours."""
    if name.startswith("."):
        return None
    if is_dir:
        if name.endswith(CONT_MARK):
            fragment, kind = _unesc(name[: -len(CONT_MARK)]), CONT
        elif name.endswith("%2F"):
            fragment, kind = _unesc(name), DIR
        else:
            return None
    else:
        fragment, kind = ("" if name == EMPTY_LEAF else _unesc(name)), LEAF
    # Only the canonical spelling counts, so that no two names can stand for the same key.
    if fragment is None or not _valid(fragment, kind) or _name(fragment, kind) != name:
        return None
    return fragment, kind


def key_to_relpath(key: str) -> str:
    """The path, relative to the root, of the data file that holds `key`."""
    return "/".join(_name(fragment, kind) for fragment, kind in fragments(key))


def relpath_to_key(relpath: str) -> str | None:
    """The key whose data file is at `relpath`, or None when that path is not an encoded key."""
    names = relpath.split("/")
    pieces: builtins.list[str] = []
    for index, name in enumerate(names):
        decoded = _decode(name, is_dir=index < len(names) - 1)
        if decoded is None:
            return None
        pieces.append(decoded[0])
    key = "".join(pieces)
    # Each name may be valid on its own and still not be where `fragments` puts that key (an empty leaf in
    # a CONT directory is the one such case); the round trip settles it.
    return key if key and key_to_relpath(key) == relpath else None


def is_ferry_layout(root: str | os.PathLike[str]) -> bool:
    """Whether the directory `root` holds objects in this layout rather than a plain tree of files: it has the
    marker, or (written before the marker was) our internal directory, an encoded directory or a sidecar at the
    top. A directory with none of them, an empty one too, reads as a plain tree (storage/tree.py)."""
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                name = entry.name
                if name == INTERNAL_DIR or (name.startswith(".") and name.endswith(SIDECAR_SUFFIX)):
                    return True
                if name.endswith(("%2F", CONT_MARK)) and entry.is_dir(follow_symlinks=False):
                    return True
    except OSError:
        return False
    return False


# -- on-disk records --------------------------------------------------------------------------------------
def _sidecar_path(data_path: str) -> str:
    head, tail = os.path.split(data_path)
    return os.path.join(head, "." + tail + SIDECAR_SUFFIX)


def _meta_to_json(meta: ObjectMeta) -> dict[str, Any]:
    doc: dict[str, Any] = {name: getattr(meta, name) for name in _META_FIELDS if getattr(meta, name)}
    if meta.user:
        doc["user"] = dict(meta.user)
    return doc


def _meta_from_json(doc: Any) -> ObjectMeta:
    if not isinstance(doc, dict):
        return ObjectMeta()
    fields = {name: str(doc[name]) for name in _META_FIELDS if isinstance(doc.get(name), str)}
    user = doc.get("user")
    user_meta = {str(k): str(v) for k, v in user.items()} if isinstance(user, dict) else {}
    return ObjectMeta(**fields, user=user_meta)


@dataclass(frozen=True, slots=True)
class _Sidecar:
    etag: str | None = None
    crc64: int | None = None
    storage_class: str | None = None
    meta_doc: Any = None
    mtime_ns: int | None = None  # the recorded one, even when stale, so a rewrite can step around it


def _read_sidecar(data_path: str, st: os.stat_result | None) -> tuple[_Sidecar, bool]:
    """The sidecar of `data_path`, and whether it describes the data file with stat `st`."""
    try:
        with open(_sidecar_path(data_path), "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError):
        return _Sidecar(), False
    if not isinstance(doc, dict):
        return _Sidecar(), False
    mtime_ns = doc.get("mtime_ns") if isinstance(doc.get("mtime_ns"), int) else None
    side = _Sidecar(
        etag=doc.get("etag") if isinstance(doc.get("etag"), str) else None,
        crc64=doc.get("crc64") if isinstance(doc.get("crc64"), int) else None,
        storage_class=doc.get("storage_class") if isinstance(doc.get("storage_class"), str) else None,
        meta_doc=doc.get("meta"),
        mtime_ns=mtime_ns,
    )
    fresh = st is not None and doc.get("size") == st.st_size and mtime_ns == st.st_mtime_ns
    return side, fresh


@dataclass(frozen=True, slots=True)
class _Entry:
    fragment: str
    kind: int
    name: str


def _scan(dir_path: str, in_cont: bool) -> builtins.list[_Entry]:
    """One directory's entries that are ours, in key order; what else is there (made by hand) is named in a
    warning, since skipping it silently would look like a migration that lost files."""
    entries: builtins.list[_Entry] = []
    foreign: builtins.list[str] = []
    try:
        with os.scandir(dir_path) as iterator:
            for entry in iterator:
                if entry.name.startswith("."):
                    continue  # ours (sidecars, temp files, uploads) or hidden by intent
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    if not is_dir and not entry.is_file(follow_symlinks=False):
                        foreign.append(entry.name)  # a symlink, socket, device: not followed
                        continue
                except OSError:
                    continue
                try:
                    entry.name.encode("utf-8")
                except UnicodeEncodeError:
                    foreign.append(entry.name)  # a name that is not UTF-8 cannot be an S3 key
                    continue
                decoded = _decode(entry.name, is_dir)
                # An empty leaf directly in a CONT directory would be a key `fragments` stores elsewhere.
                if decoded is None or (in_cont and decoded == ("", LEAF)):
                    foreign.append(entry.name + ("/" if is_dir else ""))
                    continue
                entries.append(_Entry(decoded[0], decoded[1], entry.name))
    except (FileNotFoundError, NotADirectoryError):
        return []
    if foreign and dir_path not in _warned:
        _warned.add(dir_path)
        shown = ", ".join(repr(name) for name in sorted(foreign)[:5])
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        log.warning("skipped in %s, not objects in ferry's directory layout: %s%s (a plain subdirectory needs "
                    "the name ending %%2F, a literal %% in a name is %%25, symlinks are not followed)",
                    dir_path, shown, more)
    entries.sort(key=lambda e: (e.fragment, e.kind))
    return entries


def _os_error(exc: OSError, op: str, key: str | None) -> Exception:
    what = f"{op}: {exc.strerror or exc}"
    if isinstance(exc, PermissionError) or exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return FatalError(what, key=key)
    if exc.errno in (errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ELOOP):
        return PermanentError(what, key=key)
    return TransientError(what, key=key)


class LocalBackend(InProcessBackend):
    """A directory as a bucket (optionally under a key prefix); see the module docstring for the layout."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        prefix: str = "",
        *,
        create: bool = False,
        fsync: bool = True,
        min_part_size: int = 5 * 1024 * 1024,
    ) -> None:
        # Any two local backends of one host can copy between themselves without the engine's help.
        super().__init__(
            prefix, copy_group=f"local:{socket.gethostname()}", min_part_size=min_part_size, mtime_precision=1e-3
        )
        self._root = os.path.abspath(os.fspath(root))
        self._create = create
        self._fsync = fsync
        self._marked = False

    @property
    def root(self) -> Path:
        return Path(self._root)

    @property
    def name(self) -> str:
        return f"file://{self._root}" + (f" (prefix {self._prefix!r})" if self._prefix else "")

    def __repr__(self) -> str:
        return f"LocalBackend({self._root!r}, prefix={self._prefix!r})"

    # -- helpers (all blocking; called in worker threads) -------------------------------------------------
    def _data_path(self, key: str) -> tuple[str, str]:
        full = self._full_key(key)
        path = os.path.join(self._root, key_to_relpath(full))
        if len(os.fsencode(path)) > _PATH_MAX:
            raise PermanentError("the key's encoded path is longer than the filesystem allows", key=key)
        return full, path

    def _check_root(self, *, write: bool = False) -> None:
        if os.path.isdir(self._root):
            if write:
                self._mark()
            return
        # Only a write creates the directory: listing a mistyped source path must fail, not find it empty.
        if write and self._create:
            os.makedirs(self._root, exist_ok=True)
            self._mark()
            return
        raise FatalError(f"{self.name}: the directory does not exist")

    def _mark(self) -> None:
        """Leave the layout marker once, so that a later `ferry migrate` from here reads this layout and not a
        plain tree (storage/registry.py)."""
        if self._marked:
            return
        marker = os.path.join(self._root, LAYOUT_MARKER)
        if not os.path.exists(marker):
            os.makedirs(os.path.dirname(marker), exist_ok=True)
            with open(marker, "w", encoding="ascii") as f:
                f.write("ferry local layout 1\n")
        self._marked = True

    def _missing(self, key: str) -> NotFoundError:
        self._check_root()
        return NotFoundError(f"{self.name}: no such object", key=key)

    def _write_temp(self, parent: str, write: Any) -> str:
        """A complete temp file in `parent` written by `write(file)`; returns its path."""
        for _ in range(5):
            self._check_root(write=True)
            os.makedirs(parent, exist_ok=True)
            tmp = os.path.join(parent, TMP_PREFIX + uuid.uuid4().hex)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileNotFoundError:
                continue  # a delete pruned the (empty) parent between our makedirs and open: make it again
            try:
                with os.fdopen(fd, "wb") as f:
                    write(f)
                    f.flush()
                    if self._fsync:
                        os.fsync(f.fileno())
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            return tmp
        raise TransientError("the target directory kept disappearing under concurrent deletes")

    def _commit(
        self, full: str, path: str, tmp: str, *, etag: str, meta: ObjectMeta, storage_class: str | None,
        crc64: int | None,
    ) -> PutResult:
        """Rename the finished temp data file to `path` and its sidecar beside it."""
        sidecar = _sidecar_path(path)
        sidecar_tmp = os.path.join(os.path.dirname(path), TMP_PREFIX + uuid.uuid4().hex)
        try:
            with _key_lock(path):
                st = os.stat(tmp)
                mtime_ns = st.st_mtime_ns
                taken: set[int | None] = {_read_sidecar(path, None)[0].mtime_ns}
                with contextlib.suppress(FileNotFoundError):
                    taken.add(os.stat(path, follow_symlinks=False).st_mtime_ns)
                if mtime_ns in taken:
                    # Coarse clocks can give the rewrite the old file's mtime; then the old sidecar would
                    # pass for the new data's after a crash between the renames below. Step past it.
                    while mtime_ns in taken:
                        mtime_ns += 1
                    os.utime(tmp, ns=(st.st_atime_ns, mtime_ns))
                doc = {
                    "v": 1, "key": full, "size": st.st_size, "mtime_ns": mtime_ns, "etag": etag,
                    "crc64": crc64, "storage_class": storage_class, "meta": _meta_to_json(meta),
                }
                with open(sidecar_tmp, "w", encoding="utf-8") as f:
                    json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
                try:
                    os.replace(tmp, path)
                except IsADirectoryError:
                    raise PermanentError(
                        "a directory not written by Ferry is in the way of this key", key=full
                    ) from None
                os.replace(sidecar_tmp, sidecar)
        except BaseException:
            for leftover in (tmp, sidecar_tmp):
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
            raise
        return PutResult(etag=etag, mtime=mtime_ns / 1e9)

    def _info(self, key: str, st: os.stat_result, side: _Sidecar, fresh: bool, *, with_meta: bool) -> ObjectInfo:
        if not fresh:
            side = _Sidecar()
        return ObjectInfo(
            key=key, size=st.st_size, mtime=st.st_mtime_ns / 1e9, etag=side.etag,
            storage_class=side.storage_class, crc64=side.crc64,
            meta=_meta_from_json(side.meta_doc) if with_meta else None,
            md5=md5_of_etag(side.etag) if with_meta else None,
        )

    def _open(self, key: str) -> tuple[BinaryIO, os.stat_result, _Sidecar, bool]:
        """The open data file of `key`, its stat, and the sidecar checked against that very file."""
        _, path = self._data_path(key)
        try:
            f = open(path, "rb")  # noqa: SIM115 - handed to the caller, who closes it
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._missing(key) from None
        try:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise self._missing(key)
            side, fresh = _read_sidecar(path, st)
        except BaseException:
            f.close()
            raise
        return f, st, side, fresh

    @staticmethod
    def _check_if_match(key: str, side: _Sidecar, fresh: bool, if_match: str | None) -> None:
        if if_match is None:
            return
        etag = side.etag if fresh else None
        if etag != if_match.strip('"'):
            raise SourceChangedError(f"object changed: ETag is now {etag}, expected {if_match}", key=key)

    async def _run(self, op: str, key: str | None, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except OSError as exc:
            raise _os_error(exc, op, key) from exc

    # -- listing ------------------------------------------------------------------------------------------
    def _walk(self, full_prefix: str, after: str | None) -> Generator[ObjectInfo, None, None]:
        self._check_root()
        *complete, (rest, _) = fragments(full_prefix)
        base = os.path.join(self._root, *(_name(f, k) for f, k in complete))
        base_key = "".join(f for f, _ in complete)
        in_cont = bool(complete) and complete[-1][1] == CONT
        strip = len(self._prefix)
        top = [e for e in _scan(base, in_cont) if e.fragment.startswith(rest)]
        # Frames: directory, the key prefix it stands for, its remaining entries, and whether keys in it
        # may still be <= `after` (once past it, no more comparisons are needed).
        stack: builtins.list[tuple[str, str, Iterator[_Entry], bool]] = [
            (base, base_key, iter(top), after is not None)
        ]
        while stack:
            dir_path, key_prefix, entries, partial = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                continue
            key = key_prefix + entry.fragment
            path = os.path.join(dir_path, entry.name)
            if entry.kind == LEAF:
                if partial and after is not None and key <= after:
                    continue
                try:
                    st = os.stat(path, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted since the scan
                if stat.S_ISREG(st.st_mode):
                    side, fresh = _read_sidecar(path, st)
                    yield self._info(key[strip:], st, side, fresh, with_meta=False)
                continue
            child_partial = False
            if partial and after is not None:
                if after.startswith(key):
                    child_partial = True
                elif key < after:
                    continue  # every key below is <= after
            stack.append((path, key, iter(_scan(path, entry.kind == CONT)), child_partial))

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        walker = self._walk(self._prefix + prefix, None if start_after is None else self._prefix + start_after)
        try:
            while True:
                # One thread hop per batch, not per object: the walk is many tiny blocking calls.
                batch: builtins.list[ObjectInfo] = await self._run("list", prefix, take, walker, _LIST_BATCH)
                for info in batch:
                    yield info
                if len(batch) < _LIST_BATCH:
                    return
        finally:
            walker.close()

    # -- reads --------------------------------------------------------------------------------------------
    def _head_sync(self, key: str) -> ObjectInfo:
        f, st, side, fresh = self._open(key)
        f.close()
        return self._info(key, st, side, fresh, with_meta=True)

    async def head(self, key: str) -> ObjectInfo:
        info: ObjectInfo = await self._run("head", key, self._head_sync, key)
        return info

    def _read_sync(self, key: str, offset: int, length: int | None, if_match: str | None) -> bytes:
        f, _, side, fresh = self._open(key)
        with f:
            self._check_if_match(key, side, fresh, if_match)
            f.seek(offset)
            return f.read() if length is None else f.read(length)

    async def read(
        self, key: str, *, offset: int = 0, length: int | None = None, if_match: str | None = None
    ) -> bytes:
        check_range(key, offset, length)
        data: bytes = await self._run("read", key, self._read_sync, key, offset, length, if_match)
        return data

    def _read_object_sync(self, key: str, if_match: str | None) -> tuple[ObjectInfo, bytes]:
        f, st, side, fresh = self._open(key)
        with f:
            self._check_if_match(key, side, fresh, if_match)
            data = f.read()
        return self._info(key, st, side, fresh, with_meta=True), data

    async def read_object(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        result: tuple[ObjectInfo, bytes] = await self._run("read", key, self._read_object_sync, key, if_match)
        return result

    def _open_stream_sync(self, key: str, if_match: str | None) -> tuple[ObjectInfo, BinaryIO]:
        f, st, side, fresh = self._open(key)
        try:
            self._check_if_match(key, side, fresh, if_match)
        except BaseException:
            f.close()
            raise
        return self._info(key, st, side, fresh, with_meta=True), f

    async def part_sizes(self, key: str, *, if_match: str | None = None) -> builtins.list[int] | None:
        return None  # a multipart upload's layout is not kept once it is one file

    async def read_stream(
        self, key: str, *, if_match: str | None = None
    ) -> tuple[ObjectInfo, AsyncGenerator[bytes, None]]:
        opened: tuple[ObjectInfo, BinaryIO] = await self._run("read", key, self._open_stream_sync, key, if_match)
        info, f = opened

        async def pieces() -> AsyncGenerator[bytes, None]:
            # The file stays open (a rename over it does not change what is read) and is read in pieces.
            try:
                left = info.size
                while left > 0:
                    piece: bytes = await self._run("read", key, f.read, min(_COPY_CHUNK, left))
                    if not piece:
                        raise TransientError(f"read {self.name}{key}: the file ended {left} bytes early", key=key)
                    left -= len(piece)
                    yield piece
            finally:
                f.close()

        return info, pieces()

    # -- writes -------------------------------------------------------------------------------------------
    def _put_sync(
        self, key: str, data: bytes, meta: ObjectMeta, storage_class: str | None, crc64: int | None
    ) -> PutResult:
        full, path = self._data_path(key)
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        tmp = self._write_temp(os.path.dirname(path), lambda f: f.write(data))
        return self._commit(full, path, tmp, etag=etag, meta=meta, storage_class=storage_class, crc64=crc64)

    async def put(
        self, key: str, data: bytes, meta: ObjectMeta, *, storage_class: str | None = None,
        crc64: int | None = None,
    ) -> PutResult:
        result: PutResult = await self._run("put", key, self._put_sync, key, data, meta, storage_class, crc64)
        return result

    def _put_stream_sync(
        self, key: str, size: int, next_chunk: Callable[[], bytes | None], meta: ObjectMeta,
        storage_class: str | None, crc64: int | None, content_md5: str | None,
    ) -> PutResult:
        full, path = self._data_path(key)
        digest = hashlib.md5(usedforsecurity=False)

        def write(out: BinaryIO) -> None:
            received = 0
            while (chunk := next_chunk()) is not None:
                received += len(chunk)
                if received > size:
                    break
                digest.update(chunk)
                out.write(chunk)
            if received != size:
                raise PermanentError(f"put {self.name}{key}: the body held {received} bytes or more, not {size}",
                                     key=key)
            if content_md5 is not None and digest.hexdigest() != content_md5.lower():
                raise DigestMismatchError(f"put {self.name}{key}: the bytes do not match their Content-MD5", key=key)

        tmp = self._write_temp(os.path.dirname(path), write)
        return self._commit(full, path, tmp, etag=digest.hexdigest(), meta=meta, storage_class=storage_class,
                            crc64=crc64)

    async def put_stream(
        self, key: str, size: int, body: Callable[[], AsyncGenerator[bytes, None]], meta: ObjectMeta, *,
        storage_class: str | None = None, crc64: int | None = None, content_md5: str | None = None,
        trailing_crc32c: bool = False,
    ) -> PutResult:
        # The file is written in a worker thread, which takes each chunk from the event loop in turn.
        loop = asyncio.get_running_loop()
        async with contextlib.aclosing(body()) as chunks:

            async def pull() -> bytes | None:
                return await anext(chunks, None)

            def next_chunk() -> bytes | None:
                return asyncio.run_coroutine_threadsafe(pull(), loop).result()

            result: PutResult = await self._run("put", key, self._put_stream_sync, key, size, next_chunk, meta,
                                                storage_class, crc64, content_md5)
        return result

    def _delete_sync(self, key: str) -> None:
        _, path = self._data_path(key)
        with _key_lock(path):
            for victim in (path, _sidecar_path(path)):
                with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
                    os.unlink(victim)
        # Prune directories left empty, so deleted prefixes do not linger; rmdir refuses non-empty ones,
        # and a put racing with us re-creates its directory (see _write_temp).
        parent = os.path.dirname(path)
        while len(parent) > len(self._root):
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)

    async def delete(self, key: str) -> None:
        await self._run("delete", key, self._delete_sync, key)

    def _copy_sync(
        self, src: LocalBackend, src_key: str, key: str, meta: ObjectMeta | None, if_match: str | None,
        storage_class: str | None, crc64: int | None = None,
    ) -> PutResult:
        full, path = self._data_path(key)
        replaced = meta is not None
        f, _, side, fresh = src._open(src_key)
        with f:
            self._check_if_match(src_key, side, fresh, if_match)
            digest = hashlib.md5(usedforsecurity=False)

            def write(out: BinaryIO) -> None:
                while chunk := f.read(_COPY_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)

            tmp = self._write_temp(os.path.dirname(path), write)
        if meta is None:
            meta = _meta_from_json(side.meta_doc) if fresh else ObjectMeta()
        # Like S3 CopyObject: a new single-part object (ETag = MD5 of the data), class reset unless given.
        return self._commit(
            full, path, tmp, etag=digest.hexdigest(), meta=meta, storage_class=storage_class,
            crc64=crc64 if replaced and crc64 is not None else (side.crc64 if fresh else None),
        )

    async def copy_from(
        self, source: Backend, src_key: str, key: str, meta: ObjectMeta | None, *,
        if_match: str | None = None, storage_class: str | None = None, crc64: int | None = None,
    ) -> PutResult:
        src = unwrap(source)
        if not isinstance(src, LocalBackend) or src.capabilities.copy_group != self._capabilities.copy_group:
            raise PermanentError(
                f"server-side copy from {source.name} to {self.name} needs the same copy group", key=key
            )
        result: PutResult = await self._run(
            "copy", key, self._copy_sync, src, src_key, key, meta, if_match, storage_class, crc64
        )
        return result

    async def restore(self, key: str, days: int) -> None:
        await self.head(key)  # nothing here is ever archived; only a missing key is an error

    async def close(self) -> None:
        return None

    # -- multipart ----------------------------------------------------------------------------------------
    def _uploads_dir(self) -> str:
        return os.path.join(self._root, INTERNAL_DIR, "uploads")

    def _upload(self, key: str, upload_id: str) -> tuple[str, dict[str, Any]]:
        """The directory and record of an upload of `key`; NotFoundError when there is no such upload."""
        full = self._full_key(key)
        if not _UPLOAD_ID.fullmatch(upload_id):  # never let an id from outside become a path
            raise NotFoundError(f"{self.name}: no such multipart upload {upload_id!r}", key=key)
        folder = os.path.join(self._uploads_dir(), upload_id)
        try:
            with open(os.path.join(folder, "upload.json"), "rb") as f:
                doc = json.loads(f.read())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            doc = None
        if not isinstance(doc, dict) or doc.get("key") != full:
            self._check_root()
            raise NotFoundError(f"{self.name}: no such multipart upload {upload_id}", key=key)
        return folder, doc

    def _create_multipart_sync(
        self, key: str, meta: ObjectMeta, storage_class: str | None, crc64: int | None
    ) -> str:
        full, _ = self._data_path(key)
        upload_id = uuid.uuid4().hex
        folder = os.path.join(self._uploads_dir(), upload_id)
        self._check_root(write=True)
        os.makedirs(folder)
        doc = {"v": 1, "key": full, "meta": _meta_to_json(meta), "storage_class": storage_class,
               "crc64": crc64, "initiated": time.time()}
        tmp = os.path.join(folder, TMP_PREFIX + uuid.uuid4().hex)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False)
        os.replace(tmp, os.path.join(folder, "upload.json"))
        return upload_id

    async def create_multipart(
        self, key: str, meta: ObjectMeta, *, storage_class: str | None = None, crc64: int | None = None
    ) -> str:
        upload_id: str = await self._run(
            "create_multipart", key, self._create_multipart_sync, key, meta, storage_class, crc64
        )
        return upload_id

    @staticmethod
    def _parts(folder: str) -> dict[int, tuple[str, str, int]]:
        """Part number -> (file name, MD5 hex, size); the newest file wins if a crash left two."""
        best: dict[int, tuple[int, str, str, int]] = {}
        with os.scandir(folder) as iterator:
            for entry in iterator:
                match = _PART_NAME.fullmatch(entry.name)
                if match is None:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                number = int(match.group(1))
                candidate = (st.st_mtime_ns, entry.name, match.group(2), st.st_size)
                if number not in best or candidate > best[number]:
                    best[number] = candidate
        return {n: (name, md5, size) for n, (_, name, md5, size) in best.items()}

    def _upload_part_sync(self, key: str, upload_id: str, part_number: int, data: bytes) -> PartInfo:
        folder, _ = self._upload(key, upload_id)
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        tmp = os.path.join(folder, TMP_PREFIX + uuid.uuid4().hex)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                if self._fsync:
                    os.fsync(f.fileno())
        except FileNotFoundError:
            raise NotFoundError(f"{self.name}: multipart upload {upload_id} was aborted", key=key) from None
        name = f"{part_number:05d}-{etag}.part"
        with _key_lock(folder):
            os.replace(tmp, os.path.join(folder, name))
            for other in os.listdir(folder):
                if other.startswith(f"{part_number:05d}-") and other != name:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(folder, other))
        return PartInfo(part_number=part_number, etag=etag, size=len(data))

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, data: bytes, *, crc32c: int | None = None
    ) -> PartInfo:
        check_part(key, part_number, len(data), self._capabilities)
        part: PartInfo = await self._run(
            "upload_part", key, self._upload_part_sync, key, upload_id, part_number, data
        )
        return part

    def _list_parts_sync(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        folder, _ = self._upload(key, upload_id)
        try:
            parts = self._parts(folder)
        except FileNotFoundError:
            raise NotFoundError(f"{self.name}: multipart upload {upload_id} was aborted", key=key) from None
        return [PartInfo(n, md5, size) for n, (_, md5, size) in sorted(parts.items())]

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        parts: builtins.list[PartInfo] = await self._run("list_parts", key, self._list_parts_sync, key, upload_id)
        return parts

    def _complete_sync(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> PutResult:
        full, path = self._data_path(key)
        folder, doc = self._upload(key, upload_id)
        with _key_locks(folder, path):
            stored = self._parts(folder)
            check_parts(
                key, parts, {n: PartInfo(n, md5, size) for n, (_, md5, size) in stored.items()},
                self._capabilities.min_part_size,
            )
            chosen = [(os.path.join(folder, stored[p.part_number][0]), stored[p.part_number][1]) for p in parts]

            def write(out: BinaryIO) -> None:
                for part_path, _ in chosen:
                    with open(part_path, "rb") as src:
                        shutil.copyfileobj(src, out, _COPY_CHUNK)

            tmp = self._write_temp(os.path.dirname(path), write)
            result = self._commit(
                full, path, tmp, etag=composite_etag([md5 for _, md5 in chosen]), meta=_meta_from_json(doc.get("meta")),
                storage_class=doc.get("storage_class") if isinstance(doc.get("storage_class"), str) else None,
                crc64=doc.get("crc64") if isinstance(doc.get("crc64"), int) else None,
            )
            shutil.rmtree(folder, ignore_errors=True)
        return result

    async def complete_multipart(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> PutResult:
        if not parts:
            raise PermanentError("completing a multipart upload needs at least one part", key=key)
        result: PutResult = await self._run(
            "complete_multipart", key, self._complete_sync, key, upload_id, builtins.list(parts)
        )
        return result

    def _abort_sync(self, key: str, upload_id: str) -> None:
        folder, _ = self._upload(key, upload_id)
        with _key_lock(folder):
            shutil.rmtree(folder, ignore_errors=True)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self._run("abort_multipart", key, self._abort_sync, key, upload_id)


def _conforms(backend: LocalBackend) -> Backend:
    return backend  # mypy proves here that LocalBackend still satisfies the protocol
