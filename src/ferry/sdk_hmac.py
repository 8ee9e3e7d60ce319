"""Huawei Cloud SDK-HMAC-SHA256 request signing: the canonical form both our verifier and our clients use."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final
from urllib.parse import parse_qsl, quote, unquote

ALGORITHM: Final = "SDK-HMAC-SHA256"
DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"
EMPTY_SHA256: Final = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _encode(segment: str) -> str:
    return quote(segment, safe="~")


def canonical_uri(raw_path: str) -> str:
    """Decode, re-encode each segment keeping only unreserved characters, end with '/' (as the SDK does)."""
    path = "/".join(_encode(part) for part in unquote(raw_path).split("/"))
    return path if path.endswith("/") else path + "/"


def canonical_query(query_string: str) -> str:
    """Pairs sorted by name then value, each side encoded like the path; '' when there is no query."""
    pairs = sorted(parse_qsl(query_string, keep_blank_values=True))
    return "&".join(f"{_encode(name)}={_encode(value)}" for name, value in pairs)


def string_to_sign(sdk_date: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{sdk_date}\n{digest}"


def sign(secret_key: str, text: str) -> str:
    return hmac.new(secret_key.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).hexdigest()


def signed_headers(access_key: str, secret_key: str, method: str, host: str, path: str, query: str = "",
                   body: bytes = b"", headers: Mapping[str, str] | None = None,
                   now: datetime | None = None) -> dict[str, str]:
    """Headers for a request signed as huaweicloudsdkcore signs it: every header given, plus host and date."""
    date = (now or datetime.now(UTC)).astimezone(UTC).strftime(DATE_FORMAT)
    out = {name.lower(): value for name, value in (headers or {}).items()}
    out.update({"host": host, "x-sdk-date": date})
    names = sorted(out)
    canonical = "\n".join([
        method.upper(), canonical_uri(path), canonical_query(query),
        "".join(f"{name}:{out[name].strip()}\n" for name in names), ";".join(names),
        hashlib.sha256(body).hexdigest(),
    ])
    signature = sign(secret_key, string_to_sign(date, canonical))
    out["authorization"] = f"{ALGORITHM} Access={access_key}, SignedHeaders={';'.join(names)}, Signature={signature}"
    return out
