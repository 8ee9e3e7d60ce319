"""Turning console forms into the OMS request models the API takes, and refusals into the API's words."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from ferry import oms as s
from ferry.console.session import form_text
from ferry.errors import FerryError
from ferry.oms import OmsError, parse_request

M = TypeVar("M", bound=BaseModel)
MIB: Final = 1024 * 1024
# The keys a restart takes again (tasks and task groups alike); a field left empty is "not given".
KEY_FIELDS: Final = ("src_ak", "src_sk", "src_security_token", "connection_string", "json_auth_file",
                     "dst_ak", "dst_sk", "dst_security_token")
BANDWIDTH_ROWS: Final = s.MAX_BANDWIDTH_WINDOWS


def refusal(exc: FerryError | OmsError) -> tuple[int, str]:
    """The status and the words (with the OMS code) the API answers a refused operation with: the API's own
    mapping (`ferry.oms.refusal`), so a page never words an error differently."""
    answer = exc if isinstance(exc, OmsError) else s.refusal(exc)
    return answer.status, f"{answer.error_msg} ({answer.error_code})"


async def perform(action: Callable[[], None], refused: Callable[[int, str], Awaitable[Response]],
                  target: str) -> Response:
    """Run a state-changing operation (in a thread: the services are synchronous); on success redirect to
    `target` (303, so a reload does not post again), on refusal the page again via `refused(status, words)`.
    A 404 is raised on: the object is not this project's, and the page must say no more than the API."""
    try:
        await run_in_threadpool(action)
    except (FerryError, OmsError) as exc:
        status, message = refusal(exc)
        if status == 404:
            raise
        return await refused(status, message)
    return RedirectResponse(target, status_code=303)


def filled(form: FormData, names: tuple[str, ...]) -> dict[str, str]:
    """The fields of `names` that were filled in: an empty field is "not given", like an absent JSON member."""
    return {n: v for n in names if (v := form_text(form, n))}


def keys_request(model: type[M], form: FormData, **extra: Any) -> M:
    """`model` (StartTaskReq, StartTaskGroupReq, RetryTaskGroupReq...) from the key fields, validated as the
    API validates its body (an OmsError 400 with the API's message when it does not hold)."""
    return parse_request(model, {**filled(form, KEY_FIELDS), **extra})


def bandwidth_request(form: FormData) -> s.UpdateBandwidthPolicyReq:
    """Windows from the form's rows (`start_i`, `end_i`, `mib_i` in MiB/s); empty rows are left out, and no row
    at all clears the policy."""
    policies: list[dict[str, Any]] = []
    for i in range(BANDWIDTH_ROWS):
        start, end, rate = (form_text(form, f"{n}_{i}") for n in ("start", "end", "mib"))
        if not (start or end or rate):
            continue
        try:
            limit: Any = round(float(rate) * MIB)
        except ValueError:
            limit = rate  # refused by the model, in its words
        policies.append({"start": start, "end": end, "max_bandwidth": limit})
    return parse_request(s.UpdateBandwidthPolicyReq, {"bandwidth_policy": policies})
