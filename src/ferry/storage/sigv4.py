"""AWS Signature Version 4 for S3-compatible requests: canonical request, string to sign, Authorization."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from functools import lru_cache
from urllib.parse import quote

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
ALGORITHM = "AWS4-HMAC-SHA256"


def quote_path(path: str) -> str:
    """Percent-encode an object path the way S3 expects in both the URL and the canonical request.

    S3 does not normalise paths, so every byte but the unreserved set and `/` is encoded exactly once.
    """
    return quote(path, safe="/~")


def wire_path(path: str) -> str:
    """An encoded path (see `quote_path`) as sent: each `.` or `..` segment percent-encoded (`%2E%2E`).

    S3 keeps such segments as part of the key, but a proxy or store that normalises paths would resolve them and
    write outside the key (or the bucket). Servers canonicalise the decoded path for SigV4 (dots stay dots), so
    the signature is computed over `path` itself, not over this.
    """
    if "." not in path:
        return path
    return "/".join("%2E" * len(seg) if seg in (".", "..") else seg for seg in path.split("/"))


def quote_param(value: str) -> str:
    """Percent-encode a query name or value (`/` included) as SigV4 requires."""
    return quote(value, safe="~")


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """The canonical (and, used as-is, the actual) query string: encoded pairs sorted by name then value."""
    return "&".join(f"{k}={v}" for k, v in sorted((quote_param(k), quote_param(v)) for k, v in params))


@lru_cache(maxsize=64)
def _signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    # One derivation per day/region/service: four HMACs that would otherwise run per request.
    k = hmac.new(("AWS4" + secret_key).encode(), date.encode(), hashlib.sha256).digest()
    k = hmac.new(k, region.encode(), hashlib.sha256).digest()
    k = hmac.new(k, service.encode(), hashlib.sha256).digest()
    return hmac.new(k, b"aws4_request", hashlib.sha256).digest()


_stamp_cache: tuple[int, str] = (0, "")


def amz_date(now: dt.datetime | None = None) -> str:
    """`YYYYMMDDTHHMMSSZ` for `x-amz-date`."""
    global _stamp_cache
    if now is not None:
        return now.strftime("%Y%m%dT%H%M%SZ")
    second = int(time.time())
    if _stamp_cache[0] != second:
        # Formatting costs more than the rest of a signature's header work; once a second is enough.
        _stamp_cache = (second, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second)))
    return _stamp_cache[1]


class SigV4Signer:
    """Signs requests for one access key, region and service; the secret never leaves this object."""

    __slots__ = ("_secret_key", "access_key", "region", "service")

    def __init__(self, access_key: str, secret_key: str, region: str, service: str = "s3") -> None:
        self.access_key = access_key
        self._secret_key = secret_key
        self.region = region
        self.service = service

    def __repr__(self) -> str:
        return f"SigV4Signer(access_key={self.access_key!r}, region={self.region!r})"

    def sign(
        self,
        method: str,
        host: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        *,
        payload_hash: str = UNSIGNED_PAYLOAD,
        timestamp: str | None = None,
    ) -> dict[str, str]:
        """Return `headers` plus `x-amz-date`, `x-amz-content-sha256` and `Authorization`.

        `path` must already be encoded (see `quote_path`) and `query` canonical (see `canonical_query`):
        the caller sends exactly those strings, so what is signed is what goes on the wire.
        `host` is the Host header value (with the port when it is not the scheme's default).
        """
        stamp = timestamp or amz_date()
        out = dict(headers)
        out["x-amz-date"] = stamp
        out["x-amz-content-sha256"] = payload_hash
        signed: dict[str, str] = {"host": host}
        for name, value in out.items():
            lname = name.lower()
            # Signing only host and x-amz-* (plus content-type/md5/range) keeps proxies that rewrite other
            # headers from breaking the signature, as the AWS SDKs do.
            if lname.startswith("x-amz-") or lname in _SIGNED_PLAIN_HEADERS:
                signed[lname] = " ".join(value.split()) if "  " in value or "\t" in value else value.strip()
        names = sorted(signed)
        signed_headers = ";".join(names)
        canonical_headers = "".join(f"{n}:{signed[n]}\n" for n in names)
        canonical_request = "\n".join(
            (method, path, query, canonical_headers, signed_headers, payload_hash)
        )
        date = stamp[:8]
        scope = f"{date}/{self.region}/{self.service}/aws4_request"
        string_to_sign = "\n".join(
            (ALGORITHM, stamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest())
        )
        key = _signing_key(self._secret_key, date, self.region, self.service)
        signature = hmac.digest(key, string_to_sign.encode(), "sha256").hex()
        out["Authorization"] = (
            f"{ALGORITHM} Credential={self.access_key}/{scope}, SignedHeaders={signed_headers}, "
            f"Signature={signature}"
        )
        return out


_SIGNED_PLAIN_HEADERS = frozenset({"content-type", "content-md5", "range", "date"})
