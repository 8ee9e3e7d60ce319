"""Secrets at rest: AES-GCM under a master key (FERRY_MASTER_KEY or a 0600 key file), and a masking Secret type."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import stat
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ferry.errors import FatalError

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
    from pydantic.json_schema import JsonSchemaValue
    from pydantic_core import CoreSchema

ENV_VAR: Final = "FERRY_MASTER_KEY"
KEY_FILE_NAME: Final = "master.key"
KEY_BYTES: Final = 32
MASK: Final = "******"

_VERSION: Final = "v1"
_NONCE_BYTES: Final = 12
_KID_BYTES: Final = 4
# Binding the version into the AEAD tag means a token cannot be replayed under a future format.
_AAD: Final = b"ferry-secret-v1"


class SecretKeyError(FatalError):
    """The master key is missing, malformed, or stored unsafely."""

    code = "FERRY.0510"


class SecretDecryptError(FatalError):
    """A stored secret cannot be decrypted: wrong master key, corrupted or foreign token."""

    code = "FERRY.0511"


@final
class Secret:
    """A string that never shows itself: repr/str/format give a mask; `reveal()` is the one way in."""

    __slots__ = ("_value",)

    def __init__(self, value: str | Secret) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        # Length checks (API limits) need it; the length of a key is not worth hiding.
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

    def __reduce__(self) -> NoReturn:
        # Principle 7: queue messages and pickles never carry credentials, so fail loudly instead.
        raise TypeError("Secret values cannot be pickled; store them encrypted and pass an id")

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        from pydantic_core import core_schema

        from_str = core_schema.no_info_after_validator_function(cls, core_schema.str_schema())
        return core_schema.json_or_python_schema(
            json_schema=from_str,
            python_schema=core_schema.union_schema([core_schema.is_instance_schema(cls), from_str]),
            # A secret that slips into a response or a dump comes out masked, never in clear.
            serialization=core_schema.plain_serializer_function_ser_schema(lambda _v: MASK),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string", "format": "password", "writeOnly": True}


def reveal(value: str | Secret) -> str:
    """The clear text of a value that may or may not be wrapped."""
    return value.reveal() if isinstance(value, Secret) else value


def parse_master_key(raw: str) -> bytes:
    """Decode a 32-byte key given as 64 hex digits or as (url-safe) base64."""
    text = raw.strip()
    if len(text) == 2 * KEY_BYTES:
        # 64 hex digits are also valid base64 (of 48 bytes), so hex must be tried first.
        with contextlib.suppress(ValueError):
            return bytes.fromhex(text)
    try:
        padded = text + "=" * (-len(text) % 4)
        key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise SecretKeyError(f"{ENV_VAR} must be 32 bytes as 64 hex digits or base64") from None
    if len(key) != KEY_BYTES:
        raise SecretKeyError(f"{ENV_VAR} must decode to {KEY_BYTES} bytes, got {len(key)}")
    return key


def _read_key_file(path: Path) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise SecretKeyError(f"cannot open master key file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretKeyError(f"master key file {path} is not a regular file")
        loose = stat.S_IMODE(info.st_mode) & 0o077
        if loose:
            raise SecretKeyError(
                f"master key file {path} has permissions {stat.S_IMODE(info.st_mode):04o}; it must be "
                f"readable by its owner only — run: chmod 600 {path}"
            )
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        return parse_master_key(data.decode("ascii"))
    except (SecretKeyError, UnicodeDecodeError):
        raise SecretKeyError(f"master key file {path} does not hold a valid 32-byte key") from None


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = AESGCM.generate_key(bit_length=8 * KEY_BYTES)
    # Write a complete 0600 temp file, then link it into place: a concurrent starter either wins the
    # link or reads a finished key, never a half-written one.
    fd, tmp = tempfile.mkstemp(prefix=".master-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, base64.b64encode(key) + b"\n")
        os.fsync(fd)
        os.close(fd)
        fd = -1
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_master_key(data_dir: Path | None, environ: Mapping[str, str] | None = None) -> bytes:
    """The master key: FERRY_MASTER_KEY if set, else `<data_dir>/master.key`, created (0600) on first use."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_VAR)
    if raw:
        return parse_master_key(raw)
    if data_dir is None:
        raise SecretKeyError(f"no master key: set {ENV_VAR} or give a data directory for the key file")
    path = Path(data_dir) / KEY_FILE_NAME
    if not path.exists() and not path.is_symlink():
        _create_key_file(path)
    return _read_key_file(path)


class SecretBox:
    """Encrypts and decrypts secrets with one master key; tokens are `v1:<base64(kid|nonce|ciphertext)>`."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretKeyError(f"the master key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)
        # A short key id tells "encrypted under another master key" apart from corruption.
        self._kid = hashlib.sha256(b"ferry-kid\x00" + key).digest()[:_KID_BYTES]
        # Root of the keys derived for other purposes (the console's session cookie): the master key itself
        # only ever encrypts secrets, and a key derived for one purpose tells nothing of it or of the others.
        self._derive_root = hmac.new(b"ferry-derive", key, hashlib.sha256).digest()

    @classmethod
    def load(cls, data_dir: Path | None, environ: Mapping[str, str] | None = None) -> SecretBox:
        return cls(load_master_key(data_dir, environ))

    def __repr__(self) -> str:
        return f"SecretBox(kid={self._kid.hex()})"

    def derive_key(self, purpose: str) -> bytes:
        """A 32-byte key for `purpose` (HKDF-expand with SHA-256 over a root extracted from the master key)."""
        return hmac.new(self._derive_root, purpose.encode("utf-8") + b"\x01", hashlib.sha256).digest()
    def fingerprint(self) -> str:
        """An HMAC of a fixed label under the key (hex): equal for equal keys, and says nothing of the key. The
        processes of one cluster compare it (cluster_settings) so a worker with another key refuses to start."""
        return self.derive_key("master-key-fingerprint").hex()  # a purpose no key is derived for

    def encrypt(self, plaintext: str | Secret) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, reveal(plaintext).encode("utf-8"), _AAD)
        blob = base64.urlsafe_b64encode(self._kid + nonce + sealed).decode("ascii").rstrip("=")
        return f"{_VERSION}:{blob}"

    def decrypt(self, token: str) -> str:
        version, sep, blob = token.partition(":")
        if not sep or version != _VERSION:
            raise SecretDecryptError("unsupported secret token format")
        try:
            raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
        except (binascii.Error, ValueError):
            raise SecretDecryptError("secret token is not valid base64") from None
        if len(raw) < _KID_BYTES + _NONCE_BYTES + 16:
            raise SecretDecryptError("secret token is truncated")
        head = _KID_BYTES + _NONCE_BYTES
        kid, nonce, sealed = raw[:_KID_BYTES], raw[_KID_BYTES:head], raw[head:]
        if not hmac.compare_digest(kid, self._kid):
            raise SecretDecryptError("secret was encrypted with a different master key")
        try:
            return self._aead.decrypt(nonce, sealed, _AAD).decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise SecretDecryptError("secret token failed authentication (corrupted or tampered)") from None

    def seal(self, values: Mapping[str, str | Secret | None]) -> str:
        """One token of the non-empty fields of `values` (a task's keys); Secret values are revealed only into the
        cipher."""
        return self.encrypt(json.dumps({k: reveal(v) for k, v in values.items() if v}))

    def unseal(self, token: str) -> dict[str, str]:
        """The fields of a token made by `seal`."""
        return {k: str(v) for k, v in json.loads(self.decrypt(token)).items()}


_default_lock = threading.Lock()
_default_box: SecretBox | None = None
_default_dir: Path | None = None


def configure(data_dir: Path | None) -> SecretBox:
    """Choose the data directory whose key file `encrypt`/`decrypt` use (FERRY_MASTER_KEY still wins)."""
    global _default_box, _default_dir
    with _default_lock:
        _default_dir = data_dir
        _default_box = SecretBox.load(data_dir)
        return _default_box


def default_box() -> SecretBox:
    """The process-wide box: configured explicitly, else from FERRY_MASTER_KEY or the settings data dir."""
    global _default_box
    with _default_lock:
        if _default_box is None:
            data_dir = _default_dir
            if data_dir is None and not os.environ.get(ENV_VAR):
                from ferry import settings

                data_dir = settings.data_dir()
            _default_box = SecretBox.load(data_dir)
        return _default_box


def encrypt(plaintext: str | Secret) -> str:
    """Encrypt with the process-wide master key (see `default_box`)."""
    return default_box().encrypt(plaintext)


def decrypt(token: str) -> str:
    """Decrypt a token made by `encrypt` with the process-wide master key."""
    return default_box().decrypt(token)
