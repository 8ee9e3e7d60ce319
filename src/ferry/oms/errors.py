"""OMS error codes and texts, OmsError, and pydantic validation errors turned into OMS errors (§3.5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ValidationError

from ferry.errors import FerryError, LocalStateError, NotFoundError, TransientError, UsageError

# Huawei documents error_msg as at most 1024 characters; longer ones are cut rather than rejected by clients.
MAX_MESSAGE: Final = 1024
# The pydantic error type of a description with a forbidden character (it has an OMS code of its own).
DESCRIPTION_CHARS_ERROR: Final = "description_chars"
# The context key of a rule that ties fields together (`combination`): the fields it is about, comma-separated
# and relative to the model whose validator raised it, so the error can be shown next to them.
FIELDS_CONTEXT: Final = "fields"


class Codes:
    """Every error code Ferry answers with: OMS.* from the OMS error table, APIGW.* from the API gateway's.

    Where the OMS reference names no code, a helper's code mirrors the TRF task-failure code of the same
    meaning (TRF.0151 invalid source AK/SK -> OMS.0151, and so on)."""

    INVALID_PARAMETER: Final = "OMS.0001"
    INVALID_TASK_ID: Final = "OMS.0054"
    REGION_UNSUPPORTED: Final = "OMS.0060"  # documented: migration in this region is not supported
    INVALID_TASK_FORMAT: Final = "OMS.0061"
    # OMS.0070 mirrors the legacy S3M.0070 ("the task status does not allow this"): v2's code for it was not
    # recoverable. OMS.0077 is the row just before OMS.0078 in Huawei's table ("you created more tasks than
    # the limit"), so every quota answers with it.
    STATUS_CONFLICT: Final = "OMS.0070"
    QUOTA: Final = "OMS.0077"
    DESCRIPTION_CHARS: Final = "OMS.0078"
    SMN_TOPIC: Final = "OMS.0169"
    NOT_FOUND: Final = "OMS.1009"
    CDN_KEY: Final = "OMS.1032"  # documented: "CDN authentication key required" (for the chosen type)
    # The bucket helpers (§1.5), HTTP 400.
    SRC_AUTH: Final = "OMS.0151"  # TRF.0151: the source AK/SK is invalid
    SRC_DENIED: Final = "OMS.0152"  # TRF.0152-0154: the source AK/SK lacks a permission
    SRC_BUCKET: Final = "OMS.0155"  # TRF.0155: the source bucket does not exist
    UNREACHABLE: Final = "OMS.0156"  # the cloud cannot be reached or answered something unusable
    DST_DENIED: Final = "OMS.0051"  # TRF.0051: the destination AK/SK lacks a permission
    DST_AUTH: Final = "OMS.0057"  # TRF.0057: the destination AK/SK is invalid
    DST_BUCKET: Final = "OMS.0058"  # TRF.0058: the destination bucket does not exist
    LIST_MISSING: Final = "OMS.0013"  # TRF.0013: list file missing or unreadable
    LIST_TOO_BIG: Final = "OMS.0014"  # TRF.0014: list file must be a .txt file of at most 100 MB
    LIST_FORMAT: Final = "OMS.0016"  # TRF.0016: bad line format
    LIST_EMPTY: Final = "OMS.0017"  # TRF.0017: list file is empty
    LIST_LINE_TOO_LONG: Final = "OMS.0018"  # TRF.0018: a line longer than 65535 characters
    LIST_CONTENT_TYPE: Final = "OMS.0019"  # TRF.0019: must be text/plain without Content-Encoding
    # Not in the recovered OMS table: self-chosen codes in the same family for "our fault" and "retry later".
    INTERNAL: Final = "OMS.0000"
    UNAVAILABLE: Final = "OMS.0503"
    NO_API: Final = "APIGW.0101"
    TOO_LARGE: Final = "APIGW.0201"
    # APIG answers every malformed or incomplete request with APIGW.0201, the code of 413 too.
    REQUEST_TIMEOUT: Final = "APIGW.0201"
    AUTH_FAILED: Final = "APIGW.0301"
    FORBIDDEN: Final = "APIGW.0302"
    # Huawei's API gateway answers 429 APIG.0308 "The throttling threshold has been reached"; in our APIGW family.
    THROTTLED: Final = "APIGW.0308"


class Messages:
    """Fixed texts, so that no message is built from request data by accident."""

    INVALID_PARAMETER: Final = "Invalid parameter settings. Modify the request parameters."
    INVALID_TASK_ID: Final = "Invalid task ID. Enter a valid task ID."
    DESCRIPTION_CHARS: Final = "The description cannot contain the following special characters: ^<>()\"'&"
    NOT_FOUND: Final = "No resources found."
    INTERNAL: Final = "Internal server error. Retry later; if it persists, contact the administrator."
    UNAVAILABLE: Final = "The service is temporarily unavailable. Retry later."
    NO_API: Final = "The API does not exist or has not been published in the environment."
    NO_METHOD: Final = "The API does not exist."
    TOO_LARGE: Final = "Request entity too large."
    REQUEST_TIMEOUT: Final = "Request timeout: the request body did not arrive in time."
    AUTH_FAILED: Final = "Incorrect IAM authentication information: verify aksk signature fail"
    # Tells a replayer nothing new, and a client that sent the same call twice within a second what to do.
    REPLAYED: Final = ("Incorrect IAM authentication information: this signed request was already received; "
                       "sign it again (X-Sdk-Date moves every second)")
    FORBIDDEN: Final = "The IAM user is not authorized to access the API."


class OmsError(Exception):
    """An API failure with its HTTP status and the OMS `error_code`/`error_msg` pair the SDK parses."""

    def __init__(self, status: int, error_code: str, error_msg: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {error_code}: {error_msg}")
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg[:MAX_MESSAGE]
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error_code": self.error_code, "error_msg": self.error_msg}

    @classmethod
    def invalid_parameter(cls, detail: str | None = None) -> OmsError:
        msg = Messages.INVALID_PARAMETER if not detail else f"{Messages.INVALID_PARAMETER} {detail}"
        return cls(400, Codes.INVALID_PARAMETER, msg)

    @classmethod
    def not_found(cls, detail: str | None = None) -> OmsError:
        msg = Messages.NOT_FOUND if not detail else f"{Messages.NOT_FOUND} {detail}"
        return cls(404, Codes.NOT_FOUND, msg)

    @classmethod
    def unauthorized(cls) -> OmsError:
        # One message for every authentication failure: which check failed is of use only to an attacker.
        return cls(401, Codes.AUTH_FAILED, Messages.AUTH_FAILED)

    @classmethod
    def replayed(cls) -> OmsError:
        return cls(401, Codes.AUTH_FAILED, Messages.REPLAYED)

    @classmethod
    def forbidden(cls) -> OmsError:
        return cls(403, Codes.FORBIDDEN, Messages.FORBIDDEN)

    @classmethod
    def internal(cls) -> OmsError:
        return cls(500, Codes.INTERNAL, Messages.INTERNAL)


# ---------------------------------------------------------------------------------------------------------------
# Validation errors -> OMS errors (§3.5)
# ---------------------------------------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)
_LOCATIONS: Final = frozenset({"body", "query", "path", "header", "cookie"})
_MAX_DETAILS: Final = 3


def _where(loc: Sequence[Any]) -> str:
    parts = list(loc)
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:] if len(parts) > 1 else parts
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "request"


def _describe(error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "json_invalid":
        return "is not valid JSON"
    if kind in ("too_long", "string_too_long"):
        limit = ctx.get("max_length")
        return f"is too long (at most {limit})" if limit is not None else "is too long"
    if kind in ("too_short", "string_too_short"):
        limit = ctx.get("min_length")
        return f"is too short (at least {limit})" if limit is not None else "is too short"
    # Everything else carries pydantic's or our own text, neither of which quotes the input.
    msg = str(error.get("msg", "is invalid"))
    return msg.removeprefix("Value error, ")


def oms_error_for_validation(errors: Sequence[Any]) -> OmsError:
    """Turn pydantic/FastAPI validation errors into the documented OMS error (always HTTP 400)."""
    items = [e for e in errors if isinstance(e, Mapping)]
    if any(e.get("type") == DESCRIPTION_CHARS_ERROR for e in items):
        return OmsError(400, Codes.DESCRIPTION_CHARS, Messages.DESCRIPTION_CHARS)
    if any(tuple(e.get("loc", ()))[:2] == ("path", "task_id") for e in items):
        return OmsError(400, Codes.INVALID_TASK_ID, Messages.INVALID_TASK_ID)
    details = "; ".join(f"{_where(e.get('loc', ()))}: {_describe(e)}" for e in items[:_MAX_DETAILS])
    if len(items) > _MAX_DETAILS:
        details += f"; and {len(items) - _MAX_DETAILS} more"
    return OmsError.invalid_parameter(details or None)


@dataclass(frozen=True, slots=True)
class FieldError:
    """One validation error of a request, told against the field it is about (`src_node.bucket`,
    `bandwidth_policy[0].start`; `request` when it names none), with the OMS code the API would answer."""

    field: str
    code: str
    message: str


def field_errors(errors: Sequence[Any]) -> list[FieldError]:
    """The validation errors of a request, one per field they concern, in the API's own words: a form shows
    each next to its field, where the API joins them into one OMS.0001 message (`oms_error_for_validation`)."""
    out: list[FieldError] = []
    for error in (e for e in errors if isinstance(e, Mapping)):
        loc = list(error.get("loc", ()))
        ctx = error.get("ctx") or {}
        code = Codes.DESCRIPTION_CHARS if error.get("type") == DESCRIPTION_CHARS_ERROR else Codes.INVALID_PARAMETER
        message = _describe(error)
        named = str(ctx.get(FIELDS_CONTEXT) or "")
        if named:
            out.extend(FieldError(_where([*loc, *name.split(".")]), code, message) for name in named.split(","))
        else:
            out.append(FieldError(_where(loc), code, message))
    return out


def refusal(exc: FerryError) -> OmsError:
    """The OMS answer to a service call that failed: one mapping for the API and the console.

    An error that carries its own `status` and `oms_code` (a refused task operation, a bucket helper's
    verdict, a quota) answers with them; otherwise the taxonomy decides, and only UsageError messages
    (written for users) are shown."""
    status, code = getattr(exc, "status", None), getattr(exc, "oms_code", None)
    if isinstance(status, int) and isinstance(code, str):
        retry_after = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after else None
        return OmsError(status, code, exc.message, headers=headers)
    if isinstance(exc, UsageError):
        return OmsError.invalid_parameter(exc.message)
    if isinstance(exc, NotFoundError):
        return OmsError.not_found()
    if isinstance(exc, TransientError):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else None
        return OmsError(503, Codes.UNAVAILABLE, Messages.UNAVAILABLE, headers=headers)
    if isinstance(exc, LocalStateError):
        # The server's own disk or database: the request may succeed once the operator fixed it.
        return OmsError(503, Codes.UNAVAILABLE, Messages.UNAVAILABLE, headers={"Retry-After": "5"})
    return OmsError.internal()


def parse_request(model: type[M], data: Any) -> M:
    """Validate `data` (a decoded JSON value or query mapping) as `model`, raising the mapped OmsError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise oms_error_for_validation(exc.errors(include_input=False)) from None
