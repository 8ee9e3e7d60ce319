"""Open a Backend from a URL-ish spec: `s3://bucket/prefix`, `gs://bucket/prefix` (Google Cloud Storage),
`azure://container/prefix`, `file:///path` or a plain path, `mem://bucket/prefix`.

The part after `bucket/` is a folder, as `aws s3 sync` and rclone read it: `s3://backup/all` and
`s3://backup/all/` both mean `all/` (keys are written as `all/<key>`, never glued on as `all<key>`), and a
source `s3://photos/docs` lists `docs/` only (not `docs2/`), its keys relative to it. The prefix is taken
verbatim (no percent-decoding: keys may contain `%`, `?` or `#`). `mem://` buckets live in process-wide
MemoryStores, so two specs naming one bucket see the same objects and can copy server-side.

A directory is written in Ferry's own layout (storage/local.py). Read as a source, a directory Ferry wrote
(it carries the layout's marker) is read in that layout, and any other directory as the plain tree of files it
is (storage/tree.py), keys being the files' relative paths.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ferry.errors import UsageError
from ferry.storage.base import Backend

if TYPE_CHECKING:
    from ferry.storage.azure import AzureBackend
    from ferry.storage.local import LocalBackend
    from ferry.storage.memory import MemoryBackend, MemoryStore
    from ferry.storage.tree import TreeBackend

__all__ = ["BackendSpec", "as_folder", "memory_store", "open_backend", "parse_spec", "reset_memory_stores"]

MAX_PREFIX_BYTES = 1024
_GENERIC_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")

_stores: dict[str, MemoryStore] = {}
_stores_lock = threading.Lock()


def memory_store(name: str = "default") -> MemoryStore:
    """The process-wide MemoryStore called `name` (created on first use); `mem://` specs use "default"."""
    from ferry.storage.memory import MemoryStore

    with _stores_lock:
        store = _stores.get(name)
        if store is None:
            store = _stores[name] = MemoryStore(name)
        return store


def reset_memory_stores() -> None:
    """Forget every process-wide MemoryStore (tests use this for isolation)."""
    with _stores_lock:
        _stores.clear()


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """A parsed spec: `scheme` is `s3`, `gs`, `azure`, `file` or `mem`; `path` is set for `file` only."""

    scheme: str
    bucket: str = ""
    prefix: str = ""
    path: str = ""


def as_folder(prefix: str) -> str:
    """A key prefix as the folder it names: `all` -> `all/` (`all/` and the empty prefix stay as they are)."""
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def _check_generic_bucket(bucket: str, spec: str) -> None:
    problem = None
    if not 3 <= len(bucket) <= 63:
        problem = f"it is {len(bucket)} characters; bucket names have 3 to 63"
    elif not _GENERIC_BUCKET.fullmatch(bucket):
        problem = "use lower-case letters, digits, dots and hyphens, starting and ending with a letter or digit"
    elif ".." in bucket:
        problem = "two dots in a row are not allowed"
    elif _IPV4.fullmatch(bucket):
        problem = "a bucket name must not look like an IP address"
    if problem:
        raise UsageError(f"invalid bucket name {bucket!r} in {spec!r}: {problem}")


def _check_prefix(prefix: str, spec: str) -> None:
    try:
        size = len(prefix.encode("utf-8"))
    except UnicodeEncodeError:
        raise UsageError(f"the prefix in {spec!r} is not valid UTF-8") from None
    if size > MAX_PREFIX_BYTES:
        raise UsageError(f"the prefix in {spec!r} is {size} bytes; keys, prefix included, have at most 1024")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in prefix):
        raise UsageError(f"the prefix in {spec!r} contains a control character; is that a paste accident?")


def _bucket_and_prefix(scheme: str, rest: str, spec: str) -> tuple[str, str]:
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise UsageError(f"{spec!r} names no bucket; write {scheme}://BUCKET or {scheme}://BUCKET/PREFIX")
    prefix = as_folder(prefix)
    _check_prefix(prefix, spec)
    return bucket, prefix


def parse_spec(spec: str) -> BackendSpec:
    """Split a spec into its parts; raises UsageError with the reason when it is malformed."""
    if not spec or not spec.strip():
        raise UsageError("an empty location; give s3://bucket/prefix, a directory, or mem://bucket")
    if "://" not in spec:
        return BackendSpec("file", path=os.path.expanduser(spec))
    scheme, rest = spec.split("://", 1)
    scheme = scheme.lower()
    if scheme in ("mem", "memory"):
        bucket, prefix = _bucket_and_prefix("mem", rest, spec)
        _check_generic_bucket(bucket, spec)
        return BackendSpec("mem", bucket, prefix)
    if scheme == "file":
        if rest.startswith("localhost/"):
            rest = rest[len("localhost"):]
        if not rest.startswith("/"):
            raise UsageError(
                f"{spec!r}: a file URL holds an absolute path, as in file:///data/dir (three slashes); "
                "or give the directory without file://"
            )
        return BackendSpec("file", path=rest)
    if scheme in ("s3", "gs"):
        bucket, prefix = _bucket_and_prefix(scheme, rest, spec)
        return BackendSpec(scheme, bucket, prefix)
    if scheme in ("azure", "az"):
        container, prefix = _bucket_and_prefix("azure", rest, spec)
        return BackendSpec("azure", container, prefix)
    raise UsageError(f"unsupported location {spec!r}: use s3://bucket/prefix, gs://bucket/prefix, "
                     "azure://container/prefix, file:///path, a path, or mem://bucket")


def _open_memory(parsed: BackendSpec) -> MemoryBackend:
    # Imported on use, like the other backends: a run between S3 stores never loads it.
    from ferry.storage.memory import MemoryBackend

    return MemoryBackend(memory_store(), parsed.bucket, parsed.prefix)


def _open_local(path: str, spec: str, source: bool) -> LocalBackend | TreeBackend:
    from ferry.storage.local import LocalBackend, is_ferry_layout

    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{spec!r} is a file; a local location must be a directory")
    if source and os.path.isdir(path) and not is_ferry_layout(path):
        from ferry.storage.tree import TreeBackend

        # The files a user has: each regular file an object, keyed by its relative path.
        return TreeBackend(path)
    # Writes create the directory; reads of a missing one fail (see LocalBackend._check_root).
    return LocalBackend(path, create=True)


def _open_google(parsed: BackendSpec, spec: str, endpoint: str | None, json_auth_file: str | None) -> Backend:
    from ferry.storage.base import ListOrder
    from ferry.storage.gcs import DEFAULT_ENDPOINT, GcsBackend
    from ferry.storage.gcs_auth import ServiceAccount, TokenSource
    from ferry.storage.profiles import get_profile

    profile = get_profile("google")
    profile.check_bucket(parsed.bucket)
    if endpoint is not None and not re.match(r"https?://[^/\s]+", endpoint):
        raise UsageError(f"endpoint {endpoint!r} must look like http://host:port or https://host")
    if not json_auth_file:
        raise UsageError(f"{spec!r} needs a service-account key file")
    try:
        with open(os.path.expanduser(json_auth_file), encoding="utf-8") as fh:
            text = fh.read(1024 * 1024)
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "it is not UTF-8 text"
        raise UsageError(f"cannot read the key file {json_auth_file}: {why}") from None
    account = ServiceAccount.parse(text, where=f"the key file {json_auth_file}")
    if endpoint is not None:
        # Some other server speaking Google's API (an emulator): its listing order is not vouched for.
        profile = profile.replace(list_order=ListOrder.UNORDERED)
    # The operator gave this key file, so its token_uri is trusted wherever it points.
    endpoint = endpoint or DEFAULT_ENDPOINT
    return GcsBackend(parsed.bucket, parsed.prefix, tokens=TokenSource(account), endpoint=endpoint, profile=profile,
                      copy_group=f"gcs:{endpoint}:{account.client_email}")


def _open_azure(parsed: BackendSpec, spec: str, endpoint: str | None, account: str | None, key: str | None,
                connection_string: str | None) -> AzureBackend:
    from ferry.storage.azure import AzureBackend
    from ferry.storage.azure_auth import account_credentials, parse_connection_string

    if connection_string:
        if account or key:
            raise UsageError(f"{spec!r}: give a connection string or an account name and key, not both")
        creds = parse_connection_string(connection_string)
    elif account and key:
        creds = account_credentials(account, key=key, endpoint=endpoint)
    else:
        raise UsageError(f"{spec!r} needs an account name and key, or a connection string")
    return AzureBackend(creds, parsed.bucket, parsed.prefix)


def open_backend(
    spec: str,
    *,
    endpoint: str | None = None,
    region: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    profile: str | None = None,
    json_auth_file: str | None = None,
    source: bool = False,
    connection_string: str | None = None,
) -> Backend:
    """The backend a spec names. `endpoint`, `region`, keys and `profile` apply to `s3://`; `endpoint` and
    `json_auth_file` (the path of a service-account key file) to `gs://`; for `azure://` the keys are the
    account name and key (or `connection_string` holds both) and `endpoint` is the blob service URL (the public
    cloud's by default). A directory read as a `source` is a plain tree of files unless Ferry wrote it in its
    own layout (`local.is_ferry_layout`)."""
    parsed = parse_spec(spec)
    if parsed.scheme == "mem":
        return _open_memory(parsed)
    if parsed.scheme == "file":
        return _open_local(parsed.path, spec, source)
    if parsed.scheme == "gs":
        return _open_google(parsed, spec, endpoint, json_auth_file)
    if parsed.scheme == "azure":
        return _open_azure(parsed, spec, endpoint, access_key, secret_key, connection_string)
    # The profile knows the provider's bucket rule (Tencent's name-APPID); without one, the S3 rule applies.
    from ferry.storage.profiles import get_profile

    if profile:
        get_profile(profile).check_bucket(parsed.bucket)
    else:
        _check_generic_bucket(parsed.bucket, spec)
    if endpoint is not None and not re.match(r"https?://[^/\s]+", endpoint):
        raise UsageError(f"endpoint {endpoint!r} must look like http://host:port or https://host")
    if not access_key or not secret_key:
        raise UsageError(f"{spec!r} needs both an access key and a secret key")
    # Imported here so that memory and local locations work without the S3 stack being importable.
    from ferry.storage.s3 import S3Backend

    backend: Backend = S3Backend(
        endpoint=endpoint, region=region, access_key=access_key, secret_key=secret_key,
        bucket=parsed.bucket, prefix=parsed.prefix, profile=profile or "s3",
    )
    return backend
