"""Bounded fuzzing of the live API (schemathesis from its OpenAPI, plus raw hypothesis requests): never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import quote

import pytest
import requests
import schemathesis
from fastapi import APIRouter, Query
from ferry_service import FerryService, start_service
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from live_server import LiveServer, start_live, stop
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from sdk_signing import SdkSigningAuth
from starlette.responses import JSONResponse

from ferry.api.deps import ok
from ferry.oms import (
    BatchUpdateTasksReq,
    CreateSyncTaskReq,
    CreateTaskGroupReq,
    CreateTaskReq,
    EmptyResponse,
    ListSyncTaskStatisticQuery,
    ListTasksQuery,
    ShowBucketReq,
    SyncObjectReq,
    TaskId,
)
from ferry.service.tasks import create_task

# Test-only routes that parse the bigger request models, so their validators are fuzzed too.
validators = APIRouter()


@validators.post("/tasks", response_model=EmptyResponse)
def take_task(body: CreateTaskReq) -> JSONResponse:
    return ok(EmptyResponse())


@validators.post("/taskgroups", response_model=EmptyResponse)
def take_group(body: CreateTaskGroupReq) -> JSONResponse:
    return ok(EmptyResponse())


@validators.post("/sync-tasks", response_model=EmptyResponse)
def take_sync(body: CreateSyncTaskReq) -> JSONResponse:
    return ok(EmptyResponse())


@validators.post("/sync-tasks/{sync_task_id}/events", response_model=EmptyResponse)
def take_events(sync_task_id: str, body: SyncObjectReq) -> JSONResponse:
    return ok(EmptyResponse())


@validators.get("/sync-tasks/{sync_task_id}/statistics", response_model=EmptyResponse)
def take_stats(sync_task_id: str, query: Annotated[ListSyncTaskStatisticQuery, Query()]) -> JSONResponse:
    return ok(EmptyResponse())


@validators.get("/tasks", response_model=EmptyResponse)
def take_list(query: Annotated[ListTasksQuery, Query()]) -> JSONResponse:
    return ok(EmptyResponse())


@validators.get("/tasks/{task_id}", response_model=EmptyResponse)
def take_task_id(task_id: TaskId) -> JSONResponse:
    return ok(EmptyResponse())


@validators.post("/tasks/batch-update", response_model=EmptyResponse)
def take_batch(body: BatchUpdateTasksReq) -> JSONResponse:
    return ok(EmptyResponse())


@validators.post("/objectstorage/buckets/objects", response_model=EmptyResponse)
def take_bucket_listing(body: ShowBucketReq) -> JSONResponse:
    return ok(EmptyResponse())


@pytest.fixture(scope="module")
def fuzz_target() -> Iterator[LiveServer]:
    server, running = start_live([validators])
    try:
        yield server
    finally:
        stop(running)


@pytest.fixture(scope="module")
def session(fuzz_target: LiveServer) -> requests.Session:
    s = requests.Session()
    s.auth = SdkSigningAuth(fuzz_target.tenant.ak, fuzz_target.tenant.sk, fuzz_target.tenant.project_id)
    s.headers["X-Project-Id"] = fuzz_target.tenant.project_id
    return s


# Per operation and mode; with the raw fuzz below the module stays well under 30 s on a 2-core machine.
EXAMPLES = 6


def assert_oms_answer(resp: Any) -> None:
    """A requests or schemathesis response: not 5xx, a request id, and an OMS error body on failure."""
    assert resp.status_code < 500, resp.text
    # schemathesis keeps headers lower-cased, each as a list.
    request_id = resp.headers.get("X-Request-Id") or resp.headers.get("x-request-id") or ""
    request_id = request_id[0] if isinstance(request_id, list) else request_id
    assert len(request_id) == 32
    if resp.status_code >= 400:
        body = resp.json()
        assert set(body) == {"error_code", "error_msg"}, body


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schema_fuzz_signed(fuzz_target: LiveServer, session: requests.Session, mode: GenerationMode) -> None:
    # Driven through hypothesis directly: schemathesis' own pytest plugin does not run under pytest 9.
    schema = schemathesis.openapi.from_dict(fuzz_target.app.openapi(), config=SchemathesisConfig())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    for operation in operations:
        # Mostly our own project, so requests get past authorisation into validation and the routes.
        pinned = {"project_id": fuzz_target.tenant.project_id} if "{project_id}" in operation.path else None

        @given(case=operation.as_strategy(mode, path_parameters=pinned))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def call(case: Any) -> None:
            assert_oms_answer(case.call(base_url=fuzz_target.url, session=session, timeout=60))

        try:
            call()
        except Unsatisfiable:
            # Nothing to break in an operation without parameters or body (e.g. GET /) in negative mode.
            assert mode is GenerationMode.NEGATIVE


_METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
_SEGMENT = st.one_of(
    st.sampled_from(["v2", "objectstorage", "cloud-type", "data-center", "privacy-agreements", "tasks", "", ".."]),
    st.text(min_size=1, max_size=12),
)
# requests itself refuses header values with leading whitespace.
_HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80).map(str.strip)


@given(
    method=_METHODS,
    segments=st.lists(_SEGMENT, max_size=5),
    own_project=st.booleans(),
    query=st.dictionaries(st.sampled_from(["type", "limit", "x", "状态"]), st.text(max_size=10), max_size=3),
    authorization=st.one_of(
        st.none(),
        _HEADER_TEXT,
        _HEADER_TEXT.map(lambda t: f"SDK-HMAC-SHA256 Access={t}, SignedHeaders=host;x-sdk-date, Signature={t}"),
    ),
    sdk_date=st.one_of(st.none(), _HEADER_TEXT, st.just("20261124T191903Z")),
    token=st.one_of(st.none(), _HEADER_TEXT),
    body=st.one_of(st.none(), st.binary(max_size=200), st.just(b'{"a": [1, {"b": null}]}')),
)
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_raw_requests_never_5xx(
    fuzz_target: LiveServer,
    method: str,
    segments: list[str],
    own_project: bool,
    query: dict[str, str],
    authorization: str | None,
    sdk_date: str | None,
    token: str | None,
    body: bytes | None,
) -> None:
    head = ["v2", fuzz_target.tenant.project_id] if own_project else []
    path = "/" + "/".join(quote(s, safe="") for s in [*head, *segments])
    headers = {"X-Project-Id": fuzz_target.tenant.project_id, "Content-Type": "application/json"}
    for name, value in (("Authorization", authorization), ("X-Sdk-Date", sdk_date), ("X-Auth-Token", token)):
        if value is not None:
            headers[name] = value
    resp = requests.request(method, fuzz_target.url + path, params=query, headers=headers, data=body, timeout=60)
    assert resp.status_code < 500, (method, path, resp.text)
    if method != "HEAD":
        assert_oms_answer(resp)


# -- the real migration-task routes over a real database (runner off: tasks stay put) ---------------------------


@pytest.fixture(scope="module")
def task_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerryService]:
    home = tmp_path_factory.mktemp("fuzz-tasks")
    started = start_service(home, f"sqlite:///{home / 'ferry.db'}", run_tasks=False)
    try:
        yield started.value
    finally:
        started.close()


def _real_task(target: FerryService) -> int:
    ctx = target.service.services.tasks
    assert ctx is not None
    body = CreateTaskReq.model_validate({
        "task_type": "prefix",
        "src_node": {"cloud_type": "Aliyun", "region": "cn-hangzhou", "ak": "AK", "sk": "SK", "bucket": "fuzz-src"},
        "dst_node": {"ak": "AK", "sk": "SK", "bucket": "fuzz-dst", "region": "cn-north-4"},
    })
    created = create_task(ctx, target.tenant.project_id, body)
    assert created.id is not None
    return created.id


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_task_routes_fuzz(task_target: FerryService, mode: GenerationMode) -> None:
    s = requests.Session()
    s.auth = SdkSigningAuth(task_target.tenant.ak, task_target.tenant.sk, task_target.tenant.project_id)
    s.headers["X-Project-Id"] = task_target.tenant.project_id
    schema = schemathesis.openapi.from_dict(task_target.service.app.openapi(), config=SchemathesisConfig())
    operations = [r.ok() for r in schema.get_all_operations() if "/tasks" in r.ok().path]
    assert len(operations) == 8
    for operation in operations:
        # Half the cases aim at a task that exists, so start/stop/delete/updates reach their state checks.
        pins: list[dict[str, Any]] = [{"project_id": task_target.tenant.project_id}]
        if "{task_id}" in operation.path:
            pins.append({**pins[0], "task_id": _real_task(task_target)})
        for pinned in pins:

            @given(case=operation.as_strategy(mode, path_parameters=pinned))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def call(case: Any) -> None:
                assert_oms_answer(case.call(base_url=task_target.url, session=s, timeout=60))

            try:
                call()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE
