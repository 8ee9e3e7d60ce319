"""Where each cloud's buckets live: the public endpoint table, the operator's overrides, and the SSRF guard.

`FERRY_ENDPOINT_OVERRIDES` is a JSON object mapping `"CloudType/region"` to an endpoint URL, e.g.
`{"HuaweiCloud/cn-north-4": "http://127.0.0.1:9000"}`; an entry wins over the built-in table. Loopback,
private, link-local and other non-public addresses are refused unless they come from that operator-set table,
so an API caller cannot point Ferry at internal services by choosing a region.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from ferry.errors import UsageError
from ferry.storage.netguard import is_public_host as is_public_host  # the names of the table need no lookup
from ferry.storage.profiles import get_profile

# OMS cloud type (any case) -> storage profile (whose `backend` says which code talks to it).
CLOUD_PROFILES: dict[str, str] = {
    "aws": "aws",
    "aliyun": "aliyun",
    "tencent": "tencent",
    "huaweicloud": "huaweicloud",
    "hec": "huaweicloud",
    "qingcloud": "qingcloud",
    "kingsoftcloud": "kingsoftcloud",
    "baidu": "baidu",
    "qiniu": "qiniu",
    "ucloud": "ucloud",
    "google": "google",
    "azure": "azure",
}
_REGION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A resolved store location: the URL to talk to and the profile that describes the cloud's quirks."""

    url: str
    profile: str
    region: str
    from_override: bool


def load_overrides(raw: str | None = None) -> dict[str, str]:
    """The operator's table, keyed by lower-cased `cloud/region`; a malformed table is a startup error."""
    text = os.environ.get("FERRY_ENDPOINT_OVERRIDES", "") if raw is None else raw
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"FERRY_ENDPOINT_OVERRIDES is not valid JSON ({exc.msg} at character {exc.pos}); write "
                         '{"Cloud/region": "http://host:port", ...} with double quotes') from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise UsageError('FERRY_ENDPOINT_OVERRIDES must be a JSON object of "Cloud/region": "URL" strings')
    out: dict[str, str] = {}
    for key, url in data.items():
        if "/" not in key or not re.match(r"^https?://[^/\s]+", url):
            # The value is echoed unless it could hold a user:password.
            shown = f"{url!r} is not" if "@" not in url else "the URL is not"
            raise UsageError(f"FERRY_ENDPOINT_OVERRIDES entry {key!r}: {shown} \"http(s)://host[:port]\" "
                             "(keys are \"Cloud/region\")")
        out[key.lower()] = url.rstrip("/")
    return out


def resolve(cloud_type: str, region: str, overrides: dict[str, str] | None = None) -> Endpoint:
    """The endpoint of `cloud_type` in `region`; UsageError for unknown clouds, bad regions or refused hosts."""
    cloud = (cloud_type or "").strip().lower()
    profile = CLOUD_PROFILES.get(cloud)
    if profile is None:
        raise UsageError(f"cloud type {cloud_type!r} is not supported for object storage yet")
    if not _REGION.match(region or ""):
        raise UsageError(f"region {region!r} is not a valid region name")
    table = load_overrides() if overrides is None else overrides
    url = table.get(f"{cloud}/{region.lower()}")
    if url is None and cloud == "hec":
        url = table.get(f"huaweicloud/{region.lower()}")
    if url is not None:
        return Endpoint(url, profile, region, True)
    prof = get_profile(profile)
    region = prof.region_id(region)  # a native or older spelling (Qiniu's z0, KS3's BEIJING) -> the id
    url = prof.endpoint(region)
    if not url.startswith(("http://", "https://")):
        url = f"{prof.scheme}://{url}"
    host = urlsplit(url).hostname or ""
    if not is_public_host(host):
        raise UsageError(f"endpoint for {cloud_type}/{region} is not a public address")
    return Endpoint(url, profile, region, False)


def resolve_known(cloud_type: str, region: str, overrides: dict[str, str] | None = None) -> Endpoint:
    """`resolve`, and outside the operator's table the region must be one the cloud really has (else the
    "endpoint" would be a made-up host name, failing only later and obscurely)."""
    ep = resolve(cloud_type, region, overrides)
    known = {r.id for r in get_profile(ep.profile).regions}
    if not ep.from_override and known and ep.region not in known:
        raise UsageError(f"{region!r} is not a region of {cloud_type}")
    return ep
