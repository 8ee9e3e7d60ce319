"""Tenancy: API access keys (SK encrypted at rest), X-Auth-Token tokens tied to a key, privacy-agreement records,
and the signatures of accepted write requests (against replay)."""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Engine, and_, delete, exists, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ferry.db.api_models import api_credentials, api_seen_signatures, api_tokens, privacy_agreements
from ferry.errors import UsageError
from ferry.secrets import SecretBox, SecretDecryptError

PROJECT_ID: Final = re.compile(r"^[0-9a-f]{32}$")
DEFAULT_TOKEN_TTL: Final = 24 * 3600  # IAM tokens are valid for 24 hours too
MAX_TOKEN_TTL: Final = 365 * 24 * 3600
_AK_ALPHABET: Final = string.ascii_uppercase + string.digits
_SK_ALPHABET: Final = string.ascii_letters + string.digits
TOKEN_ID: Final = re.compile(r"^[0-9a-f]{16}$")
# Expired signatures are deleted at most this often (seconds) per process.
_PURGE_EVERY: Final = 60.0


def check_project_id(project_id: str) -> str:
    """The project id if it is 32 lower-case hex characters (as Huawei's are), else UsageError."""
    if not isinstance(project_id, str) or not PROJECT_ID.fullmatch(project_id):
        raise UsageError("project id must be 32 lower-case hexadecimal characters, "
                         "e.g. 0123456789abcdef0123456789abcdef")
    return project_id


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _token_id(token_hash: str) -> str:
    return token_hash[:16]


@dataclass(frozen=True, slots=True)
class NewCredential:
    """A freshly created key pair: the only moment the secret key is visible."""

    project_id: str
    access_key: str
    secret_key: str


@dataclass(frozen=True, slots=True)
class CredentialInfo:
    """What may be shown about a key pair: never its secret."""

    access_key: str
    project_id: str
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class NewToken:
    """A freshly created token: the only moment it is visible."""

    token: str
    token_id: str
    project_id: str
    access_key: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What may be shown about a token: its id, never the token."""

    token_id: str
    project_id: str
    access_key: str | None  # None: created before tokens recorded their key
    created_at: float
    expires_at: float
    status: str  # active | expired | revoked | key revoked


def create_credential(engine: Engine, box: SecretBox, project_id: str) -> NewCredential:
    """A new AK/SK pair for `project_id`; the SK is stored encrypted and returned this once."""
    check_project_id(project_id)
    # Huawei-like shapes: a 20-character upper-case AK and a 40-character SK.
    access_key = "FERRY" + "".join(secrets.choice(_AK_ALPHABET) for _ in range(15))
    secret_key = "".join(secrets.choice(_SK_ALPHABET) for _ in range(40))
    with engine.begin() as conn:
        conn.execute(insert(api_credentials).values(
            access_key=access_key, project_id=project_id, secret=box.encrypt(secret_key),
            created_at=time.time(), revoked_at=None,
        ))
    return NewCredential(project_id, access_key, secret_key)


def list_credentials(engine: Engine, project_id: str | None = None) -> list[CredentialInfo]:
    q = select(api_credentials.c.access_key, api_credentials.c.project_id, api_credentials.c.created_at,
               api_credentials.c.revoked_at).order_by(api_credentials.c.created_at)
    if project_id is not None:
        q = q.where(api_credentials.c.project_id == check_project_id(project_id))
    with engine.connect() as conn:
        return [CredentialInfo(*row) for row in conn.execute(q)]


def revoke_credential(engine: Engine, access_key: str) -> bool:
    """Revoke an access key, and so the tokens issued under it; False when there is no active key of that name."""
    with engine.begin() as conn:
        result = conn.execute(
            update(api_credentials)
            .where(api_credentials.c.access_key == access_key, api_credentials.c.revoked_at.is_(None))
            .values(revoked_at=time.time())
        )
    return bool(result.rowcount)


def create_token(engine: Engine, project_id: str, ttl: float = DEFAULT_TOKEN_TTL,
                 access_key: str | None = None) -> NewToken:
    """A new X-Auth-Token for `project_id`, valid for `ttl` seconds and while `access_key` (by default the
    project's only active key) is; only its hash is stored."""
    check_project_id(project_id)
    if not 60 <= ttl <= MAX_TOKEN_TTL:
        raise UsageError(f"token lifetime must be between 60 and {MAX_TOKEN_TTL} seconds")
    token = secrets.token_urlsafe(32)
    digest = _token_hash(token)
    now = time.time()
    with engine.begin() as conn:
        keys = conn.execute(select(api_credentials.c.access_key).where(
            api_credentials.c.project_id == project_id, api_credentials.c.revoked_at.is_(None))).scalars().all()
        if access_key is None:
            if not keys:
                raise UsageError("the project has no active access key; a token lives as long as the key it is "
                                 "issued under: create one with `ferry credentials create`")
            if len(keys) > 1:
                raise UsageError(f"the project has {len(keys)} active access keys: choose the one the token lives "
                                 "with by --access-key")
            access_key = keys[0]
        elif access_key not in keys:
            raise UsageError("--access-key: the project has no active access key of that name")
        conn.execute(insert(api_tokens).values(
            token_hash=digest, project_id=project_id, created_at=now, expires_at=now + ttl, access_key=access_key,
        ))
    return NewToken(token, _token_id(digest), project_id, access_key, now + ttl)


def list_tokens(engine: Engine, project_id: str | None = None) -> list[TokenInfo]:
    """Every token (of `project_id`), oldest first, with its status; never the token itself."""
    t = api_tokens.c
    q = select(t.token_hash, t.project_id, t.access_key, t.created_at, t.expires_at, t.revoked_at).order_by(
        t.created_at)
    keys = select(api_credentials.c.access_key, api_credentials.c.project_id).where(
        api_credentials.c.revoked_at.is_(None))
    if project_id is not None:
        q = q.where(t.project_id == check_project_id(project_id))
        keys = keys.where(api_credentials.c.project_id == project_id)
    with engine.connect() as conn:
        rows = conn.execute(q).all()
        active = {(row[0], row[1]) for row in conn.execute(keys)}
    projects_with_keys = {project for _, project in active}
    now = time.time()
    out = []
    for digest, project, key, created, expires, revoked in rows:
        alive = (key, project) in active if key is not None else project in projects_with_keys
        status = ("revoked" if revoked is not None else "key revoked" if not alive
                  else "expired" if expires <= now else "active")
        out.append(TokenInfo(_token_id(digest), project, key, created, expires, status))
    return out


def revoke_token(engine: Engine, token_id: str) -> bool:
    """Revoke the token of that id; False when there is no unrevoked token of that id."""
    if not isinstance(token_id, str) or not TOKEN_ID.fullmatch(token_id):
        raise UsageError("a token id is 16 lower-case hexadecimal characters, as `ferry tokens list` shows them")
    with engine.begin() as conn:
        result = conn.execute(
            update(api_tokens)
            .where(api_tokens.c.token_hash.startswith(token_id), api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=time.time())
        )
    return bool(result.rowcount)


def revoke_project_tokens(engine: Engine, project_id: str) -> int:
    """Revoke every token of `project_id`; how many were still unrevoked."""
    check_project_id(project_id)
    with engine.begin() as conn:
        result = conn.execute(
            update(api_tokens)
            .where(api_tokens.c.project_id == project_id, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=time.time())
        )
    return int(result.rowcount)


def record_privacy_agreement(engine: Engine, project_id: str) -> None:
    """Remember that `project_id` accepted the privacy agreement (the latest acceptance wins)."""
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(privacy_agreements).values(project_id=project_id, accepted_at=time.time())
    stmt = stmt.on_conflict_do_update(index_elements=["project_id"], set_={"accepted_at": stmt.excluded.accepted_at})
    with engine.begin() as conn:
        conn.execute(stmt)


class DbCredentialStore:
    """The API's CredentialStore over the database: active keys (SK decrypted on use), unexpired tokens whose key
    is active, and the signatures already accepted."""

    def __init__(self, engine: Engine, box: SecretBox, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._box = box
        self._clock = clock
        self._next_purge = 0.0

    def __repr__(self) -> str:
        return "DbCredentialStore()"

    def lookup_access_key(self, access_key: str) -> tuple[str, str] | None:
        if not access_key or len(access_key) > 64:
            return None
        q = select(api_credentials.c.project_id, api_credentials.c.secret).where(
            api_credentials.c.access_key == access_key, api_credentials.c.revoked_at.is_(None)
        )
        with self._engine.connect() as conn:
            row = conn.execute(q).first()
        if row is None:
            return None
        try:
            return row[0], self._box.decrypt(row[1])
        except SecretDecryptError:
            # Encrypted under another master key: the key cannot be used, which is an authentication failure.
            return None

    def lookup_token(self, token: str) -> str | None:
        t, c = api_tokens.c, api_credentials.c
        key_active = exists().where(c.access_key == t.access_key, c.project_id == t.project_id,
                                    c.revoked_at.is_(None))
        project_has_key = exists().where(c.project_id == t.project_id, c.revoked_at.is_(None))
        q = select(t.project_id).where(
            t.token_hash == _token_hash(token),
            t.revoked_at.is_(None),
            t.expires_at > self._clock(),
            or_(and_(t.access_key.is_not(None), key_active), and_(t.access_key.is_(None), project_has_key)),
        )
        with self._engine.connect() as conn:
            row = conn.execute(q).first()
        return None if row is None else str(row[0])

    def remember_signature(self, signature: str, expires_at: float, now: float) -> bool:
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(api_seen_signatures).values(signature=signature, expires_at=expires_at)
        with self._engine.begin() as conn:
            if now >= self._next_purge:
                # Past their expiry the requests are refused as stale anyway: the table holds one window's worth.
                self._next_purge = now + _PURGE_EVERY
                conn.execute(delete(api_seen_signatures).where(api_seen_signatures.c.expires_at < now))
            # RETURNING, as psycopg reports no row count for this statement.
            added = conn.execute(stmt.on_conflict_do_nothing(index_elements=["signature"])
                                 .returning(api_seen_signatures.c.signature)).first()
        return added is not None
