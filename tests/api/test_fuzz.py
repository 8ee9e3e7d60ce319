"""Bounded fuzzing of the live API (schemathesis from its OpenAPI, plus raw hypothesis requests): never a 5xx."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import requests
import schemathesis
from ferry_service import DST_REGION, SRC_REGION, FerryService, overrides, start_service
from huaweicloudsdkoms.v2 import CreateSyncTaskReq as SdkSyncReq
from huaweicloudsdkoms.v2 import CreateSyncTaskRequest, CreateTaskGroupRequest, TaskGroupDstNode, TaskGroupSrcNode
from huaweicloudsdkoms.v2 import CreateTaskGroupReq as SdkGroupReq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from live_server import LiveServer, start_live, stop
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from sdk_signing import SdkSigningAuth

from ferry.api.deps import SERVICES_STATE, ApiServices
from ferry.oms import CreateTaskReq
from ferry.service.buckets import HelperSettings
from ferry.service.tasks import create_task


@pytest.fixture(scope="module")
def fuzz_target() -> Iterator[LiveServer]:
    server, running = start_live()
    try:
        yield server
    finally:
        stop(running)


# Per operation, id choice and mode; the schema fuzz over all 40 operations then takes about 20 s on a 2-core
# machine. FERRY_FUZZ_EXAMPLES=200 for a deeper run by hand.
EXAMPLES = int(os.environ.get("FERRY_FUZZ_EXAMPLES", "6"))


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


# -- every operation of the served document, on the real service over a real database -------------------------


@dataclass
class Target:
    service: FerryService
    # Path parameters naming things that exist, so updates, starts and deletes reach their state checks.
    ids: dict[str, Any]


@pytest.fixture(scope="module")
def service_target(seaweed_a: Any, seaweed_b: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    home = tmp_path_factory.mktemp("fuzz-service")
    started = start_service(home, f"sqlite:///{home / 'ferry.db'}", run_tasks=False)
    target = started.value
    try:
        app = target.service.app
        services: ApiServices = getattr(app.state, SERVICES_STATE)
        assert services.sync is not None and services.tasks is not None
        # Nothing a request names may reach the internet: the bucket helpers reach no store at all (so no CDN
        # domain is ever resolved), sync-task creation only the two local stores.
        local = HelperSettings(endpoint_overrides=overrides(seaweed_a, seaweed_b), public_endpoints=False)
        setattr(app.state, SERVICES_STATE, dataclasses.replace(
            services, bucket_helpers=HelperSettings(endpoint_overrides={}, public_endpoints=False),
            sync=dataclasses.replace(services.sync, access=local)))
        src, dst = f"fuzz-{uuid.uuid4().hex[:12]}", f"fuzz-{uuid.uuid4().hex[:12]}"
        seaweed_a.create_bucket(src)
        seaweed_b.create_bucket(dst)
        client = target.client()
        sync_id = client.create_sync_task(CreateSyncTaskRequest(body=SdkSyncReq(
            src_cloud_type="Aliyun", src_region=SRC_REGION, src_bucket=src, src_ak=seaweed_a.access_key,
            src_sk=seaweed_a.secret_key, dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key,
            dst_region=DST_REGION, dst_bucket=dst))).sync_task_id
        group_id = client.create_task_group(CreateTaskGroupRequest(body=SdkGroupReq(
            src_node=TaskGroupSrcNode(cloud_type="Aliyun", region=SRC_REGION, ak="AK", sk="SK", bucket=src,
                                      object_key=[""]),
            dst_node=TaskGroupDstNode(ak="AK", sk="SK", region=DST_REGION, bucket=dst)))).group_id
        yield Target(target, {"project_id": target.tenant.project_id, "task_id": _real_task(target),
                              "sync_task_id": sync_id, "group_id": group_id, "version": "v2"})
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
def test_every_operation_fuzz(service_target: Target, mode: GenerationMode) -> None:
    target = service_target.service
    s = requests.Session()
    s.auth = SdkSigningAuth(target.tenant.ak, target.tenant.sk, target.tenant.project_id)
    s.headers["X-Project-Id"] = target.tenant.project_id
    # The document as it is served, so what clients read is what is fuzzed.
    served = requests.get(target.url + "/openapi.json", timeout=30)
    assert served.status_code == 200
    schema = schemathesis.openapi.from_dict(served.json(), config=SchemathesisConfig())
    operations = [r.ok() for r in schema.get_all_operations()]
    documented = {(m.upper(), p) for p, ops in served.json()["paths"].items() for m in ops}
    # OMS's 35 operations, Ferry's 5 (failed objects, notification token, notifications, unsigned notifications,
    # the cluster's workers).
    assert {(o.method.upper(), o.path) for o in operations} == documented and len(documented) == 40
    called: Counter[str] = Counter()

    def fuzz(operation: Any, pinned: dict[str, Any] | None) -> None:
        @given(case=operation.as_strategy(mode, path_parameters=pinned))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def call(case: Any) -> None:
            called[operation.label] += 1
            assert_oms_answer(case.call(base_url=target.url, session=s, timeout=60))

        try:
            call()
        except Unsatisfiable:
            # Nothing to break in an operation without parameters or body (e.g. GET /) in negative mode.
            assert mode is GenerationMode.NEGATIVE

    for operation in operations:
        names = {p.name for p in operation.path_parameters}
        # Our own project, so requests get past authorisation into validation and the routes (the raw fuzz
        # below tries other projects); with random ids, then again with ids of things that exist (a task, a
        # group, a sync task), so updates, starts and deletes reach their state checks.
        own = {"project_id": target.tenant.project_id} if "project_id" in names else None
        fuzz(operation, own)
        if names - {"project_id"}:
            fuzz(operation, {name: service_target.ids[name] for name in names})
    if mode is GenerationMode.POSITIVE:
        assert set(called) == {o.label for o in operations}
