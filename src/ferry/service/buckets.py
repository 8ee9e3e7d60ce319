"""Bucket helper operations (OMS §1.5) against a cloud with caller-supplied credentials: list buckets and
objects, find a bucket's region, check a prefix, validate a list file.

Every failure leaves as a `HelperError` carrying the OMS error code and HTTP status the API answers with;
messages are fixed texts (plus line numbers and field names), never credentials or store responses.
Where the OMS reference names no code, the code mirrors the TRF task-failure code of the same meaning
(TRF.0151 invalid source AK/SK -> OMS.0151, and so on); see `ferry.oms.Codes`.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit

from ferry.errors import FerryError, NotFoundError, SourceChangedError, TransientError, UsageError
from ferry.objects import ObjectInfo
from ferry.oms import LIST_FILE_MAX_BYTES, LIST_FILE_MAX_LINE, MAX_KEY_BYTES, CdnAuthType, CdnProtocol, Codes
from ferry.secrets import Secret
from ferry.service import endpoints
from ferry.service.cdn import CdnClient, etags_match, same_cloud
from ferry.storage.base import listing
from ferry.storage.cdn_signing import KEYED_TYPES, CdnCredentials, sign_url
from ferry.storage.cdn_source import CdnDomainError, load_allowed_hosts, parse_domain
from ferry.storage.profiles import get_profile
from ferry.storage.s3 import S3Backend, failure_detail, list_buckets
from ferry.storage.stores import StoreAt, StoreKeys, open_at

# The OMS docs give page_size 0..100; 0 would be a page that can never advance, so 1 is the floor.
MAX_PAGE_SIZE: Final = 100
_READ_CHUNK: Final = 1024 * 1024
# Objects show_cdn_info samples when the request names no keys; few, since each costs two round trips.
CDN_SAMPLE_KEYS: Final = 3
_CDN_CONCURRENCY: Final = 8
# Clouds whose buckets Ferry reaches through its S3 backend; the others have no backend yet.
_NO_BUCKETS: Final = frozenset({"azure", "google", "urlsource"})
# Clouds whose buckets only the task seam opens: of the helpers, only check_prefix (a sync task's access check).
_SEAM_ONLY: Final = frozenset({"azure"})


class HelperError(UsageError):
    """A helper operation failed; `oms_code`/`status` are what the API answers.

    A UsageError, so that anything which does not know these codes still answers 400, never 500.
    """

    def __init__(self, oms_code: str, message: str, *, status: int = 400, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.oms_code = oms_code
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class HelperSettings:
    """What the helpers may reach. None means: read the operator's environment on each call
    (FERRY_ENDPOINT_OVERRIDES, FERRY_CDN_ALLOWED_HOSTS), so a running server follows its configuration."""

    endpoint_overrides: Mapping[str, str] | None = None
    cdn_allowed_hosts: frozenset[str] | None = None
    # False: only the operator's endpoint table is used, never a public cloud (air-gapped deployments,
    # and test servers that must not reach the internet whatever a request names).
    public_endpoints: bool = True
    # Seconds for one request to a cloud; below the SDK's 60 s connect / 120 s read budget.
    timeout: float = 30.0

    def overrides(self) -> dict[str, str]:
        if self.endpoint_overrides is not None:
            return {k.lower(): v for k, v in self.endpoint_overrides.items()}
        return endpoints.load_overrides()

    def allowed_cdn_hosts(self) -> frozenset[str]:
        if self.cdn_allowed_hosts is not None:
            return frozenset(h.lower() for h in self.cdn_allowed_hosts)
        return load_allowed_hosts()


@dataclass(frozen=True)
class CloudAccess:
    """Credentials for one cloud account as a request supplied them (AK in clear, the rest as Secret)."""

    cloud_type: str
    ak: str | None = None
    sk: Secret | None = None
    app_id: str | None = None
    security_token: Secret | None = None
    # True for the destination side (check_url_source_list_file_format), which picks the error codes.
    destination: bool = field(default=False)


@dataclass(frozen=True)
class BucketRecord:
    """One row of a folder view: an object with its size, or a folder (size None)."""

    name: str
    size: int | None


@dataclass(frozen=True)
class ObjectPage:
    """One page of show_bucket_objects."""

    records: list[BucketRecord]
    next_page: bool
    next_marker: str | None


@dataclass(frozen=True)
class CdnSource:
    """The CDN a request wants objects fetched through."""

    domain: str
    protocol: CdnProtocol
    authentication_type: CdnAuthType = CdnAuthType.NONE
    authentication_key: Secret | None = None


@dataclass(frozen=True)
class CdnKeyCheck:
    """One key checked through the CDN: does the source have it, and does the CDN serve the same ETag."""

    key: str
    exists: bool
    etag_matching: bool


@dataclass(frozen=True)
class CdnReport:
    """The answer of show_cdn_info."""

    same_cloud: bool
    download_available: bool
    checked: list[CdnKeyCheck]


@dataclass(frozen=True)
class BucketRegion:
    """Where a bucket lives and whether Ferry can reach that region."""

    region: str
    supported: bool


# -- endpoints and backends ------------------------------------------------------------------------
def _cloud(access: CloudAccess) -> str:
    cloud = access.cloud_type.strip().lower()
    if cloud in _NO_BUCKETS:
        # Safe to name: the value is one of these three cloud names, in some letter case.
        raise HelperError(Codes.INVALID_PARAMETER,
                          f"{access.cloud_type} buckets are not supported by this server yet.")
    if cloud not in endpoints.CLOUD_PROFILES:
        raise HelperError(Codes.INVALID_PARAMETER, "cloud_type is not a supported cloud.")
    return cloud


def default_region(cloud: str, overrides: Mapping[str, str]) -> str:
    """The region for operations that name none (show_bucket_list, show_bucket_region).

    The cloud's default region, unless the operator mapped only other regions of this cloud: then the
    first of those (sorted), so a self-hosted deployment is asked instead of the public cloud.
    """
    profile = get_profile(endpoints.CLOUD_PROFILES[cloud])
    names = {cloud, "huaweicloud"} if cloud == "hec" else {cloud}
    mine = sorted(key.split("/", 1)[1] for key in overrides if key.split("/", 1)[0] in names)
    if not mine or profile.default_region.lower() in mine:
        return profile.default_region
    return mine[0]


def _endpoint(cloud: str, region: str, settings: HelperSettings) -> endpoints.Endpoint:
    try:
        ep = endpoints.resolve(cloud, region, settings.overrides())
    except UsageError:
        # resolve's texts quote the region as given; ours names the field only.
        raise HelperError(Codes.INVALID_PARAMETER, "The region is not valid for this cloud.") from None
    if not ep.from_override and not settings.public_endpoints:
        raise HelperError(Codes.REGION_UNSUPPORTED, "This region is not served by this deployment.")
    return ep


def _credentials(access: CloudAccess) -> tuple[str, str]:
    if not access.ak or not access.sk:
        raise HelperError(Codes.INVALID_PARAMETER, "ak and sk are required for this cloud type.")
    return access.ak, access.sk.reveal()


@contextlib.asynccontextmanager
async def _open(
    access: CloudAccess, region: str, bucket: str, settings: HelperSettings
) -> AsyncIterator[tuple[S3Backend, endpoints.Endpoint]]:
    cloud = _cloud(access)
    ak, sk = _credentials(access)
    ep = _endpoint(cloud, region, settings)
    profile = get_profile(ep.profile)
    name = profile.bucket_name(bucket, access.app_id)
    try:
        backend = S3Backend(
            ep.url, ep.region, ak, sk, name, profile=profile, connect_timeout=min(10.0, settings.timeout),
            read_timeout=settings.timeout, max_connections=8,
            security_token=access.security_token.reveal() if access.security_token else None,
        )
    except UsageError:
        raise HelperError(Codes.INVALID_PARAMETER, "The bucket name is not valid for this cloud.") from None
    try:
        with _mapped(access):
            yield backend, ep
    finally:
        await backend.close()


_AUTH_CODES: Final = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidSecurity",
    "TokenRefreshRequired", "InvalidClientTokenId",
})
_REGION_CODES: Final = frozenset({
    "AuthorizationHeaderMalformed", "PermanentRedirect", "IllegalLocationConstraintException",
})


def helper_error(exc: FerryError, *, destination: bool = False) -> HelperError:
    """Translate a storage failure into the helper error the API answers (pure; exposed for tests)."""
    if isinstance(exc, HelperError):
        return exc
    if isinstance(exc, TransientError):
        return HelperError(Codes.UNAVAILABLE, "The cloud is busy or failing. Retry later.", status=503,
                           retry_after=exc.retry_after)
    detail = failure_detail(exc)
    side = "destination" if destination else "source"
    if detail is None:
        if isinstance(exc, UsageError):
            return HelperError(Codes.INVALID_PARAMETER, f"The {side} location is not valid.")
        return HelperError(Codes.UNREACHABLE, f"The {side} cloud cannot be reached.")
    status, code = detail
    if code in _AUTH_CODES or status == 401:
        return HelperError(Codes.DST_AUTH if destination else Codes.SRC_AUTH,
                           f"The {side} AK/SK is invalid.")
    if code == "NoSuchBucket":
        return HelperError(Codes.DST_BUCKET if destination else Codes.SRC_BUCKET,
                           f"The {side} bucket does not exist.")
    if code in _REGION_CODES or status in (301, 307, 308):
        return HelperError(Codes.INVALID_PARAMETER, f"The {side} bucket is not in the given region.")
    if status == 403:
        return HelperError(Codes.DST_DENIED if destination else Codes.SRC_DENIED,
                           f"The {side} AK/SK has no permission for this operation.")
    return HelperError(Codes.UNREACHABLE, f"The {side} cloud answered HTTP {status}.")


@contextlib.contextmanager
def _mapped(access: CloudAccess) -> Iterator[None]:
    try:
        yield
    except FerryError as exc:
        # Raised without chaining: the storage message names buckets and keys, the API shows none of it.
        raise helper_error(exc, destination=access.destination) from None


# -- operations ----------------------------------------------------------------------------------------
async def show_bucket_list(access: CloudAccess, settings: HelperSettings) -> list[str]:
    """Names of the buckets the credentials can see."""
    cloud = _cloud(access)
    ak, sk = _credentials(access)
    overrides = settings.overrides()
    ep = _endpoint(cloud, default_region(cloud, overrides), settings)
    with _mapped(access):
        names = await list_buckets(
            ep.url, ep.region, ak, sk, profile=ep.profile, timeout=settings.timeout,
            security_token=access.security_token.reveal() if access.security_token else None,
        )
    return sorted(names)


async def show_bucket_objects(
    access: CloudAccess, region: str, bucket: str, folder: str, page_size: int, behind: str,
    settings: HelperSettings,
) -> ObjectPage:
    """One page of the folder view of `folder` (objects and sub-folders), after the name `behind`."""
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise HelperError(Codes.INVALID_PARAMETER, f"page_size must be 1 to {MAX_PAGE_SIZE}.")
    if folder and not folder.endswith("/"):
        raise HelperError(Codes.INVALID_PARAMETER, "file_path must end with '/'.")
    records: list[BucketRecord] = []
    async with _open(access, region, bucket, settings) as (backend, _ep):
        token: str | None = None
        start = behind or None
        # One record more than asked says whether a next page exists without another round trip later.
        while len(records) <= page_size:
            page = await backend.list_page(folder, delimiter="/", start_after=start, continuation=token,
                                           max_keys=page_size + 1 - len(records))
            rows = [BucketRecord(o.key, o.size) for o in page.objects if o.key != folder]
            # A store may roll the keys after a folder marker up into that folder again: drop it.
            rows += [BucketRecord(p, None) for p in page.prefixes if p != behind]
            records += sorted(rows, key=lambda r: r.name)
            if not page.truncated or not page.next_token or page.next_token == token:
                break
            token = page.next_token
        more = len(records) > page_size
    records = records[:page_size]
    return ObjectPage(records, more, records[-1].name if more and records else None)


async def show_bucket_region(access: CloudAccess, bucket: str, settings: HelperSettings) -> BucketRegion:
    """The region a bucket lives in (as the cloud's region id) and whether Ferry can reach it."""
    cloud = _cloud(access)
    overrides = settings.overrides()
    asked = default_region(cloud, overrides)
    async with _open(access, asked, bucket, settings) as (backend, ep):
        location = await backend.bucket_location()
    region = region_id(cloud, location, ep.region)
    try:
        supported = endpoints.resolve(cloud, region, overrides).from_override or settings.public_endpoints
    except UsageError:
        supported = False
    return BucketRegion(region, supported)


def region_id(cloud: str, location: str, asked: str) -> str:
    """A LocationConstraint as the cloud's region id: Aliyun says `oss-cn-hangzhou`, AWS says nothing for
    us-east-1 and `EU` for eu-west-1; a store that reports nothing is in the region it was asked in."""
    loc = location.strip()
    if cloud == "aws":
        return {"": "us-east-1", "EU": "eu-west-1"}.get(loc, loc)
    if cloud == "aliyun" and loc.startswith("oss-"):
        return loc[len("oss-"):]
    return loc or asked


async def check_prefix(
    access: CloudAccess, region: str, bucket: str, prefix: str, settings: HelperSettings
) -> bool:
    """Whether any object key in the bucket starts with `prefix`."""
    if access.cloud_type.strip().lower() in _SEAM_ONLY:
        return await _check_prefix_at(access, region, bucket, prefix, settings)
    async with _open(access, region, bucket, settings) as (backend, _ep):
        page = await backend.list_page(prefix, max_keys=1)
    return bool(page.objects or page.prefixes)


def check_source_cdn(source: CdnSource) -> None:
    """Refuse what a `source_cdn` cannot work with: no authentication_key for a type signed with one
    (OMS.1032: Alibaba and Tencent types, Azure's SAS), or a domain that is not `host[:port]` (OMS.0001).
    Qiniu and Kingsoft sign with the source AK/SK, which bucket sources always have."""
    kind = source.authentication_type.value
    if kind in KEYED_TYPES and not (source.authentication_key and source.authentication_key.reveal().strip()):
        raise HelperError(Codes.CDN_KEY, f"source_cdn.authentication_key is required for {kind}.")
    try:
        parse_domain(source.domain)
    except CdnDomainError as exc:
        raise HelperError(Codes.INVALID_PARAMETER, f"{exc}.") from None


def _cdn_signer(source: CdnSource, access: CloudAccess, bucket: str) -> Callable[[str], str]:
    creds = CdnCredentials(key=source.authentication_key.reveal() if source.authentication_key else None,
                           ak=access.ak, sk=access.sk.reveal() if access.sk else None, bucket=bucket)

    def sign(key: str) -> str:
        return sign_url(source.authentication_type.value, source.protocol.value, source.domain.strip(), key,
                        creds).target

    return sign


async def _check_prefix_at(
    access: CloudAccess, region: str, bucket: str, prefix: str, settings: HelperSettings
) -> bool:
    """`check_prefix` for a cloud not spoken as S3, opened through the seam every task uses (storage/stores.py)."""
    cloud = access.cloud_type.strip().lower()
    ep = _endpoint(cloud, region, settings)
    keys = StoreKeys(access.ak, access.sk.reveal() if access.sk else None)
    try:
        backend = open_at(StoreAt(ep.profile, ep.url, ep.region, bucket, "", ep.from_override), keys)
    except UsageError:
        raise HelperError(Codes.INVALID_PARAMETER, "The bucket name or keys are not valid for this cloud.") from None
    try:
        with _mapped(access):
            async for _ in listing(backend, prefix):
                return True
            return False
    finally:
        await backend.close()



async def show_cdn_info(
    access: CloudAccess, region: str, bucket: str, source: CdnSource, keys: list[str] | None,
    settings: HelperSettings,
) -> CdnReport:
    """Check that objects of the bucket download through the CDN with the source's ETags.

    `keys` empty or None: the first few objects of the bucket are sampled. The download is available
    when at least one checked key exists at the source and every existing one came back with a 2xx.
    """
    cloud = _cloud(access)
    check_source_cdn(source)
    host, port = parse_domain(source.domain)
    async with _open(access, region, bucket, settings) as (backend, _ep):
        client = CdnClient(source.protocol.value, host, port, _cdn_signer(source, access, backend.bucket),
                           settings.timeout)
        try:
            results = await _check_keys(backend, client, keys, settings)
        finally:
            await client.close()
    existing = [ok for chk, ok in results if chk.exists]
    return CdnReport(
        same_cloud=same_cloud(cloud, client.names),
        download_available=bool(existing) and all(existing),
        checked=[chk for chk, _ok in results],
    )


async def _check_keys(backend: S3Backend, client: CdnClient, keys: list[str] | None,
                      settings: HelperSettings) -> list[tuple[CdnKeyCheck, bool]]:
    # A listing first, also when keys are given: HEAD answers carry no error code, so a missing
    # bucket or a bad key would otherwise look like missing objects.
    page = await backend.list_page("", max_keys=CDN_SAMPLE_KEYS * 4)
    if not keys:
        keys = [o.key for o in page.objects if not o.key.endswith("/")][:CDN_SAMPLE_KEYS]
    try:
        reachable = await client.connect(settings.allowed_cdn_hosts())
    except CdnDomainError as exc:
        raise HelperError(Codes.INVALID_PARAMETER, f"{exc}.") from None
    gate = asyncio.Semaphore(_CDN_CONCURRENCY)

    async def check(key: str) -> tuple[CdnKeyCheck, bool]:
        async with gate:
            try:
                info = await backend.head(key)
            except NotFoundError:
                return CdnKeyCheck(key, False, False), False
            probe = await client.probe(key) if reachable else None
        ok = probe is not None and probe.ok
        return CdnKeyCheck(key, True, ok and etags_match(info.etag, probe.etag if probe else None)), ok

    return list(await asyncio.gather(*(check(k) for k in dict.fromkeys(keys))))


async def check_list_file(
    access: CloudAccess, region: str, bucket: str, key: str, settings: HelperSettings
) -> None:
    """Validate an object-list or URL-list file (§3.10); HelperError says what is wrong, and where.

    The file is read in 1 MiB ranges pinned to its ETag, so memory stays bounded up to the 100 MB limit.
    """
    if not key.lower().endswith(".txt"):
        raise HelperError(Codes.LIST_TOO_BIG, "The list file must be a .txt file.")
    async with _open(access, region, bucket, settings) as (backend, _ep):
        try:
            info = await _head_with_reason(backend, key)
        except NotFoundError:
            raise HelperError(Codes.LIST_MISSING, "The list file does not exist or cannot be read.") from None
        meta = info.meta
        content_type = (meta.content_type if meta else None) or ""
        if content_type.split(";", 1)[0].strip().lower() != "text/plain" or (meta and meta.content_encoding):
            raise HelperError(Codes.LIST_CONTENT_TYPE,
                              "The list file must have Content-Type text/plain and no Content-Encoding.")
        if info.size > LIST_FILE_MAX_BYTES:
            raise HelperError(Codes.LIST_TOO_BIG, "The list file must be at most 100 MB.")
        if info.size == 0:
            raise HelperError(Codes.LIST_EMPTY, "The list file is empty.")
        checker = ListFileChecker()
        offset = 0
        while offset < info.size:
            length = min(_READ_CHUNK, info.size - offset)
            try:
                chunk = await backend.read(key, offset=offset, length=length, if_match=info.etag)
            except (NotFoundError, SourceChangedError):
                raise HelperError(Codes.LIST_MISSING, "The list file changed while it was read.") from None
            if not chunk:
                break
            checker.feed(chunk)
            offset += len(chunk)
        checker.finish()


async def _head_with_reason(backend: S3Backend, key: str) -> ObjectInfo:
    """HEAD, but when it fails without an error code (HEAD answers have no body), ask again with a
    one-byte GET, whose body names the reason: a bad key and a missing permission both look like 403."""
    try:
        return await backend.head(key)
    except FerryError as exc:
        detail = failure_detail(exc)
        if detail is None or detail[1] is not None or isinstance(exc, NotFoundError):
            raise
        first = exc
    await backend.read(key, length=1)
    raise first


_URL_RE: Final = re.compile(r"^https?://[^\s/?#]+[^\s]*$", re.IGNORECASE)


class ListFileChecker:
    """Incremental validator of a list file: UTF-8 without BOM, lines of at most 65535 characters, every
    non-blank line in one format, chosen by the first one:

    - URL list: `URL[<TAB>destination key]` (URL encoded, http or https; key URL-encoded, at most 1024 bytes,
      by default the URL's path);
    - object list: one URL-encoded object key per line (no raw spaces or tabs, at most 1024 bytes decoded).
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self._pending = ""
        self._line = 0
        self._entries = 0
        self._first = True
        self._kind: Callable[[str], str | None] | None = None

    def feed(self, data: bytes) -> None:
        try:
            text = self._decoder.decode(data)
        except UnicodeDecodeError:
            raise self._fail(Codes.LIST_FORMAT, "is not UTF-8 text", self._line + 1) from None
        if self._first and text:
            if text.startswith("\ufeff"):
                raise self._fail(Codes.LIST_FORMAT, "starts with a byte-order mark; save as UTF-8 without BOM", 1)
            self._first = False
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._check(line)
        if len(self._pending) > LIST_FILE_MAX_LINE + 1:
            raise self._fail(Codes.LIST_LINE_TOO_LONG, f"is longer than {LIST_FILE_MAX_LINE} characters",
                             self._line + 1)

    def finish(self) -> None:
        try:
            self._pending += self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise self._fail(Codes.LIST_FORMAT, "is not UTF-8 text", self._line + 1) from None
        if self._pending:
            self._check(self._pending)
            self._pending = ""
        if self._entries == 0:
            raise HelperError(Codes.LIST_EMPTY, "The list file has no entries.")

    def _check(self, raw: str) -> None:
        self._line += 1
        line = raw[:-1] if raw.endswith("\r") else raw
        if len(line) > LIST_FILE_MAX_LINE:
            raise self._fail(Codes.LIST_LINE_TOO_LONG, f"is longer than {LIST_FILE_MAX_LINE} characters", self._line)
        if not line:
            return  # blank lines (a trailing newline above all) carry nothing
        if self._kind is None:
            # An object list's keys are URL-encoded, so a raw tab or "http(s)://" only starts a URL list.
            self._kind = _url_line if "\t" in line or _URL_RE.match(line) else _object_line
        problem = self._kind(line)
        if problem:
            raise self._fail(Codes.LIST_FORMAT, problem, self._line)
        self._entries += 1

    @staticmethod
    def _fail(code: str, problem: str, line: int) -> HelperError:
        return HelperError(code, f"The list file is invalid: line {line} {problem}.")


def _decoded_key_problem(encoded: str) -> str | None:
    try:
        key = unquote(encoded, errors="strict")
    except UnicodeDecodeError:
        return "has a key whose URL encoding is not UTF-8"
    if not key:
        return "has an empty key"
    if len(key.encode()) > MAX_KEY_BYTES:
        return "has a key longer than 1024 bytes"
    return None


def _url_line(line: str) -> str | None:
    parts = line.split("\t")
    if len(parts) > 2:
        return "is not URL<TAB>destination key"
    url = parts[0]
    if not _URL_RE.match(url):
        return "has no valid, URL-encoded http(s) URL"
    parsed = urlsplit(url)
    if not parsed.hostname:
        return "has a URL without a host"
    # Without a destination key the object is named after the URL's path.
    key = parts[1] if len(parts) == 2 else parsed.path.lstrip("/")
    if any(ch.isspace() for ch in key):
        return "has white space in the destination key; URL-encode it"
    return _decoded_key_problem(key)


def _object_line(line: str) -> str | None:
    if "\t" in line:
        return "has a tab, but the first line is an object-list line"
    if any(ch.isspace() for ch in line):
        return "has white space; object keys must be URL-encoded"
    return _decoded_key_problem(line)
