"""Backends under test for the conformance suite: memory, local directory, wrapped memory, S3 (SeaweedFS, moto),
Google Cloud Storage (gcp-storage-emulator) and Azure Blob (Azurite)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ferry.storage.base import Backend
from ferry.storage.local import LocalBackend
from ferry.storage.memory import MemoryBackend, MemoryStore
from ferry.storage.wrappers import BandwidthLimiter, RetryingBackend, ThrottledBackend

# Memory and local enforce a minimum part size like S3, but a small one keeps the multipart tests fast.
SMALL_PART = 16 * 1024
S3_BUCKETS = ("ferry-conformance-a", "ferry-conformance-b")


# Where SeaweedFS (the S3 server of the test suite) departs from S3, found by this suite. Tests named here
# are expected to fail on the S3 leg (strict xfail, so a SeaweedFS that fixes one shows up as XPASS).
# One more, too racy for a strict test: an object `a` PUT at the same moment as `a/b` can be lost (HEAD 404
# after a 200 PUT), and a child of such a name can vanish from listings; `put_all` in the suite avoids it.
SEAWEEDFS_QUIRKS = {
    "dir-marker-beside-object": "SeaweedFS keeps `a/` as the directory `a`: beside an object `a` it answers "
                                "409 ExistingObjectIsFile, or the object replaces the marker",
    "dir-marker-content": "SeaweedFS stores a key ending in `/` as a directory and drops its bytes",
    "backslash-key": "SeaweedFS turns `\\` in a key into `/`, so `a\\b` and `a/b` are one object",
    "part-reupload-listing": "SeaweedFS ListParts lists every upload of a part number, not the last one",
    "long-segment": "SeaweedFS refuses a key segment over 255 bytes (KeyTooLongError)",
    "path-like": "SeaweedFS refuses dot segments and rewrites `a//b` to `a/b` and `/x` to `x`",
}

MOTO_QUIRKS = {
    "key-length-limit": "moto accepts keys longer than 1024 bytes",
    "copy-if-match": "moto ignores x-amz-copy-source-if-match",
    "content-md5": "moto stores a PUT whose Content-MD5 does not match its bytes",
}


# Where the gcp-storage-emulator departs from Google's documented behaviour (tests/gcs_servers.py lists what it
# lacks; those parts are tested against FakeGcs in tests/integration/test_gcs.py).
GCS_EMULATOR_QUIRKS = {
    "copy-if-match": "the emulator ignores ifSourceGenerationMatch",
    "copy-replace-meta": "the emulator's rewrite (and copy) keeps the source's metadata, ignoring the one sent",
    "path-like": "the emulator drops the connection on a name with a `..` segment",
    "backslash-key": "the emulator turns `\\` in a name into `/`",
    "key-length-limit": "the emulator accepts names longer than Google's 1024 bytes",
}


class BackendFactory:
    """Makes backends of one kind that share a copy group: `make()` the main one, `make(other=True)` a second
    bucket (or directory), `make(sub="x/")` the same bucket under a further prefix. `quirks` names the
    contract points this kind's store is known to break, with the reason."""

    def __init__(
        self, kind: str, build: Callable[[bool, str], Backend], quirks: dict[str, str] | None = None
    ) -> None:
        self.kind = kind
        self._build = build
        self.quirks = quirks or {}
        self.made: list[Backend] = []

    def make(self, *, other: bool = False, sub: str = "") -> Backend:
        backend = self._build(other, sub)
        self.made.append(backend)
        return backend


def _s3_factory(request: pytest.FixtureRequest, fixture: str, profile: str, quirks: dict[str, str]) -> BackendFactory:
    try:
        server = request.getfixturevalue(fixture)
    except pytest.FixtureLookupError:
        pytest.skip(f"S3 leg: the session fixture `{fixture}` (tests/conftest.py) is not defined yet")
    from ferry.storage.registry import open_backend

    for bucket in S3_BUCKETS:
        server.create_bucket(bucket)
    # One bucket pair for the whole run (a new SeaweedFS bucket costs a volume allocation); a fresh
    # prefix per test keeps the tests apart.
    base = f"t-{uuid.uuid4().hex[:10]}/"

    def build(other: bool, sub: str) -> Backend:
        bucket = S3_BUCKETS[1] if other else S3_BUCKETS[0]
        return open_backend(
            f"s3://{bucket}/{base}{sub}", endpoint=server.endpoint, region="us-east-1",
            access_key=server.access_key, secret_key=server.secret_key, profile=profile,
        )

    return BackendFactory(request.param, build, quirks)


def _gcs_factory(request: pytest.FixtureRequest) -> BackendFactory:
    from ferry.storage.base import ListOrder
    from ferry.storage.gcs import GcsBackend
    from ferry.storage.profiles import get_profile

    server = request.getfixturevalue("gcs_emulator")
    for bucket in S3_BUCKETS:
        server.create_bucket(bucket)
    base = f"t-{uuid.uuid4().hex[:10]}/"
    # The emulator lists in the order objects were written, as a self-hosted store behind an operator's
    # endpoint override is assumed to (storage/stores.py).
    profile = get_profile("google").replace(list_order=ListOrder.UNORDERED)

    def build(other: bool, sub: str) -> Backend:
        bucket = S3_BUCKETS[1] if other else S3_BUCKETS[0]
        # The emulator serves one request at a time, closing each connection, with a listen backlog of 5: more
        # connects at once than that wait on SYN retries for seconds, so few are made and they may wait long.
        return GcsBackend(bucket, f"{base}{sub}", tokens=None, endpoint=server.endpoint, profile=profile,
                          copy_group=f"gcs:{server.endpoint}", connect_timeout=60.0, max_connections=4)

    return BackendFactory("gcs", build, GCS_EMULATOR_QUIRKS)


# Where Azure Blob (as Azurite emulates it) departs from S3.
AZURITE_QUIRKS = {
    "backslash-key": "Azure turns `\\` in a blob name into `/`, so `a\\b` and `a/b` are one blob",
    "part-reupload-listing": "a part sent twice with different bytes is two uncommitted blocks, and Get Block List "
                             "does not tell which is the later, so list_parts leaves such a part out",
}


def _azure_factory(request: pytest.FixtureRequest) -> BackendFactory:
    from ferry.storage.azure import AzureBackend
    from ferry.storage.azure_auth import account_credentials

    server = request.getfixturevalue("azurite")
    for container in S3_BUCKETS:
        server.create_bucket(container)
    creds = account_credentials(server.access_key, key=server.secret_key, endpoint=server.blob_endpoint)
    base = f"t-{uuid.uuid4().hex[:10]}/"
    return BackendFactory("azure", lambda other, sub: AzureBackend(
        creds, S3_BUCKETS[1] if other else S3_BUCKETS[0], f"{base}{sub}"), AZURITE_QUIRKS)


@pytest.fixture(params=["memory", "local", "wrapped", "s3", "s3-moto", "gcs", "azure"])
def backend_factory(request: pytest.FixtureRequest, tmp_path: Path) -> BackendFactory:
    kind: str = request.param
    if kind == "gcs":
        return _gcs_factory(request)
    if kind == "azure":
        return _azure_factory(request)
    if kind == "s3":
        return _s3_factory(request, "seaweed_a", "seaweedfs", SEAWEEDFS_QUIRKS)
    if kind == "s3-moto":
        # moto orders keys like AWS, so this leg checks the S3 backend's LEXICOGRAPHIC listings.
        return _s3_factory(request, "moto", "aws", MOTO_QUIRKS)
    if kind == "local":
        for bucket in ("a", "b"):
            (tmp_path / bucket).mkdir()
        return BackendFactory("local", lambda other, sub: LocalBackend(
            tmp_path / ("b" if other else "a"), sub, fsync=False, min_part_size=SMALL_PART,
        ))
    store = MemoryStore()

    def memory(other: bool, sub: str) -> Backend:
        return MemoryBackend(store, "b" if other else "a", sub, min_part_size=SMALL_PART)

    if kind == "memory":
        return BackendFactory("memory", memory)
    # The wrappers must be transparent: same name, capabilities, errors, and copy between wrapped backends.
    limiter = BandwidthLimiter(None)
    return BackendFactory(
        "wrapped", lambda other, sub: RetryingBackend(ThrottledBackend(memory(other, sub), limiter))
    )


@pytest.fixture
async def backend(backend_factory: BackendFactory) -> AsyncIterator[Backend]:
    yield backend_factory.make()
    for made in backend_factory.made:
        await made.close()

