"""Google service-account keys: the JSON key file checked once, and OAuth2 access tokens from it (JWT bearer, RS256).

The flow is Google's "OAuth 2.0 for server to server applications": a JWT whose `iss` is the account's
`client_email`, `aud` the key file's `token_uri`, `scope` the storage scope, signed RS256 with the key file's
private key, is POSTed to `token_uri` as `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`; the answer's
`access_token` is a Bearer token for `expires_in` seconds. A token is kept until a minute before it expires and
fetched again then (or at once after the store refused it), by one caller while the others wait for it.

Nothing here ever puts the private key, the JWT or the token into a message, a repr or a log line.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ferry.errors import AccessError, TransientError, UsageError
from ferry.storage.http1 import Http1Pool, HttpError, HttpTimeout, split_url

__all__ = ["GOOGLE_TOKEN_URI", "SCOPE_READ_WRITE", "ServiceAccount", "TokenSource"]

GOOGLE_TOKEN_URI: Final = "https://oauth2.googleapis.com/token"
SCOPE_READ_WRITE: Final = "https://www.googleapis.com/auth/devstorage.read_write"
_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_LIFETIME: Final = 3600  # the longest a JWT assertion may ask for
_EARLY: Final = 60.0  # a token is replaced this long before Google says it expires


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """A service account's key, parsed and checked; its repr names the account, never the key."""

    client_email: str
    token_uri: str
    private_key_id: str | None
    key: rsa.RSAPrivateKey = field(repr=False)
    project_id: str | None = None

    def __repr__(self) -> str:
        return f"ServiceAccount({self.client_email!r})"

    @classmethod
    def parse(cls, text: str, *, where: str = "json_auth_file", validate: bool = True) -> ServiceAccount:
        """The account of a service-account JSON key file; UsageError saying what is wrong, quoting no value.

        `validate` checks the RSA key's consistency (~0.1 s of CPU for a 2048-bit key): done where a key file
        comes in; a key checked so before (a stored task's) skips it."""
        def bad(problem: str) -> UsageError:
            return UsageError(f"{where} is not a Google service-account key file: {problem}")

        try:
            doc: Any = json.loads(text)
        except (ValueError, TypeError):
            raise bad("it is not valid JSON") from None
        if not isinstance(doc, dict):
            raise bad("it is not a JSON object")
        if doc.get("type") != "service_account":
            raise bad('its "type" is not "service_account" (create a key for a service account in the console)')
        for name in ("client_email", "private_key"):
            if not isinstance(doc.get(name), str) or not doc[name].strip():
                raise bad(f'"{name}" is missing')
        token_uri = doc.get("token_uri", GOOGLE_TOKEN_URI)
        if not isinstance(token_uri, str) or urlsplit(token_uri).scheme not in ("http", "https"):
            raise bad('"token_uri" is not an http(s) URL')
        try:
            key = serialization.load_pem_private_key(doc["private_key"].encode("utf-8"), password=None,
                                                     unsafe_skip_rsa_key_validation=not validate)
        except (ValueError, TypeError):
            raise bad('"private_key" is not an unencrypted PEM private key') from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise bad('"private_key" is not an RSA key')
        kid = doc.get("private_key_id")
        project = doc.get("project_id")
        return cls(doc["client_email"], token_uri, kid if isinstance(kid, str) else None, key,
                   project if isinstance(project, str) else None)

    def assertion(self, scope: str, now: float | None = None) -> str:
        """The signed JWT that asks `token_uri` for a token of `scope`."""
        issued = int(time.time() if now is None else now)
        header = {"alg": "RS256", "typ": "JWT", **({"kid": self.private_key_id} if self.private_key_id else {})}
        claims = {"iss": self.client_email, "scope": scope, "aud": self.token_uri, "iat": issued,
                  "exp": issued + _LIFETIME}
        signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                         + _b64url(json.dumps(claims, separators=(",", ":")).encode()))
        signature = self.key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)


class TokenSource:
    """Bearer tokens of one service account, cached until shortly before they expire.

    `allowed(host, port)`, when given, says where `token_uri` may point: a key file handed in through the API
    must not make Ferry POST to an internal service. None allows any (a key file the operator gave on the
    command line)."""

    def __init__(self, account: ServiceAccount, *, scope: str = SCOPE_READ_WRITE,
                 allowed: Callable[[str, int], bool] | None = None, timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._account = account
        self._scope = scope
        self._allowed = allowed
        self._timeout = timeout
        self._clock = clock
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self._pool: Http1Pool | None = None
        self.fetched = 0  # how many tokens were asked for (tests read it)

    def __repr__(self) -> str:
        return f"TokenSource({self._account.client_email!r})"

    async def token(self) -> str:
        """A token valid for at least another minute."""
        if self._token is not None and self._clock() < self._expires:
            return self._token
        async with self._lock:
            if self._token is None or self._clock() >= self._expires:
                await self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> None:
        """The store refused `token` (revoked, or clocks disagree): the next call fetches another."""
        if self._token == token:
            self._token = None

    async def _fetch(self) -> None:
        url = split_url(self._account.token_uri)
        where = f"{url.host}:{url.port}"
        if self._allowed is not None and not self._allowed(url.host, url.port):
            raise AccessError(f"the service account's token_uri host {where} is not Google's token endpoint "
                              "(nor one the operator allowed)")
        if self._pool is None:
            self._pool = Http1Pool(url.scheme, url.host, url.port, limit=4, connect_timeout=self._timeout,
                                   read_timeout=self._timeout)
        body = urlencode({"grant_type": _GRANT, "assertion": self._account.assertion(self._scope)}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        started = self._clock()
        try:
            resp = await self._pool.request("POST", url.target, url.host_header, headers, body)
        except (HttpError, HttpTimeout) as exc:
            raise TransientError(f"token endpoint {where}: {exc}") from None
        doc: Any = None
        with contextlib.suppress(ValueError):
            doc = json.loads(resp.body)
        if resp.status == 200 and isinstance(doc, dict) and isinstance(doc.get("access_token"), str):
            lifetime = doc.get("expires_in")
            seconds = float(lifetime) if isinstance(lifetime, (int, float)) and lifetime > 0 else 3600.0
            self._token = doc["access_token"]
            self._expires = started + max(seconds - _EARLY, seconds / 2)
            self.fetched += 1
            return
        # OAuth errors are a code and a description of the request, never of the key: safe to show.
        code = doc.get("error") if isinstance(doc, dict) and isinstance(doc.get("error"), str) else None
        text = doc.get("error_description") if isinstance(doc, dict) else None
        msg = f"token endpoint {where}: HTTP {resp.status}" + (f" {code}" if code else "")
        if isinstance(text, str):
            msg += f" ({' '.join(text.split())[:200]})"
        if resp.status in (429,) or resp.status >= 500:
            raise TransientError(msg)
        # Google's "invalid_grant": a deleted or disabled key, a wrong account, or a clock far off.
        raise AccessError(msg, s3_code="InvalidAccessKeyId", credentials="json_auth_file")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
