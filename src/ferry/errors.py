"""The one error taxonomy: decides retry, per-object failure, or abort.

    FerryError
    ├── UsageError                 bad input from a user (CLI exit 2, API 400)
    ├── TransientError             retry with backoff: throttling, 5xx, resets, timeouts
    │   ├── DigestMismatchError    the store refused bytes that did not match the checksum sent with them
    │   └── DamagedReadError       the bytes read do not match the source's own checksum (read again)
    ├── PermanentError             this object fails with a reason; the run goes on
    │   ├── NotFoundError          the object (or upload) does not exist
    │   ├── SourceChangedError     If-Match failed: the source changed mid-copy (retried by the engine)
    │   ├── ArchivedObjectError    the object is archived and not restored
    │   └── VerificationError      the written object does not match the source
    │       └── CdnMismatchError   the CDN served other bytes than the source bucket holds (never retried)
    ├── FatalError                 the whole run stops: bad credentials, missing bucket, unreachable endpoint
    │   ├── AccessError            the store refused the keys, a permission or the bucket: no retry or re-run
    │   │                          helps until the user fixes them (a task fails, `ferry migrate` exits 2)
    │   └── ListingOrderError      a listing broke the order its backend promised
    └── LocalStateError            Ferry's own state store (the data directory's disk, the SQLite file,
                                   PostgreSQL) cannot be used: the run pauses, and goes on once it can

Each backend maps its SDK's exceptions to these at its edge; nothing above storage sees an SDK exception.
Messages never carry secrets: backends build them from the operation, key and status only.
"""

from __future__ import annotations


class FerryError(Exception):
    """Base of every error Ferry raises on purpose."""

    code = "FERRY.0000"
    # Set on errors mapped from a store's answer: its HTTP status and S3 error code.
    http_status: int | None = None
    s3_code: str | None = None

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


class DamagedReadError(TransientError):
    """The bytes read from a source do not match a checksum the source itself vouches for (its MD5 ETag, a
    multipart ETag, a CRC64 or x-amz-checksum header): damaged on the way. Nothing of them is kept; the
    copy reads the object again from its first byte, and fails the object after a few such reads."""


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


class CdnMismatchError(VerificationError):
    """What a CDN served differs (size or checksum) from the object the source bucket lists: OMS's per-object
    reason COMPARE_SRC_AND_CDN_FAILURE, which starts the message. A stale CDN cache stays stale, so a retry
    would only fetch the same wrong bytes."""

    code = "FERRY.0461"
    reason = "COMPARE_SRC_AND_CDN_FAILURE"

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(f"{self.reason}: {message}", key=key)


class FatalError(FerryError):
    code = "FERRY.0500"


class AccessError(FatalError):
    """A store refused the keys, a permission or the bucket (AccessDenied, InvalidAccessKeyId,
    SignatureDoesNotMatch, NoSuchBucket, ...). `s3_code` is the store's code, `writing` says a write was
    refused, `origin` is the store that raised it; `side` ("source" or "destination") is filled in by the
    code that knows which store that is (the engine, a preflight)."""

    code = "FERRY.0403"

    def __init__(self, message: str, *, key: str | None = None, s3_code: str | None = None, writing: bool = False,
                 origin: object | None = None, credentials: str | None = None) -> None:
        super().__init__(message, key=key)
        self.s3_code = s3_code
        self.writing = writing
        self.origin = origin
        self.side: str | None = None
        # The setting that holds this store's credentials when it is not an AK/SK pair (`json_auth_file`).
        self.credentials = credentials

    def fix(self, ak: str, sk: str) -> str:
        """What the user must change, naming the settings `ak` and `sk` that hold this side's keys."""
        if self.credentials:
            ak = sk = self.credentials
        side = self.side or "store"
        if self.s3_code == "InvalidAccessKeyId":
            return f"the {side} does not know that access key: check {ak}"
        if self.s3_code == "SignatureDoesNotMatch":
            return f"the {side} secret key does not belong to the access key: check {sk}"
        if self.s3_code in ("ExpiredToken", "InvalidToken"):
            return f"the {side} security token is expired or invalid: give a fresh one"
        if self.s3_code == "NoSuchBucket":
            return f"the {side} bucket does not exist: create it or correct its name"
        if self.s3_code == "InvalidBucketName":
            return f"the {side} bucket name is not valid for this store: correct it"
        what = "write to" if self.writing else "read"
        return f"the {side} keys ({ak}) may not {what} this bucket: grant that permission or use other keys"


class ListingOrderError(FatalError):
    code = "FERRY.0501"


class LocalStateError(FerryError):
    """Ferry's own state cannot be read or written: `kind` is "disk_full", "locked", "unavailable" (a database
    restarting or unreachable) or "gone" (the SQLite file was deleted or replaced under a running process).
    Nothing about the objects is wrong; every kind but "gone" passes once the operator fixes the machine."""

    code = "FERRY.0507"

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def passes(self) -> bool:
        """Whether waiting (for space, for the lock, for the server) can end it."""
        return self.kind != "gone"
