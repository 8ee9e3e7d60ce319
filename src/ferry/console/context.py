"""What the console needs from the layers below: credential look-ups, the task, group and sync contexts, keys."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Final, Protocol

from fastapi import Depends, Request

if TYPE_CHECKING:
    from ferry.service.groups import GroupContext
    from ferry.service.sync import SyncContext
    from ferry.service.tasks import TaskContext

DEFAULT_SESSION_TTL: Final = 8 * 3600.0
CONSOLE_STATE: Final = "ferry_console"


class CredentialLookup(Protocol):
    """The part of the API's credential store the sign-in page uses (service.credentials.DbCredentialStore)."""

    def lookup_access_key(self, access_key: str) -> tuple[str, str] | None:
        """`(project_id, secret_key)` for an active access key, else None."""
        ...

    def lookup_token(self, token: str) -> str | None:
        """The project id a valid, unexpired token is scoped to, else None."""
        ...


class SignedOut:
    """Session ids signed out in this process, each until its cookie would have expired anyway."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, session_id: str, expires_at: float) -> None:
        with self._lock:
            now = time.time()
            for sid in [s for s, until in self._until.items() if until < now]:
                del self._until[sid]
            self._until[session_id] = expires_at

    def __contains__(self, session_id: object) -> bool:
        with self._lock:
            return session_id in self._until


@dataclass(frozen=True)
class ConsoleContext:
    """Everything console routes call into. `session_key` seals the session cookie (AES-GCM) and signs CSRF
    tokens; every server process sharing the master key shares it, so any of them accepts a session."""

    credentials: CredentialLookup
    session_key: bytes = field(repr=False)
    tasks: TaskContext | None = None
    groups: GroupContext | None = None
    sync: SyncContext | None = None
    session_ttl: float = DEFAULT_SESSION_TTL
    # Secure cookies when the console is reached over HTTPS (FERRY_PUBLIC_URL https://...).
    secure_cookies: bool = False
    signed_out: SignedOut = field(default_factory=SignedOut)


async def get_console(request: Request) -> ConsoleContext:
    """FastAPI dependency: the ConsoleContext given to create_console."""
    ctx: ConsoleContext = getattr(request.app.state, CONSOLE_STATE)
    return ctx


Console = Annotated[ConsoleContext, Depends(get_console)]
