"""Signed download URLs for the 11 `source_cdn.authentication_type`s: one table of pure functions.

Each type is a recipe from its vendor's documentation (shared/sources-and-scale.md §A has the sources and the
worked examples the unit tests pin): Alibaba Cloud CDN URL signing types A/B/C (`ALIYUN_OSS_A..C`), Tencent
Cloud CDN TypeA-D (`TENCENT_COS_A..D`; the same three algorithms as Alibaba's, plus D), a Qiniu private-bucket
download token and a Kingsoft KS3 query-string signature (both with the source bucket's AK/SK, since OMS asks
for no key there), an Azure SAS token appended as given, and NONE.

Decisions where the documents leave room (README, "CDN mode"):
- the path signed is the path as sent, percent-encoded (`/` and `~` kept), so keys with spaces or non-ASCII
  characters sign what the CDN receives, as Tencent documents ("encode first");
- Alibaba type C uses its path form (`/{md5}/{hex time}/path`) with lower-case hex, as Alibaba's demo does;
- the time signed is the signing time for types A-D (the CDN adds the TTL configured in its console), a
  deadline `ttl` seconds ahead for Qiniu (`e`) and Kingsoft (`Expires`);
- the random part of type A is a UUID4 in hex, as Alibaba recommends; the uid is `0`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Final
from urllib.parse import quote

__all__ = [
    "AUTH_TYPES",
    "KEYED_TYPES",
    "SOURCE_KEYED_TYPES",
    "CdnCredentials",
    "SignedUrl",
    "sign_url",
    "url_path",
]

# Alibaba's and Tencent's type B stamps are wall-clock minutes in China Standard Time, whatever the signer's zone.
CHINA: Final = timezone(timedelta(hours=8))
DEFAULT_TTL: Final = 3600


@dataclass(frozen=True)
class CdnCredentials:
    """What signing may use: the task's `authentication_key` (an Alibaba/Tencent signing key or an Azure SAS
    token) and the source bucket's AK/SK and name (Qiniu, Kingsoft). Never shown."""

    key: str | None = None
    ak: str | None = None
    sk: str | None = None
    bucket: str = ""

    def __repr__(self) -> str:
        given = [n for n in ("key", "ak", "sk") if getattr(self, n)]
        return f"CdnCredentials(<{', '.join(given) or 'none'} given>, bucket={self.bucket!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class SignedUrl:
    """A request target (`/path?query`, percent-encoded) for the CDN's origin `scheme://domain`."""

    scheme: str
    domain: str
    target: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.domain}{self.target}"


def url_path(key: str) -> str:
    """The URL path of an object key: `/` and the key percent-encoded once (`/` and `~` kept)."""
    return "/" + quote(key, safe="/~")


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class _Ctx:
    scheme: str
    domain: str
    path: str  # percent-encoded, starting with `/`
    creds: CdnCredentials
    now: int
    ttl: int
    rand: str


def _need_key(ctx: _Ctx) -> str:
    if not ctx.creds.key:
        raise ValueError("this authentication type needs an authentication key")
    return ctx.creds.key


def _need_aksk(ctx: _Ctx) -> tuple[str, str]:
    if not ctx.creds.ak or not ctx.creds.sk:
        raise ValueError("this authentication type signs with the source bucket's AK/SK")
    return ctx.creds.ak, ctx.creds.sk


def _none(ctx: _Ctx) -> str:
    return ctx.path


def _type_a(param: str) -> Callable[[_Ctx], str]:
    # sign = {ts}-{rand}-{uid}-md5("{uri}-{ts}-{rand}-{uid}-{key}"), decimal Unix seconds (Alibaba A, Tencent A).
    def sign(ctx: _Ctx) -> str:
        digest = _md5(f"{ctx.path}-{ctx.now}-{ctx.rand}-0-{_need_key(ctx)}")
        return f"{ctx.path}?{param}={ctx.now}-{ctx.rand}-0-{digest}"
    return sign


def _type_b(ctx: _Ctx) -> str:
    # /{YYYYMMDDHHMM in UTC+8}/md5(key + stamp + uri)/path (Alibaba B, Tencent B).
    stamp = datetime.fromtimestamp(ctx.now, CHINA).strftime("%Y%m%d%H%M")
    return f"/{stamp}/{_md5(_need_key(ctx) + stamp + ctx.path)}{ctx.path}"


def _type_c(ctx: _Ctx) -> str:
    # /md5(key + uri + hex ts)/{hex ts}/path (Alibaba C path form, Tencent C).
    stamp = f"{ctx.now:x}"
    return f"/{_md5(_need_key(ctx) + ctx.path + stamp)}/{stamp}{ctx.path}"


def _tencent_d(ctx: _Ctx) -> str:
    # path?sign=md5(key + uri + ts)&t=ts, decimal Unix seconds (the console's default).
    return f"{ctx.path}?sign={_md5(_need_key(ctx) + ctx.path + str(ctx.now))}&t={ctx.now}"


def qiniu_token(url: str, ak: str, sk: str) -> str:
    """`AK:urlsafe_base64(HMAC-SHA1(SK, url))`, the download token over the whole URL (scheme and host too)."""
    sign = hmac.new(sk.encode(), url.encode("utf-8"), hashlib.sha1).digest()
    return f"{ak}:{base64.urlsafe_b64encode(sign).decode('ascii')}"


def _qiniu(ctx: _Ctx) -> str:
    ak, sk = _need_aksk(ctx)
    base = f"{ctx.path}?e={ctx.now + ctx.ttl}"
    return f"{base}&token={qiniu_token(f'{ctx.scheme}://{ctx.domain}{base}', ak, sk)}"


def kingsoft_signature(sk: str, expires: int, resource: str) -> str:
    """base64(HMAC-SHA1(SK, "GET\\n\\n\\n{Expires}\\n{resource}")): KS3's S3-v2 style query signature."""
    to_sign = f"GET\n\n\n{expires}\n{resource}"
    return base64.b64encode(hmac.new(sk.encode(), to_sign.encode("utf-8"), hashlib.sha1).digest()).decode("ascii")


def _kingsoft(ctx: _Ctx) -> str:
    ak, sk = _need_aksk(ctx)
    expires = ctx.now + ctx.ttl
    signature = kingsoft_signature(sk, expires, f"/{ctx.creds.bucket}{ctx.path}")
    return (f"{ctx.path}?KSSAccessKeyId={quote(ak, safe='')}&Expires={expires}"
            f"&Signature={quote(signature, safe='')}")


def _azure(ctx: _Ctx) -> str:
    # The client never signs: the SAS token the user gave is the query, a leading `?` tolerated.
    token = _need_key(ctx).strip().lstrip("?")
    return f"{ctx.path}?{token}" if token else ctx.path


_SIGNERS: Final[Mapping[str, Callable[[_Ctx], str]]] = {
    "NONE": _none,
    "ALIYUN_OSS_A": _type_a("auth_key"),
    "ALIYUN_OSS_B": _type_b,
    "ALIYUN_OSS_C": _type_c,
    "TENCENT_COS_A": _type_a("sign"),
    "TENCENT_COS_B": _type_b,
    "TENCENT_COS_C": _type_c,
    "TENCENT_COS_D": _tencent_d,
    "QINIU_PRIVATE_AUTHENTICATION": _qiniu,
    "KSYUN_PRIVATE_AUTHENTICATION": _kingsoft,
    "AZURE_SAS_TOKEN": _azure,
}
AUTH_TYPES: Final = frozenset(_SIGNERS)
# Types signed with `authentication_key` (required), and types signed with the source bucket's AK/SK.
KEYED_TYPES: Final = frozenset({"ALIYUN_OSS_A", "ALIYUN_OSS_B", "ALIYUN_OSS_C", "TENCENT_COS_A", "TENCENT_COS_B",
                                "TENCENT_COS_C", "TENCENT_COS_D", "AZURE_SAS_TOKEN"})
SOURCE_KEYED_TYPES: Final = frozenset({"QINIU_PRIVATE_AUTHENTICATION", "KSYUN_PRIVATE_AUTHENTICATION"})


def sign_url(kind: str, scheme: str, domain: str, key: str, creds: CdnCredentials, *, now: float | None = None,
             ttl: int = DEFAULT_TTL, rand: str | None = None) -> SignedUrl:
    """The URL that fetches object `key` through `scheme://domain` under authentication type `kind`, signed at
    `now` (default: the clock); ValueError for an unknown type or missing signing material."""
    signer = _SIGNERS.get(kind)
    if signer is None:
        raise ValueError("unknown CDN authentication type")
    ctx = _Ctx(scheme, domain, url_path(key), creds, int(time.time() if now is None else now), ttl,
               uuid.uuid4().hex if rand is None else rand)
    return SignedUrl(scheme, domain, signer(ctx))

