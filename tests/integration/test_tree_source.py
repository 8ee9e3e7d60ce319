"""A plain directory tree as a source (storage/tree.py), and how the registry tells it from Ferry's own layout."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from ferry.errors import FatalError, NotFoundError, PermanentError, SourceChangedError
from ferry.objects import ObjectMeta
from ferry.storage.local import LocalBackend, is_ferry_layout
from ferry.storage.registry import open_backend
from ferry.storage.tree import TreeBackend

FILES = {
    "top.txt": b"top",
    "photos/2024/a b.jpg": b"jpeg bytes",
    "photos/2024/ü 日本.png": b"png",
    "photos/2024-old/x.bin": b"x",
    "photos/a": b"file a",
    "photos/a-b": b"a-b",
    "odd/100%.txt": b"percent",
    "odd/why?#.txt": b"query",
    "odd/back\\slash": b"backslash",
    "odd/.hidden": b"dotfile",
    "empty.bin": b"",
}


def make_tree(root: Path) -> None:
    for key, body in FILES.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    (root / "photos" / "a dir").mkdir()  # a directory "photos/a dir/" beside the file "photos/a"
    (root / "photos" / "a dir" / "inner").write_bytes(b"inner")
    (root / "empty-dir" / "deeper").mkdir(parents=True)


def keys_of(infos: list[Any]) -> list[str]:
    return [i.key for i in infos]


async def listed(backend: TreeBackend, prefix: str = "", start_after: str | None = None) -> list[Any]:
    return [i async for i in backend.list(prefix, start_after)]


async def test_files_are_objects_keyed_by_relative_path_in_byte_order(tmp_path: Path) -> None:
    make_tree(tmp_path)
    tree = TreeBackend(tmp_path)
    got = keys_of(await listed(tree))
    expected = sorted([*FILES, "photos/a dir/inner"], key=str.encode)
    assert got == expected  # empty directories hold nothing
    assert keys_of(await listed(tree, "photos/2024")) == ["photos/2024-old/x.bin", "photos/2024/a b.jpg",
                                                          "photos/2024/ü 日本.png"]
    assert keys_of(await listed(tree, start_after="photos/a")) == [k for k in expected if k.encode() > b"photos/a"]
    for key, body in FILES.items():
        assert await tree.read(key) == body, key
        info, whole = await tree.read_object(key)
        assert whole == body and info.size == len(body) and info.etag
    info = await tree.head("photos/2024/a b.jpg")
    assert info.meta is not None and info.meta.content_type == "image/jpeg"
    assert await tree.read("photos/a", offset=2, length=3) == b"le "
    with pytest.raises(NotFoundError):
        await tree.head("photos/missing")
    with pytest.raises(NotFoundError):
        await tree.read("../etc/passwd")


async def test_a_prefix_is_a_folder_of_the_tree(tmp_path: Path) -> None:
    make_tree(tmp_path)
    under = TreeBackend(tmp_path, "photos/2024/")
    assert keys_of(await listed(under)) == ["a b.jpg", "ü 日本.png"]
    assert await under.read("a b.jpg") == b"jpeg bytes"


async def test_what_is_not_a_plain_file_fails_as_its_own_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path)
    (tmp_path / "links").mkdir()
    os.symlink(tmp_path / "top.txt", tmp_path / "links" / "to-file")
    os.symlink(tmp_path / "photos", tmp_path / "links" / "to-dir")
    os.mkfifo(tmp_path / "links" / "pipe")
    os.mkdir(tmp_path / "latin")
    with open(os.path.join(os.fsencode(tmp_path), b"latin", b"caf\xe9.txt"), "wb") as f:
        f.write(b"not utf-8 name")
    deep = tmp_path.joinpath("long", *(c * 250 for c in "yzwv"))
    deep.mkdir(parents=True)
    (deep / ("u" * 250)).write_bytes(b"too long a key")  # 1259 bytes of key
    (tmp_path / "secret.txt").write_bytes(b"unreadable")
    real_open = os.open

    def refusing_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if os.fsdecode(path).endswith("secret.txt"):  # as a file of mode 000 is, for anyone but root
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", refusing_open)
    tree = TreeBackend(tmp_path)
    infos = {i.key: i for i in await listed(tree)}
    refused = {
        "links/to-file": "symbolic link", "links/to-dir": "symbolic link", "links/pipe": "not a regular file",
        "latin/caf\\xe9.txt": "not UTF-8", "long/" + "/".join(c * 250 for c in "yzwvu"): "at most 1024",
    }
    for key, reason in refused.items():
        assert key in infos, (key, sorted(infos))
        with pytest.raises(PermanentError, match=reason):
            await tree.read_object(key)
    with pytest.raises(PermanentError, match="cannot be read: Permission denied"):
        await tree.read_object("secret.txt")
    assert await tree.read("top.txt") == b"top"  # the others still read
    assert keys_of(list(infos.values())) == sorted(infos, key=str.encode)


async def test_a_directory_that_cannot_be_listed_fails_as_its_key(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path)
    real = os.scandir

    def refusing(path: Any) -> Any:
        if os.fsdecode(path).endswith("/odd"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", refusing)
    tree = TreeBackend(tmp_path)
    keys = keys_of(await listed(tree))
    assert "odd/" in keys and not any(k.startswith("odd/") and k != "odd/" for k in keys)
    with pytest.raises(PermanentError, match="directory cannot be listed"):
        await tree.read_object("odd/")


async def test_a_pinned_read_of_a_rewritten_file_is_source_changed(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"one")
    tree = TreeBackend(tmp_path)
    [info] = await listed(tree)
    assert await tree.read("f", if_match=info.etag) == b"one"
    (tmp_path / "f").write_bytes(b"two, longer")
    with pytest.raises(SourceChangedError):
        await tree.read_object("f", if_match=info.etag)
    with pytest.raises(SourceChangedError):
        await tree.read_stream("f", if_match=info.etag)


async def test_a_missing_directory_is_fatal_and_writes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FatalError, match="does not exist"):
        await listed(TreeBackend(tmp_path / "nope"))
    with pytest.raises(FatalError, match="source only"):
        await TreeBackend(tmp_path).put("k", b"v", ObjectMeta())


async def test_the_registry_reads_ferrys_layout_as_such_and_any_other_directory_as_a_tree(tmp_path: Path) -> None:
    plain, ours, empty = tmp_path / "plain", tmp_path / "ours", tmp_path / "empty"
    make_tree(plain)
    empty.mkdir()
    written = LocalBackend(ours, create=True)
    await written.put("photos/2024/a.jpg", b"a", ObjectMeta())
    assert (ours / ".%ferry" / "layout").is_file()
    assert not is_ferry_layout(plain) and is_ferry_layout(ours) and not is_ferry_layout(empty)
    assert isinstance(open_backend(str(plain), source=True), TreeBackend)
    assert isinstance(open_backend(str(empty), source=True), TreeBackend)
    ours_src = open_backend(str(ours), source=True)
    assert isinstance(ours_src, LocalBackend)
    assert [i.key async for i in ours_src.list()] == ["photos/2024/a.jpg"]
    assert isinstance(open_backend(str(plain)), LocalBackend)  # a destination is always written in our layout
    # A layout written before the marker existed is still recognised by its encoded names.
    (ours / ".%ferry" / "layout").unlink()
    (ours / ".%ferry").rmdir()
    assert is_ferry_layout(ours)
