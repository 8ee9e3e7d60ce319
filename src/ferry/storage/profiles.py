"""S3-compatible providers as data: endpoints, addressing, CRC64 headers, storage classes, limits, quirks."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

from ferry.errors import UsageError
from ferry.storage.base import Capabilities, ListOrder

CANONICAL_CLASSES = ("STANDARD", "IA", "ARCHIVE", "DEEP_ARCHIVE")
ARCHIVE_CLASSES = frozenset({"ARCHIVE", "DEEP_ARCHIVE"})  # canonical classes that must be restored to read


@dataclass(frozen=True, slots=True)
class CloudRegion:
    """One region of a cloud: its id as that cloud spells it, and a human description."""

    id: str
    description: str


@dataclass(frozen=True, slots=True)
class Profile:
    """One provider's S3 dialect. Loaded from `profiles.json`; nothing here is provider code.

    - `endpoint_template`: host with `{region}`, e.g. `oss-{region}.aliyuncs.com`; None means the endpoint
      must be given (SeaweedFS, the generic profile).
    - `addressing`: `virtual` (bucket.host/key) or `path` (host/bucket/key).
    - `list_order`: what its ListObjects order is; stores we cannot vouch for are UNORDERED.
    - `list_version` 1 or 2 (ListObjects / ListObjectsV2); `list_url_encode`: send `encoding-type=url`.
    - `crc64_headers`: response headers carrying a CRC-64/ECMA, first found wins; `crc64_reported` says
      every object has one (not only those uploaded with it).
    - `to_vendor`: canonical class (STANDARD/IA/ARCHIVE/DEEP_ARCHIVE) -> the name to send;
      `from_vendor`: any name the provider reports (upper-cased) -> canonical.
    - `regions`: the cloud's regions, as the API lists them and accepts them without an endpoint override:
      for Huawei Cloud the OmsRegion ids the OMS SDK knows (oms-api.md §0), for the others their public
      region ids as their own SDKs spell them. Clouds without an S3 profile list theirs in `other_clouds`.
    - `bucket_pattern`/`bucket_hint`: the provider's bucket naming rule (Tencent: `name-APPID`).
    - `sse_header`/`sse_kms_value`/`sse_kms_key_header`: how a write asks for server-side encryption with a
      KMS key (and how the response confirms it).
    - `restore_call`: how an archived object is restored (storage/restore_calls.py): `s3` (POST ?restore with
      a RestoreRequest XML body), `bce` (POST ?restore, the days and tier in `x-bce-restore-*` headers, no
      body), `qiniu` (the native `restoreAr` call, Qiniu MAC-signed, at `restore_hosts[region]`); None when
      the cloud has no archive to restore from. `restore_status_headers`: HEAD headers saying how a restore
      stands (`ongoing-request="true"`), first found wins.
    - `region_aliases`: other spellings of a region id (a cloud's native zone ids, older names) -> the id.
    - `http_regions`: regions whose endpoint answers plain HTTP only (Baidu fwh, hkg).
    - `backend`: which code talks to the cloud (storage/stores.py); "s3" unless the cloud speaks something else.
    - `part_crc32c`: UploadPart verifies an `x-amz-checksum-crc32c` header and echoes it (seen on the store
      itself, not assumed: some stores refuse part checksums an upload was not created with).
    - `trailing_crc32c`: a streamed PUT (aws-chunked, STREAMING-UNSIGNED-PAYLOAD-TRAILER) is checked against
      the `x-amz-checksum-crc32c` trailer after its bytes, refused on a mismatch and echoed (seen on the
      store; sent without `Content-Encoding: aws-chunked`, which SeaweedFS would store as the object's).
      Asked for only under the CRC64 check: SeaweedFS hashes every aws-chunked body with SHA-256 as well
      (chunked_reader_v4.go, signed or not), about 0.55 CPU-s per GiB on its side.
    """

    name: str
    title: str
    endpoint_template: str | None
    default_region: str
    addressing: Literal["path", "virtual"]
    scheme: Literal["http", "https"]
    list_order: ListOrder
    list_version: int
    list_url_encode: bool
    crc64_headers: tuple[str, ...]
    crc64_reported: bool
    storage_class_header: str
    sse_header: str
    sse_kms_value: str
    sse_kms_key_header: str
    to_vendor: Mapping[str, str]
    from_vendor: Mapping[str, str]
    restore: bool
    restore_call: str | None
    restore_status_headers: tuple[str, ...]
    part_crc32c: bool
    trailing_crc32c: bool
    min_part_size: int
    max_part_size: int
    max_parts: int
    max_object_size: int
    max_key_bytes: int
    etag_is_md5: bool
    mtime_precision: float
    bucket_pattern: str
    bucket_hint: str
    aliases: tuple[str, ...] = field(default=())
    # The kind of code that talks to this cloud: "s3" for every S3 dialect here; other kinds (storage/stores.py)
    # use the profile for what is data all the same (regions, bucket rule, storage-class names).
    backend: str = "s3"
    regions: tuple[CloudRegion, ...] = field(default=())
    region_aliases: Mapping[str, str] = field(default_factory=dict)
    http_regions: frozenset[str] = field(default=frozenset())
    restore_hosts: Mapping[str, str] = field(default_factory=dict)

    def region_id(self, region: str | None) -> str:
        """The cloud's own id of `region` (an alias resolved; the default region when None)."""
        if not region:
            return self.default_region
        return self.region_aliases.get(region, self.region_aliases.get(region.lower(), region))

    def endpoint(self, region: str | None = None) -> str:
        """`scheme://host` for `region` (the profile's default region when None)."""
        if self.endpoint_template is None:
            raise UsageError(f"{self.title} needs an explicit endpoint")
        region = self.region_id(region)
        host = self.endpoint_template.format(region=region)
        return f"{'http' if region in self.http_regions else self.scheme}://{host}"

    def restore_host(self, region: str | None) -> str:
        """`scheme://host` of the native restore API of `region` (Qiniu's rs host), `*` being the fallback."""
        host = self.restore_hosts.get(self.region_id(region)) or self.restore_hosts.get("*")
        if host is None:
            raise UsageError(f"{self.title} has no restore API host for region {region!r}")
        return host if "://" in host else f"https://{host}"

    def vendor_class(self, canonical: str) -> str:
        """The storage-class name to send for a canonical class; other names pass through unchanged.

        Raises UsageError for a canonical class this provider does not offer.
        """
        upper = canonical.upper()
        if upper in self.to_vendor:
            return self.to_vendor[upper]
        if upper in CANONICAL_CLASSES:
            raise UsageError(f"{self.title} has no {upper} storage class")
        return canonical

    def storage_class_names(self) -> frozenset[str]:
        """Every class name a write may ask for: the canonical ones offered and the provider's own names."""
        return frozenset(self.to_vendor) | frozenset(self.to_vendor.values()) | frozenset(self.from_vendor)

    def canonical_class(self, vendor: str | None) -> str | None:
        """The canonical class of a reported name (None when absent); unknown names pass through."""
        if vendor is None:
            return None
        return self.from_vendor.get(vendor.upper().replace(" ", "_"), vendor)

    def check_bucket(self, bucket: str) -> None:
        """Raise UsageError when `bucket` breaks the provider's naming rule."""
        if not re.fullmatch(self.bucket_pattern, bucket):
            raise UsageError(f"invalid {self.title} bucket name {bucket!r}: {self.bucket_hint}")

    def bucket_name(self, name: str, app_id: str | None = None) -> str:
        """The bucket's full name: Tencent COS appends `-APPID` when `name` lacks it."""
        if app_id and not name.endswith(f"-{app_id}"):
            return f"{name}-{app_id}"
        return name

    def capabilities(self, copy_group: str | None = None) -> Capabilities:
        return Capabilities(
            list_order=self.list_order,
            copy_group=copy_group,
            multipart=True,
            min_part_size=self.min_part_size,
            max_part_size=self.max_part_size,
            max_parts=self.max_parts,
            max_object_size=self.max_object_size,
            etag_is_md5=self.etag_is_md5,
            crc64=self.crc64_reported,
            mtime_precision=self.mtime_precision,
            storage_classes=frozenset(self.to_vendor),
            restore=self.restore,
            max_key_bytes=self.max_key_bytes,
            part_crc32c=self.part_crc32c,
            trailing_crc32c=self.trailing_crc32c,
        )

    def replace(self, **changes: Any) -> Profile:
        """A copy with some fields changed (e.g. a private deployment's quirks)."""
        return dataclasses.replace(self, **changes)


def _build(name: str, raw: Mapping[str, Any], defaults: Mapping[str, Any]) -> Profile:
    merged = {**defaults, **raw}
    return Profile(
        name=name,
        title=merged.get("title", name),
        endpoint_template=merged["endpoint_template"],
        default_region=merged["default_region"],
        addressing=merged["addressing"],
        scheme=merged["scheme"],
        list_order=ListOrder(merged["list_order"]),
        list_version=int(merged["list_version"]),
        list_url_encode=bool(merged["list_url_encode"]),
        crc64_headers=tuple(h.lower() for h in merged["crc64_headers"]),
        crc64_reported=bool(merged["crc64_reported"]),
        storage_class_header=merged["storage_class_header"].lower(),
        sse_header=merged["sse_header"].lower(),
        sse_kms_value=merged["sse_kms_value"],
        sse_kms_key_header=merged["sse_kms_key_header"].lower(),
        to_vendor={k.upper(): v for k, v in merged["to_vendor"].items()},
        from_vendor={k.upper(): v for k, v in merged["from_vendor"].items()},
        restore=bool(merged["restore"]),
        restore_call=merged.get("restore_call", "s3") if merged["restore"] else None,
        restore_status_headers=tuple(h.lower() for h in merged["restore_status_headers"]),
        part_crc32c=bool(merged["part_crc32c"]),
        trailing_crc32c=bool(merged["trailing_crc32c"]),
        min_part_size=int(merged["min_part_size"]),
        max_part_size=int(merged["max_part_size"]),
        max_parts=int(merged["max_parts"]),
        max_object_size=int(merged["max_object_size"]),
        max_key_bytes=int(merged["max_key_bytes"]),
        etag_is_md5=bool(merged["etag_is_md5"]),
        mtime_precision=float(merged["mtime_precision"]),
        bucket_pattern=merged["bucket_pattern"],
        bucket_hint=merged["bucket_hint"],
        aliases=tuple(a.lower() for a in merged["aliases"]),
        backend=merged.get("backend", "s3"),
        regions=_regions(merged),
        region_aliases={**{k.lower(): v for k, v in merged.get("region_aliases", {}).items()},
                        **merged.get("region_aliases", {})},
        http_regions=frozenset(merged.get("http_regions", ())),
        restore_hosts=dict(merged.get("restore_hosts", {})),
    )


def _regions(raw: Mapping[str, Any]) -> tuple[CloudRegion, ...]:
    return tuple(CloudRegion(region_id, description) for region_id, description in raw.get("regions", ()))


@cache
def _data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resources.files("ferry.storage").joinpath("profiles.json").read_text("utf-8"))
    return data


@cache
def _table() -> tuple[dict[str, Profile], dict[str, str]]:
    data = _data()
    profiles = {name: _build(name, raw, data["defaults"]) for name, raw in data["profiles"].items()}
    lookup: dict[str, str] = {}
    for name, prof in profiles.items():
        for alias in (name, *prof.aliases):
            lookup[_norm(alias)] = name
    return profiles, lookup


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def get_profile(name: str) -> Profile:
    """The profile for a provider name or alias, case-insensitively: `AWS`, `Aliyun`, `HuaweiCloud`, `cos`...

    Raises UsageError for an unknown name.
    """
    profiles, lookup = _table()
    key = lookup.get(_norm(name))
    if key is None:
        raise UsageError(f"unknown S3 provider {name!r}; known: {', '.join(sorted(profiles))}")
    return profiles[key]


@cache
def cloud_regions(name: str) -> tuple[CloudRegion, ...]:
    """The regions of a cloud named like `get_profile` takes it, or of a cloud with no S3 profile yet
    (Azure, Google); empty for a name that is neither."""
    profiles, lookup = _table()
    key = lookup.get(_norm(name))
    if key is not None:
        return profiles[key].regions
    other = {_norm(n): raw for n, raw in _data()["other_clouds"].items() if isinstance(raw, dict)}
    return _regions(other.get(_norm(name), {}))

