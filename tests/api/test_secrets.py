"""Unit tests for secrets at rest: master key sources, key-file safety, AES-GCM tokens, the masking Secret."""

from __future__ import annotations

import base64
import copy
import os
import pickle
import stat
import threading
from pathlib import Path

import pytest
from pydantic import BaseModel

from ferry import secrets
from ferry.secrets import (
    ENV_VAR,
    KEY_FILE_NAME,
    MASK,
    Secret,
    SecretBox,
    SecretDecryptError,
    SecretKeyError,
    load_master_key,
    parse_master_key,
)

KEY = bytes(range(32))


def test_round_trip_and_random_nonce() -> None:
    box = SecretBox(KEY)
    a, b = box.encrypt("s3cr3t-ü"), box.encrypt("s3cr3t-ü")
    assert a != b
    assert a.startswith("v1:")
    assert "s3cr3t" not in a
    assert box.decrypt(a) == box.decrypt(b) == "s3cr3t-ü"
    assert box.decrypt(box.encrypt("")) == ""


def test_tampered_token_is_refused() -> None:
    box = SecretBox(KEY)
    token = box.encrypt("value")
    blob = bytearray(base64.urlsafe_b64decode(token[3:] + "=" * (-len(token[3:]) % 4)))
    blob[-1] ^= 1
    forged = "v1:" + base64.urlsafe_b64encode(bytes(blob)).decode().rstrip("=")
    with pytest.raises(SecretDecryptError, match="tampered"):
        box.decrypt(forged)
    for bad in ("v2:" + token[3:], "nocolon", "v1:!!!", "v1:" + token[3:12]):
        with pytest.raises(SecretDecryptError):
            box.decrypt(bad)


def test_other_key_is_named_as_such() -> None:
    token = SecretBox(KEY).encrypt("value")
    with pytest.raises(SecretDecryptError, match="different master key"):
        SecretBox(bytes(32)).decrypt(token)


@pytest.mark.parametrize(
    "raw",
    [
        KEY.hex(),
        KEY.hex().upper(),
        base64.b64encode(KEY).decode(),
        base64.urlsafe_b64encode(KEY).decode().rstrip("="),
    ],
)
def test_env_key_formats(raw: str, tmp_path: Path) -> None:
    assert load_master_key(tmp_path, {ENV_VAR: raw}) == KEY
    assert not (tmp_path / KEY_FILE_NAME).exists()


@pytest.mark.parametrize("raw", ["abc", base64.b64encode(bytes(16)).decode(), "zz" * 32, "not base64 !!"])
def test_bad_env_key(raw: str) -> None:
    with pytest.raises(SecretKeyError, match=ENV_VAR):
        parse_master_key(raw)


def test_key_file_created_0600_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    first = load_master_key(data_dir, {})
    path = data_dir / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key(data_dir, {}) == first
    token = SecretBox.load(data_dir, {}).encrypt("x")
    assert SecretBox.load(data_dir, {}).decrypt(token) == "x"
    assert [p.name for p in data_dir.iterdir()] == [KEY_FILE_NAME]


def test_concurrent_first_use_agrees(tmp_path: Path) -> None:
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_master_key(tmp_path, {}))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_loose_key_file_is_refused(tmp_path: Path, mode: int) -> None:
    load_master_key(tmp_path, {})
    path = tmp_path / KEY_FILE_NAME
    os.chmod(path, mode)
    with pytest.raises(SecretKeyError, match="chmod 600") as info:
        load_master_key(tmp_path, {})
    assert f"{mode:04o}" in str(info.value)


def test_symlinked_or_garbage_key_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text(base64.b64encode(KEY).decode())
    target.chmod(0o600)
    (tmp_path / KEY_FILE_NAME).symlink_to(target)
    with pytest.raises(SecretKeyError):
        load_master_key(tmp_path, {})
    other = tmp_path / "d2"
    other.mkdir()
    (other / KEY_FILE_NAME).write_text("garbage")
    (other / KEY_FILE_NAME).chmod(0o600)
    with pytest.raises(SecretKeyError, match="valid 32-byte key"):
        load_master_key(other, {})


def test_no_key_source() -> None:
    with pytest.raises(SecretKeyError, match=ENV_VAR):
        load_master_key(None, {})


def test_module_level_functions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(secrets, "_default_box", None)
    secrets.configure(tmp_path)
    try:
        assert secrets.decrypt(secrets.encrypt("abc")) == "abc"
        assert (tmp_path / KEY_FILE_NAME).exists()
    finally:
        monkeypatch.setattr(secrets, "_default_box", None)
        monkeypatch.setattr(secrets, "_default_dir", None)


def test_secret_never_shows_itself() -> None:
    s = Secret("hunter2")
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s)
    assert "hunter2" not in f"{s} {s!r} {s:>20}"
    assert "hunter2" not in "%s %r" % (s, s)  # noqa: UP031
    assert "hunter2" not in repr([s, {"k": s}])
    assert s.reveal() == "hunter2"
    assert s == Secret("hunter2") and s != Secret("other") and s != "hunter2"
    assert len({s, Secret("hunter2")}) == 1
    assert bool(s) and not Secret("")
    assert copy.deepcopy(s) is s
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        Secret(5)  # type: ignore[arg-type]


def test_secret_in_pydantic_model() -> None:
    class M(BaseModel):
        sk: Secret

    m = M.model_validate_json('{"sk": "hunter2"}')
    assert isinstance(m.sk, Secret) and m.sk.reveal() == "hunter2"
    assert "hunter2" not in repr(m)
    assert "hunter2" not in m.model_dump_json()
    assert m.model_dump(mode="json") == {"sk": MASK}
    assert M(sk=Secret("x")).sk.reveal() == "x"
    assert M.model_json_schema()["properties"]["sk"]["writeOnly"] is True
