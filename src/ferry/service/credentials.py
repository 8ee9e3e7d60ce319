"""Tenancy: API access keys (SK encrypted at rest), X-Auth-Token tokens, and privacy-agreement records."""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ferry.db.api_models import api_credentials, api_tokens, privacy_agreements
from ferry.errors import UsageError
from ferry.secrets import SecretBox, SecretDecryptError

PROJECT_ID: Final = re.compile(r"^[0-9a-f]{32}$")
DEFAULT_TOKEN_TTL: Final = 24 * 3600  # IAM tokens are valid for 24 hours too
MAX_TOKEN_TTL: Final = 365 * 24 * 3600
_AK_ALPHABET: Final = string.ascii_uppercase + string.digits
_SK_ALPHABET: Final = string.ascii_letters + string.digits


def check_project_id(project_id: str) -> str:
    """The project id if it is 32 lower-case hex characters (as Huawei's are), else UsageError."""
    if not isinstance(project_id, str) or not PROJECT_ID.fullmatch(project_id):
        raise UsageError("project id must be 32 lower-case hexadecimal characters, "
                         "e.g. 0123456789abcdef0123456789abcdef")
    return project_id


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


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
    token: str
    project_id: str
    expires_at: float


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
    """Revoke an access key; False when there is no active key of that name."""
    with engine.begin() as conn:
        result = conn.execute(
            update(api_credentials)
            .where(api_credentials.c.access_key == access_key, api_credentials.c.revoked_at.is_(None))
            .values(revoked_at=time.time())
        )
    return bool(result.rowcount)


def create_token(engine: Engine, project_id: str, ttl: float = DEFAULT_TOKEN_TTL) -> NewToken:
    """A new X-Auth-Token for `project_id`, valid for `ttl` seconds; only its hash is stored."""
    check_project_id(project_id)
    if not 60 <= ttl <= MAX_TOKEN_TTL:
        raise UsageError(f"token lifetime must be between 60 and {MAX_TOKEN_TTL} seconds")
    token = secrets.token_urlsafe(32)
    now = time.time()
    with engine.begin() as conn:
        conn.execute(insert(api_tokens).values(
            token_hash=_token_hash(token), project_id=project_id, created_at=now, expires_at=now + ttl,
        ))
    return NewToken(token, project_id, now + ttl)


def record_privacy_agreement(engine: Engine, project_id: str) -> None:
    """Remember that `project_id` accepted the privacy agreement (the latest acceptance wins)."""
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(privacy_agreements).values(project_id=project_id, accepted_at=time.time())
    stmt = stmt.on_conflict_do_update(index_elements=["project_id"], set_={"accepted_at": stmt.excluded.accepted_at})
    with engine.begin() as conn:
        conn.execute(stmt)


class DbCredentialStore:
    """The API's CredentialStore over the database: active keys (SK decrypted on use) and unexpired tokens."""

    def __init__(self, engine: Engine, box: SecretBox, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._box = box
        self._clock = clock

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
        q = select(api_tokens.c.project_id).where(
            api_tokens.c.token_hash == _token_hash(token),
            api_tokens.c.revoked_at.is_(None),
            api_tokens.c.expires_at > self._clock(),
        )
        with self._engine.connect() as conn:
            row = conn.execute(q).first()
        return None if row is None else str(row[0])
