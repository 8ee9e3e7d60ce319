"""End-to-end: the real huaweicloudsdkoms OmsClient against a live Ferry API server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
import requests
from fastapi import APIRouter
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkoms.v2 import (
    ListApiVersionsRequest,
    ShowApiInfoRequest,
    ShowCloudTypeRequest,
    ShowRegionInfoRequest,
    UpdatePrivacyAgreementRecordRequest,
)
from live_server import LiveServer, oms_client, start_live, stop
from pydantic import BaseModel
from sdk_signing import SdkSigningAuth
from starlette.responses import JSONResponse

from ferry import oms
from ferry.api.deps import CurrentPrincipal, ok
from ferry.errors import FatalError, NotFoundError, UsageError
from ferry.oms import CreateSyncTaskReq, CreateSyncTaskResponse, EmptyResponse

AUTH_FAILED = {
    "error_code": "APIGW.0301",
    "error_msg": "Incorrect IAM authentication information: verify aksk signature fail",
}


def assert_oms_error(exc: ClientRequestException, status: int, code: str) -> None:
    assert exc.status_code == status
    assert exc.error_code == code
    assert exc.request_id and len(exc.request_id) == 32


def test_list_api_versions(client: object, live: LiveServer) -> None:
    resp = client.list_api_versions(ListApiVersionsRequest())  # type: ignore[attr-defined]
    assert resp.status_code == 200
    [v2] = resp.versions
    assert (v2.id, v2.status) == ("v2", "CURRENT")
    assert v2.links[0].href == f"{live.url}/v2/" and v2.links[0].rel == "self"
    assert v2.updated.endswith("Z")


def test_show_api_info(client: object) -> None:
    resp = client.show_api_info(ShowApiInfoRequest(version="v2"))  # type: ignore[attr-defined]
    assert (resp.id, resp.status) == ("v2", "CURRENT")
    with pytest.raises(ClientRequestException) as info:
        client.show_api_info(ShowApiInfoRequest(version="v1"))  # type: ignore[attr-defined]
    assert_oms_error(info.value, 404, "APIGW.0101")


def test_show_cloud_type(client: object) -> None:
    src = client.show_cloud_type(ShowCloudTypeRequest(type="src"))  # type: ignore[attr-defined]
    assert src.body == [c.value for c in oms.SOURCE_CLOUDS]
    assert "URLSource" in src.body and "Google" in src.body
    dst = client.show_cloud_type(ShowCloudTypeRequest(type="dst"))  # type: ignore[attr-defined]
    assert dst.body == [c.value for c in oms.DESTINATION_CLOUDS]
    with pytest.raises(ClientRequestException) as info:
        client.show_cloud_type(ShowCloudTypeRequest(type="sideways"))  # type: ignore[attr-defined]
    assert_oms_error(info.value, 400, "OMS.0001")
    assert "type" in info.value.error_msg


def test_show_region_info(client: object) -> None:
    resp = client.show_region_info(ShowRegionInfoRequest())  # type: ignore[attr-defined]
    by_cloud = {item.service_name: item.region_list for item in resp.body}
    assert set(by_cloud) == {c.value for c, _ in oms.region_table()}
    huawei = {r.value: r for r in by_cloud["HuaweiCloud"]}
    assert "cn-north-4" in huawei and huawei["cn-north-4"].cloud_type == "HuaweiCloud"
    assert huawei["cn-north-4"].description


def test_update_privacy_agreement_record(client: object, live: LiveServer) -> None:
    before = len(live.privacy_records)
    resp = client.update_privacy_agreement_record(UpdatePrivacyAgreementRecordRequest())  # type: ignore[attr-defined]
    assert resp.status_code == 200
    assert live.privacy_records[before:] == [live.tenant.project_id]


def test_bad_signature(live: LiveServer) -> None:
    bad = oms_client(live.url, live.tenant.ak, live.tenant.sk + "x", live.tenant.project_id)
    with pytest.raises(ClientRequestException) as info:
        bad.show_cloud_type(ShowCloudTypeRequest(type="src"))
    assert_oms_error(info.value, 401, "APIGW.0301")
    assert info.value.error_msg == AUTH_FAILED["error_msg"]
    unknown = oms_client(live.url, "NOSUCHKEY", live.tenant.sk, live.tenant.project_id)
    with pytest.raises(ClientRequestException) as info2:
        unknown.show_region_info(ShowRegionInfoRequest())
    assert (info2.value.status_code, info2.value.error_msg) == (401, AUTH_FAILED["error_msg"])


def test_wrong_project(live: LiveServer) -> None:
    # Valid keys, but used for the other tenant's project.
    sneaky = oms_client(live.url, live.tenant.ak, live.tenant.sk, live.other.project_id)
    with pytest.raises(ClientRequestException) as info:
        sneaky.update_privacy_agreement_record(UpdatePrivacyAgreementRecordRequest())
    assert_oms_error(info.value, 403, "APIGW.0302")
    assert live.other.project_id not in live.privacy_records


def test_expired_date(client: object, live: LiveServer) -> None:
    live.clock.offset = timedelta(minutes=16)
    with pytest.raises(ClientRequestException) as info:
        client.show_cloud_type(ShowCloudTypeRequest(type="src"))  # type: ignore[attr-defined]
    assert_oms_error(info.value, 401, "APIGW.0301")
    live.clock.offset = timedelta(minutes=-14)
    assert client.show_cloud_type(ShowCloudTypeRequest(type="src")).status_code == 200  # type: ignore[attr-defined]


def test_versions_are_public(live: LiveServer) -> None:
    for path in ("/", "/v2", "/v2/"):
        resp = requests.get(live.url + path, timeout=5)
        assert resp.status_code == 200, path
        assert len(resp.headers["X-Request-Id"]) == 32


def signed_session(live: LiveServer) -> requests.Session:
    session = requests.Session()
    session.auth = SdkSigningAuth(live.tenant.ak, live.tenant.sk, live.tenant.project_id)
    session.headers["X-Project-Id"] = live.tenant.project_id
    return session


def test_unknown_route_and_method(live: LiveServer) -> None:
    session = signed_session(live)
    base = f"{live.url}/v2/{live.tenant.project_id}"
    for url in (f"{base}/nope", f"{live.url}/v9/x/y", f"{base}/tasks"):
        resp = session.get(url, timeout=5)
        assert resp.status_code == 404
        assert resp.json() == {
            "error_code": "APIGW.0101",
            "error_msg": "The API does not exist or has not been published in the environment.",
        }
        assert len(resp.headers["X-Request-Id"]) == 32
    resp = session.delete(f"{base}/objectstorage/cloud-type", timeout=5)
    assert resp.status_code == 405
    assert resp.json()["error_code"] == "APIGW.0101"
    assert "GET" in resp.headers["Allow"]


def test_trailing_slash_and_request_ids(live: LiveServer) -> None:
    session = signed_session(live)
    base = f"{live.url}/v2/{live.tenant.project_id}"
    a = session.get(f"{base}/objectstorage/cloud-type/", params={"type": "dst"}, timeout=5)
    b = session.get(f"{base}/objectstorage/cloud-type", params={"type": "dst"}, timeout=5)
    assert a.status_code == b.status_code == 200 and a.json() == b.json()
    assert a.headers["X-Request-Id"] != b.headers["X-Request-Id"]
    assert a.headers["Content-Type"] == "application/json"
    # The server's own time for the request, so a slow call can be told from a slow network.
    for resp in (a, b, requests.get(f"{base}/objectstorage/data-center", timeout=5)):
        name, _, took = resp.headers["Server-Timing"].partition(";dur=")
        assert name == "app" and 0 <= float(took) < 5000


def test_unsigned_and_token_auth(live: LiveServer) -> None:
    url = f"{live.url}/v2/{live.tenant.project_id}/objectstorage/data-center"
    resp = requests.get(url, timeout=5)
    assert (resp.status_code, resp.json()) == (401, AUTH_FAILED)
    assert len(resp.headers["X-Request-Id"]) == 32
    assert requests.get(url, headers={"X-Auth-Token": live.tenant.token}, timeout=5).status_code == 200
    assert requests.get(url, headers={"X-Auth-Token": "forged"}, timeout=5).status_code == 401
    other = f"{live.url}/v2/{live.other.project_id}/objectstorage/data-center"
    assert requests.get(other, headers={"X-Auth-Token": live.tenant.token}, timeout=5).status_code == 403


# --- body handling and failure mapping, through a router that exists only in this test -----------------------

probe = APIRouter()


@probe.post("/sync-tasks", response_model=CreateSyncTaskResponse)
def create_sync_task_probe(body: CreateSyncTaskReq, principal: CurrentPrincipal) -> JSONResponse:
    return ok(CreateSyncTaskResponse(sync_task_id=f"{principal.project_id}:{body.src_bucket}"))


class _Kind(BaseModel):
    kind: str


@probe.post("/explode", response_model=EmptyResponse)
def explode(body: _Kind) -> JSONResponse:
    failures: dict[str, Exception] = {
        "usage": UsageError("the bucket name is not valid for this cloud"),
        "missing": NotFoundError("no such task: secret-detail"),
        "fatal": FatalError("db password=hunter2 rejected"),
        "bug": RuntimeError("traceback material password=hunter2"),
    }
    raise failures[body.kind]


@pytest.fixture(scope="module")
def probed() -> Iterator[LiveServer]:
    server, running = start_live([probe])
    try:
        yield server
    finally:
        stop(running)


SYNC_BODY = {
    "src_region": "cn-hangzhou",
    "src_bucket": "srcb",
    "src_ak": "SAK",
    "src_sk": "SSK-SECRET",
    "dst_ak": "DAK",
    "dst_sk": "DSK-SECRET",
    "dst_region": "cn-north-4",
    "dst_bucket": "dstb",
}


def test_sdk_body_reaches_route(probed: LiveServer) -> None:
    from huaweicloudsdkoms.v2 import CreateSyncTaskReq as SdkReq
    from huaweicloudsdkoms.v2 import CreateSyncTaskRequest

    client = oms_client(probed.url, probed.tenant.ak, probed.tenant.sk, probed.tenant.project_id)
    resp = client.create_sync_task(CreateSyncTaskRequest(body=SdkReq(**SYNC_BODY, description="日本語 d1")))
    assert resp.sync_task_id == f"{probed.tenant.project_id}:srcb"
    with pytest.raises(ClientRequestException) as info:
        client.create_sync_task(CreateSyncTaskRequest(body=SdkReq(**{**SYNC_BODY, "description": "a<b"})))
    assert_oms_error(info.value, 400, "OMS.0078")
    with pytest.raises(ClientRequestException) as info:
        client.create_sync_task(CreateSyncTaskRequest())
    assert_oms_error(info.value, 400, "OMS.0001")
    assert "SSK-SECRET" not in info.value.error_msg


def test_malformed_and_oversized_bodies(probed: LiveServer) -> None:
    session = signed_session(probed)
    url = f"{probed.url}/v2/{probed.tenant.project_id}/sync-tasks"
    headers = {"Content-Type": "application/json;charset=utf-8"}
    for raw in (b'{"src_region": ', b"[1, 2]", b"\xff\xfe", b"null", b'"x"'):
        resp = session.post(url, data=raw, headers=headers, timeout=5)
        assert resp.status_code == 400, raw
        assert resp.json()["error_code"] == "OMS.0001"
        assert set(resp.json()) == {"error_code", "error_msg"}
    resp = session.post(url, data=b'{"a": "' + b"x" * (2 * 1024 * 1024) + b'"}', headers=headers, timeout=10)
    assert resp.status_code == 413 and resp.json()["error_code"] == "APIGW.0201"
    # Without a Content-Length (chunked), the cap applies while the body streams in (before authentication).
    chunks = (b"x" * 65536 for _ in range(40))
    resp = requests.post(url, data=chunks, headers=headers, timeout=10)
    assert resp.status_code == 413 and resp.json()["error_code"] == "APIGW.0201"
    unsigned = requests.post(url, data=b'{"src_region": ', headers=headers, timeout=5)
    assert unsigned.status_code in (400, 401)
    unsigned = requests.post(url, data=json.dumps(SYNC_BODY), headers=headers, timeout=5)
    assert unsigned.status_code == 401


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("usage", 400, "OMS.0001"), ("missing", 404, "OMS.1009"), ("fatal", 500, "OMS.0000"), ("bug", 500, "OMS.0000")],
)
def test_failures_never_leak(
    probed: LiveServer, kind: str, status: int, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    session = signed_session(probed)
    resp = session.post(f"{probed.url}/v2/{probed.tenant.project_id}/explode", json={"kind": kind}, timeout=5)
    assert (resp.status_code, resp.json()["error_code"]) == (status, code)
    assert set(resp.json()) == {"error_code", "error_msg"}
    assert "hunter2" not in resp.text and "secret-detail" not in resp.text and "Traceback" not in resp.text
    assert len(resp.headers["X-Request-Id"]) == 32
    if kind == "usage":
        assert "not valid for this cloud" in resp.json()["error_msg"]
    if kind == "bug":
        # The traceback goes to the log, tagged with the request id the client saw.
        assert any(resp.headers["X-Request-Id"] in r.getMessage() for r in caplog.records)


def test_unauthenticated_project_routes_are_refused_at_startup(live: LiveServer) -> None:
    from ferry.api.app import _check_every_project_route_is_authenticated

    app = live.app
    _check_every_project_route_is_authenticated(app)
    app.add_api_route("/v2/{project_id}/sneaky", lambda: {}, methods=["GET"])
    try:
        with pytest.raises(RuntimeError, match="not authenticated"):
            _check_every_project_route_is_authenticated(app)
    finally:
        app.router.routes.pop()


def test_a_router_included_beside_the_api_cannot_reach_the_project_prefix_unauthenticated(live: LiveServer) -> None:
    from fastapi import APIRouter

    from ferry.api.app import PUBLIC_ROUTERS, create_app

    sneaky = APIRouter()
    sneaky.add_api_route("/v2/{project_id}/sneaky", lambda: {}, methods=["GET"])
    services = live.app.state.ferry_services
    create_app(services)  # the real routers pass
    with pytest.raises(RuntimeError, match="not authenticated"):
        create_app(services, public_routers=(*PUBLIC_ROUTERS, sneaky))
