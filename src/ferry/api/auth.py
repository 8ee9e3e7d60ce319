"""Server-side check of the SDK's SDK-HMAC-SHA256 request signature and of X-Auth-Token tokens."""

from __future__ import annotations

import hashlib
import heapq
import hmac
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Literal, Protocol

from fastapi import Path, Request
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from ferry.errors import TransientError
from ferry.oms import OmsError
from ferry.sdk_hmac import ALGORITHM, DATE_FORMAT, EMPTY_SHA256, canonical_query, canonical_uri, sign, string_to_sign

MAX_SKEW: Final = timedelta(minutes=15)
# API Gateway makes these mandatory: without them a signature could be replayed on another host, or forever.
REQUIRED_SIGNED: Final = frozenset({"host", "x-sdk-date"})
_MAX_AUTH_HEADER: Final = 4096
_MAX_TOKEN: Final = 16384
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
# Requests that change nothing may be repeated; any other signed request is accepted once (a replay is refused).
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
# ...except sync events and bucket notifications: they only ask for keys to be compared again, which a replay
# cannot abuse, while the same key legitimately changes twice within the one second the SDK's date resolves
# (two uploads), and refusing the second call would leave the newer object unsynced.
_REPLAY_HARMLESS: Final = re.compile(r"/v2/[^/]+/sync-tasks/[^/]+/(?:events|notifications)/?")


class CredentialStore(Protocol):
    """Where the edge looks callers up; the database layer provides the real one."""

    def lookup_access_key(self, access_key: str) -> tuple[str, str] | None:
        """`(project_id, secret_key)` for an active access key, else None."""
        ...

    def lookup_token(self, token: str) -> str | None:
        """The project id a valid, unexpired token is scoped to, else None."""
        ...

    def remember_signature(self, signature: str, expires_at: float, now: float) -> bool:
        """Record the signature of an accepted write request until `expires_at`; False if it was already seen
        (a replay). Entries past their expiry may be forgotten: their requests are refused as stale."""
        ...


@dataclass(frozen=True)
class Principal:
    """Who is calling, as proven by the request: the project it acts in and how it proved it."""

    project_id: str
    method: Literal["aksk", "token"]
    access_key: str | None = None


@dataclass(frozen=True)
class IncomingRequest:
    """The parts of an HTTP request the signature covers, as they arrived on the wire."""

    method: str
    raw_path: str
    query_string: str
    headers: Sequence[tuple[str, str]]
    body: bytes

    @classmethod
    def from_scope(cls, scope: Scope, body: bytes) -> IncomingRequest:
        raw = scope.get("raw_path") or scope["path"].encode("utf-8")
        # Decoded like the SDK decodes its own path (UTF-8), so non-ASCII keys canonicalise identically.
        raw_path = raw.split(b"?", 1)[0].decode("utf-8", errors="replace")
        query = scope.get("query_string", b"").decode("latin-1")
        headers = [(name.decode("latin-1").lower(), _header_text(value)) for name, value in scope["headers"]]
        return cls(scope["method"], raw_path, query, headers, body)

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


def _header_text(value: bytes) -> str:
    # The SDK sends header values as UTF-8 bytes (it re-encodes them through latin-1 for `requests`).
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def payload_hash(body: bytes, declared: str | None) -> str | None:
    """The body hash the signer used, or None when the request declares one that does not match.

    The SDK signs an `X-Sdk-Content-Sha256` value instead of hashing when that header is present; we accept
    it only if it is the real hash, so `UNSIGNED-PAYLOAD` (leaving the body unauthenticated) is refused.
    """
    if not body:
        return EMPTY_SHA256
    actual = hashlib.sha256(body).hexdigest()
    if declared is not None and not hmac.compare_digest(declared.lower().encode(), actual.encode()):
        return None
    return actual


def canonical_request(req: IncomingRequest, signed_headers: Sequence[str], body_hash: str) -> str | None:
    """The SDK's CanonicalRequest for `req`, or None when a signed header is missing or repeated."""
    lines = []
    for name in signed_headers:
        values = req.header_values(name)
        if len(values) != 1:
            return None
        lines.append(f"{name}:{values[0].strip()}\n")
    return "\n".join(
        [
            req.method.upper(),
            canonical_uri(req.raw_path),
            canonical_query(req.query_string),
            "".join(lines),
            ";".join(signed_headers),
            body_hash,
        ]
    )


@dataclass(frozen=True)
class AuthorizationHeader:
    access_key: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> AuthorizationHeader | None:
    """Parse `SDK-HMAC-SHA256 Access=…, SignedHeaders=…, Signature=…`; None if it is anything else."""
    if len(value) > _MAX_AUTH_HEADER:
        return None
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        return None
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, val = part.strip().partition("=")
        if not sep or key in fields:
            return None
        fields[key] = val.strip()
    if set(fields) != {"Access", "SignedHeaders", "Signature"}:
        return None
    signed = tuple(fields["SignedHeaders"].split(";"))
    if not fields["Access"] or not _HEX64.fullmatch(fields["Signature"].lower()):
        return None
    if any(not h or h != h.lower() for h in signed):
        return None
    if not set(signed) >= REQUIRED_SIGNED or len(set(signed)) != len(signed):
        return None
    return AuthorizationHeader(fields["Access"], signed, fields["Signature"].lower())


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RequestVerifier:
    """Authenticates requests against a CredentialStore; every failure is the same 401."""

    def __init__(
        self,
        store: CredentialStore,
        *,
        max_skew: timedelta = MAX_SKEW,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._store = store
        self._max_skew = max_skew
        self._clock = clock
        # Signs for unknown access keys so that "no such key" costs the same as "wrong signature".
        self._decoy_key = os.urandom(32).hex()

    def authenticate(self, req: IncomingRequest, path_project_id: str | None) -> Principal:
        """Prove who sent `req`, then check it may act in `path_project_id`; raise OmsError 401/403."""
        authorization = req.header_values("authorization")
        tokens = req.header_values("x-auth-token")
        if authorization:
            principal = self._verify_signature(req, authorization)
        elif tokens:
            principal = self._verify_token(tokens)
        else:
            raise OmsError.unauthorized()
        self._check_project(req, principal, path_project_id)
        return principal

    def _verify_signature(self, req: IncomingRequest, values: list[str]) -> Principal:
        auth = parse_authorization(values[0]) if len(values) == 1 else None
        if auth is None:
            raise OmsError.unauthorized()
        dates = req.header_values("x-sdk-date")
        if len(dates) != 1 or not self._date_is_fresh(dates[0].strip()):
            raise OmsError.unauthorized()
        declared = req.header_values("x-sdk-content-sha256")
        if len(declared) > 1:
            raise OmsError.unauthorized()
        body_hash = payload_hash(req.body, declared[0].strip() if declared else None)
        canonical = canonical_request(req, auth.signed_headers, body_hash) if body_hash else None

        found = self._store.lookup_access_key(auth.access_key)
        project_id, secret_key = found if found is not None else ("", self._decoy_key)
        expected = sign(secret_key, string_to_sign(dates[0].strip(), canonical or ""))
        matches = hmac.compare_digest(expected, auth.signature)
        if found is None or canonical is None or not matches:
            raise OmsError.unauthorized()
        if req.method.upper() not in _SAFE_METHODS and not _REPLAY_HARMLESS.fullmatch(req.raw_path):
            # Only once proven: an unauthenticated caller cannot fill the store. The signature covers the method,
            # path, query, signed headers, body and date, so an identical one is the same request sent again.
            signed_at = datetime.strptime(dates[0].strip(), DATE_FORMAT).replace(tzinfo=UTC)
            now = self._clock()
            if not self._store.remember_signature(auth.signature, (signed_at + self._max_skew).timestamp(),
                                                  now.timestamp()):
                raise OmsError.replayed()
        return Principal(project_id=project_id, method="aksk", access_key=auth.access_key)

    def _verify_token(self, values: list[str]) -> Principal:
        if len(values) != 1 or not values[0] or len(values[0]) > _MAX_TOKEN:
            raise OmsError.unauthorized()
        project_id = self._store.lookup_token(values[0].strip())
        if project_id is None:
            raise OmsError.unauthorized()
        return Principal(project_id=project_id, method="token")

    def _date_is_fresh(self, value: str) -> bool:
        try:
            signed_at = datetime.strptime(value, DATE_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            return False
        # strptime accepts short fields ("2024111T…") but the signer hashes the re-formatted date.
        if signed_at.strftime(DATE_FORMAT) != value:
            return False
        return abs(self._clock() - signed_at) <= self._max_skew

    @staticmethod
    def _check_project(req: IncomingRequest, principal: Principal, path_project_id: str | None) -> None:
        # Checked only after the caller proved who it is, so the 403 tells nothing to someone without keys.
        if path_project_id is None:
            return
        if principal.project_id != path_project_id:
            raise OmsError.forbidden()
        if any(value.strip() != path_project_id for value in req.header_values("x-project-id")):
            raise OmsError.forbidden()


class SeenSignatures:
    """Signatures of accepted write requests, each until its expiry, at most `capacity` at once (then new
    writes are refused as unavailable until room frees up: forgetting one early would let it be replayed)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._expiry: dict[str, float] = {}
        self._by_expiry: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, signature: str, expires_at: float, now: float) -> bool:
        with self._lock:
            while self._by_expiry and self._by_expiry[0][0] < now:
                self._expiry.pop(heapq.heappop(self._by_expiry)[1], None)
            if signature in self._expiry:
                return False
            if len(self._expiry) >= self._capacity:
                raise TransientError("too many recent write requests to check for replays", retry_after=1)
            self._expiry[signature] = expires_at
            heapq.heappush(self._by_expiry, (expires_at, signature))
            return True


class InMemoryCredentialStore:
    """A CredentialStore held in memory, for tests, development and the embedded single-user mode."""

    def __init__(self, seen_capacity: int = 100_000) -> None:
        self._keys: dict[str, tuple[str, str]] = {}
        # Kept by digest: the table never holds a usable token, and lookup is not a string compare.
        self._tokens: dict[bytes, str] = {}
        self.seen = SeenSignatures(seen_capacity)

    def add_access_key(self, access_key: str, secret_key: str, project_id: str) -> None:
        self._keys[access_key] = (project_id, secret_key)

    def add_token(self, token: str, project_id: str) -> None:
        self._tokens[hashlib.sha256(token.encode("utf-8")).digest()] = project_id

    def lookup_access_key(self, access_key: str) -> tuple[str, str] | None:
        return self._keys.get(access_key)

    def lookup_token(self, token: str) -> str | None:
        return self._tokens.get(hashlib.sha256(token.encode("utf-8")).digest())

    def remember_signature(self, signature: str, expires_at: float, now: float) -> bool:
        return self.seen.add(signature, expires_at, now)


VERIFIER_STATE: Final = "ferry_verifier"


async def require_principal(
    request: Request, project_id: Annotated[str, Path(description="project id (32 hex characters)")]
) -> Principal:
    """FastAPI dependency for `/v2/{project_id}/...`: authenticate with the app's RequestVerifier."""
    verifier: RequestVerifier = getattr(request.app.state, VERIFIER_STATE)
    body = await request.body()
    incoming = IncomingRequest.from_scope(request.scope, body)
    # The store may hit a database; keep that off the event loop.
    return await run_in_threadpool(verifier.authenticate, incoming, project_id)
