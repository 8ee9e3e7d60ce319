"""Azure Blob credentials: SharedKey signing, SAS tokens, and connection strings parsed strictly."""

from __future__ import annotations

import base64
import binascii
import email.utils
import hmac
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cmp_to_key, lru_cache
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from ferry.errors import UsageError

API_VERSION = "2023-11-03"  # has the Cold tier and Set Blob Tier's x-ms-rehydrate-priority
DEFAULT_SUFFIX = "core.windows.net"
# Azurite's well-known development account (public, documented by Microsoft; not a secret).
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DEV_BLOB_ENDPOINT = "http://127.0.0.1:10000/devstoreaccount1"

_ACCOUNT_RE = re.compile(r"[a-z0-9]{3,24}|devstoreaccount1")
# Every key a storage connection string may hold (Azure portal, Storage Explorer, Azurite docs).
_CONN_KEYS = frozenset({
    "defaultendpointsprotocol", "accountname", "accountkey", "endpointsuffix", "blobendpoint", "queueendpoint",
    "tableendpoint", "fileendpoint", "sharedaccesssignature", "usedevelopmentstorage", "developmentstorageproxyuri",
    "blobsecondaryendpoint", "queuesecondaryendpoint", "tablesecondaryendpoint", "filesecondaryendpoint",
})


@dataclass(frozen=True, slots=True)
class AzureCredentials:
    """Where one storage account is and how to authenticate to it: an account key (SharedKey) or a SAS token.

    `endpoint` is the blob service URL: `https://{account}.blob.core.windows.net`, or a path-style one such as
    Azurite's `http://127.0.0.1:10000/devstoreaccount1`. The key and token never show in repr."""

    account: str
    endpoint: str
    key: bytes | None = field(default=None, repr=False)
    sas: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.key is None) == (self.sas is None):
            raise UsageError("Azure needs either an account key or a SAS token")


def _decode_key(key: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw:
        raise UsageError(f"{what} is not a base64 Azure account key")
    return raw


def _check_account(account: str) -> str:
    if not _ACCOUNT_RE.fullmatch(account):
        raise UsageError(f"invalid Azure storage account name {account!r}: 3-24 lower-case letters and digits")
    return account


def _check_endpoint(endpoint: str, what: str) -> str:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password \
            or parts.query or parts.fragment:
        # Not echoed: a malformed endpoint may hold a credential.
        raise UsageError(f"{what} must look like https://account.blob.core.windows.net (no credentials, no query)")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _clean_sas(sas: str) -> str:
    token = sas.strip().lstrip("?")
    if not token or "sig=" not in token or any(ch.isspace() for ch in token):
        raise UsageError("the SAS token is malformed: expected the query string of a SAS URL, with sig=")
    return token


def account_credentials(account: str, *, key: str | None = None, sas: str | None = None,
                        endpoint: str | None = None) -> AzureCredentials:
    """Credentials from an account name (`ak` in OMS) with its key (`sk`) or a SAS token; the endpoint defaults
    to the public cloud's."""
    _check_account(account)
    ep = _check_endpoint(endpoint, "the Azure endpoint") if endpoint else f"https://{account}.blob.{DEFAULT_SUFFIX}"
    if key is not None and sas is not None:
        raise UsageError("give either an Azure account key or a SAS token, not both")
    return AzureCredentials(account, ep, key=_decode_key(key, "the account key") if key is not None else None,
                            sas=_clean_sas(sas) if sas is not None else None)


def parse_connection_string(text: str) -> AzureCredentials:
    """Credentials from a storage connection string (`AccountName=..;AccountKey=..;EndpointSuffix=..`,
    `BlobEndpoint=..;SharedAccessSignature=..`, or `UseDevelopmentStorage=true`).

    Strict: every part is `Name=value`, names are known and given once, the account key is base64. A malformed
    string is a UsageError that names what is wrong and never quotes a value."""
    fields: dict[str, str] = {}
    for n, part in enumerate(text.strip().split(";"), 1):
        if not part.strip():
            continue  # a trailing `;`, as the portal writes it
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            raise UsageError(f"malformed Azure connection string: part {n} is not Name=value")
        if name not in _CONN_KEYS:
            raise UsageError(f"malformed Azure connection string: unknown setting in part {n}")
        if name in fields:
            raise UsageError(f"malformed Azure connection string: a setting is given twice (part {n})")
        fields[name] = value.strip()
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return AzureCredentials(DEV_ACCOUNT, _check_endpoint(fields.get("blobendpoint") or DEV_BLOB_ENDPOINT,
                                                             "BlobEndpoint"), key=_decode_key(DEV_KEY, "the key"))
    account = fields.get("accountname")
    key, sas = fields.get("accountkey"), fields.get("sharedaccesssignature")
    if key and sas:
        raise UsageError("malformed Azure connection string: it has both AccountKey and SharedAccessSignature")
    if not key and not sas:
        raise UsageError("malformed Azure connection string: it needs AccountKey or SharedAccessSignature")
    if key and not account:
        raise UsageError("malformed Azure connection string: AccountKey needs AccountName")
    blob = fields.get("blobendpoint")
    if blob:
        endpoint = _check_endpoint(blob, "BlobEndpoint in the Azure connection string")
        if not account:
            # A SAS connection string may name only the endpoint: the account is its host's first label.
            parts = urlsplit(endpoint)
            path = parts.path.strip("/")
            account = path.split("/")[0] if path else (parts.hostname or "").split(".")[0]
    else:
        if not account:
            raise UsageError("malformed Azure connection string: it needs AccountName or BlobEndpoint")
        scheme = fields.get("defaultendpointsprotocol", "https").lower()
        if scheme not in ("http", "https"):
            raise UsageError("malformed Azure connection string: DefaultEndpointsProtocol must be http or https")
        suffix = fields.get("endpointsuffix") or DEFAULT_SUFFIX
        if not re.fullmatch(r"[A-Za-z0-9.-]+", suffix):
            raise UsageError("malformed Azure connection string: EndpointSuffix is not a host name")
        endpoint = f"{scheme}://{_check_account(account)}.blob.{suffix}"
    _check_account(account)
    return AzureCredentials(account, endpoint, key=_decode_key(key, "AccountKey in the Azure connection string")
                            if key else None, sas=_clean_sas(sas) if sas else None)


def http_date(now: float | None = None) -> str:
    """`now` (default: the current second) as an RFC 1123 date, as x-ms-date wants it."""
    return _http_date(int(time.time() if now is None else now))


@lru_cache(maxsize=4)
def _http_date(second: int) -> str:
    # Formatted once a second, not once a request: formatdate costs more than the HMAC that signs it.
    return email.utils.formatdate(second, usegmt=True)


class SharedKeySigner:
    """Signs blob-service requests with an account key (Authorization: SharedKey account:signature)."""

    def __init__(self, account: str, key: bytes) -> None:
        self.account = account
        self._key = key

    def __repr__(self) -> str:
        return f"SharedKeySigner({self.account!r})"

    def string_to_sign(self, method: str, path: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str],
                       content_length: int) -> str:
        """`path` is the encoded URL path as sent (Azurite's starts with the account, which is then named twice)."""
        lower = {k.lower(): v for k, v in headers.items()}
        get = lower.get
        # The standard headers in their fixed order (the string is built in one go: this runs per request).
        sts = (f"{method}\n{get('content-encoding', '')}\n{get('content-language', '')}\n"
               f"{content_length or ''}\n{get('content-md5', '')}\n{get('content-type', '')}\n{get('date', '')}\n"
               f"{get('if-modified-since', '')}\n{get('if-match', '')}\n{get('if-none-match', '')}\n"
               f"{get('if-unmodified-since', '')}\n{get('range', '')}\n")
        names = _collated(tuple(sorted(k for k in lower if k.startswith("x-ms-"))))
        sts += "".join([f"{k}:{lower[k].strip()}\n" for k in names])
        sts += f"/{self.account}{path}"
        if query:
            grouped: dict[str, list[str]] = {}
            for k, v in query:
                grouped.setdefault(k.lower(), []).append(v)
            sts += "".join(f"\n{k}:{','.join(sorted(grouped[k]))}" for k in sorted(grouped))
        return sts

    def authorization(self, method: str, path: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str],
                      content_length: int) -> str:
        sts = self.string_to_sign(method, path, query, headers, content_length)
        sig = base64.b64encode(hmac.digest(self._key, sts.encode("utf-8"), "sha256")).decode("ascii")
        return f"SharedKey {self.account}:{sig}"


def sas_params(token: str) -> list[tuple[str, str]]:
    """A SAS token's query parameters, decoded (they are encoded again on the wire)."""
    return parse_qsl(token, keep_blank_values=True)


def encode_query(params: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in params)


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every given secret, and its URL-encoded form, replaced by `***`."""
    for s in secrets:
        if s:
            text = text.replace(s, "***").replace(quote(s, safe=""), "***").replace(unquote(s), "***")
    return text


# The service orders the x-ms-* headers of the string to sign by a collation, not by code point: hyphens count
# only on a second level, `_` sorts before digits, letters ignore case (`x-ms-meta-a_1` before `x-ms-meta-a1`).
# Weights from azure-storage-blob's _shared/authentication.py (MIT licence), printable ASCII only.
_LV0 = dict(zip("!#$%&*+.", (0x71C, 0x71F, 0x721, 0x723, 0x725, 0x72D, 0x803, 0x733), strict=True))
_LV0.update(zip("0123456789", (0xD03, 0xD1A, 0xD1C, 0xD1E, 0xD20, 0xD22, 0xD24, 0xD26, 0xD28, 0xD2A), strict=True))
_LETTERS = (0xE02, 0xE09, 0xE0A, 0xE1A, 0xE21, 0xE23, 0xE25, 0xE2C, 0xE32, 0xE35, 0xE36, 0xE48, 0xE51, 0xE70, 0xE7C,
            0xE7E, 0xE89, 0xE8A, 0xE91, 0xE99, 0xE9F, 0xEA2, 0xEA4, 0xEA6, 0xEA7, 0xEA9)
_LV0.update(zip("abcdefghijklmnopqrstuvwxyz", _LETTERS, strict=True))
_LV0.update(zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", _LETTERS, strict=True))
_LV0.update({"^": 0x743, "_": 0x744, "`": 0x748, "|": 0x74C, "~": 0x750})
_LV4 = {"'": 0x8012, "-": 0x8212}


@lru_cache(maxsize=1024)
def _collated(names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` in the service's order; requests repeat a few sets of header names, so each is sorted once."""
    return tuple(sorted(names, key=cmp_to_key(_collate)))


def _collate(lhs: str, rhs: str) -> int:
    """-1, 0 or 1 as the service orders two header names (the SDK's `compare`, same algorithm)."""
    tables = (_LV0, _LV4)
    level, i, j = 0, 0, 0
    while level < len(tables):
        if level == len(tables) - 1 and i != j:
            return -1 if i > j else 1
        w1 = tables[level].get(lhs[i], 0) if i < len(lhs) else 1
        w2 = tables[level].get(rhs[j], 0) if j < len(rhs) else 1
        if w1 == 1 and w2 == 1:
            i = j = 0
            level += 1
        elif w1 == w2:
            i += 1
            j += 1
        elif w1 == 0:
            i += 1
        elif w2 == 0:
            j += 1
        else:
            return -1 if w1 < w2 else 1
    return 0
