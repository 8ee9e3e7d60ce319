"""The one error taxonomy: decides retry, per-object failure, or abort.

    FerryError
    ├── UsageError                 bad input from a user (CLI exit 2, API 400)
    ├── TransientError             retry with backoff: throttling, 5xx, resets, timeouts
    │   └── DigestMismatchError    the store refused bytes that did not match the checksum sent with them
    ├── PermanentError             this object fails with a reason; the run goes on
    │   ├── NotFoundError          the object (or upload) does not exist
    │   ├── SourceChangedError     If-Match failed: the source changed mid-copy (retried by the engine)
    │   ├── ArchivedObjectError    the object is archived and not restored
    │   └── VerificationError      the written object does not match the source
    └── FatalError                 the whole run stops: bad credentials, missing bucket, unreachable endpoint
        └── ListingOrderError      a listing broke the order its backend promised

Each backend maps its SDK's exceptions to these at its edge; nothing above storage sees an SDK exception.
Messages never carry secrets: backends build them from the operation, key and status only.
"""

from __future__ import annotations


class FerryError(Exception):
    """Base of every error Ferry raises on purpose."""

    code = "FERRY.0000"

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key


class UsageError(FerryError):
    code = "FERRY.0400"


class TransientError(FerryError):
    code = "FERRY.0503"

    def __init__(self, message: str, *, key: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, key=key)
        self.retry_after = retry_after


class DigestMismatchError(TransientError):
    """The store refused a write whose bytes did not match the Content-MD5 (or other checksum) sent with
    it, and kept nothing. Damage on the way heals on another try; a checksum that was wrong to begin with
    does not, so a caller that took it on trust tries again with its own."""


class PermanentError(FerryError):
    code = "FERRY.0422"


class NotFoundError(PermanentError):
    code = "FERRY.0404"


class SourceChangedError(PermanentError):
    code = "FERRY.0412"


class ArchivedObjectError(PermanentError):
    code = "FERRY.0409"


class VerificationError(PermanentError):
    code = "FERRY.0460"


class FatalError(FerryError):
    code = "FERRY.0500"


class ListingOrderError(FatalError):
    code = "FERRY.0501"


def is_retryable(exc: BaseException) -> bool:
    """True for failures worth another attempt (transient, or a source that changed under us)."""
    return isinstance(exc, TransientError | SourceChangedError)
