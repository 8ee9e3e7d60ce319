"""Unit tests for SDK-HMAC-SHA256 verification, driven by requests signed with the SDK's own Signer."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest
from sdk_signing import sdk_date, signed_sdk_request, to_incoming

from ferry.api.auth import (
    EMPTY_SHA256,
    IncomingRequest,
    InMemoryCredentialStore,
    Principal,
    RequestVerifier,
    canonical_query,
    canonical_request,
    canonical_uri,
    parse_authorization,
)
from ferry.oms import OmsError
from ferry.sdk_hmac import signed_headers

PROJECT = "0123456789abcdef0123456789abcdef"
OTHER_PROJECT = "fedcba9876543210fedcba9876543210"
AK = "FERRYTESTAK0000000001"
SK = "s3cr3t/SK+with=odd&chars"
NOW = datetime(2026, 11, 24, 19, 19, 3, tzinfo=UTC)


@pytest.fixture
def store() -> InMemoryCredentialStore:
    s = InMemoryCredentialStore()
    s.add_access_key(AK, SK, PROJECT)
    s.add_access_key("OTHERAK", "othersk", OTHER_PROJECT)
    s.add_token("tok-123", PROJECT)
    return s


@pytest.fixture
def verifier(store: InMemoryCredentialStore) -> RequestVerifier:
    return RequestVerifier(store, clock=lambda: NOW)


def signed(**kw: object) -> IncomingRequest:
    kw.setdefault("date", NOW)
    return to_incoming(signed_sdk_request(ak=AK, sk=SK, project_id=PROJECT, **kw))  # type: ignore[arg-type]


def rejects(verifier: RequestVerifier, req: IncomingRequest, project: str | None = PROJECT, status: int = 401) -> None:
    with pytest.raises(OmsError) as info:
        verifier.authenticate(req, project)
    assert info.value.status == status
    if status == 401:
        assert info.value.body() == {
            "error_code": "APIGW.0301",
            "error_msg": "Incorrect IAM authentication information: verify aksk signature fail",
        }


def replace_header(req: IncomingRequest, name: str, value: str | None) -> IncomingRequest:
    headers = [(k, v) for k, v in req.headers if k != name]
    if value is not None:
        headers.append((name, value))
    return dataclasses.replace(req, headers=headers)


SHAPES = [
    {"method": "GET", "path": "/v2/{project_id}/tasks"},
    {"method": "GET", "path": "/v2/{project_id}/tasks", "query": [("status", 3), ("limit", 5), ("offset", 0)]},
    {
        "method": "GET",
        "path": "/v2/{project_id}/tasks",
        "query": [("task_name", "ünï cøde & spaces/+,~"), ("group_id", "")],
    },
    {
        "method": "GET",
        "path": "/v2/{project_id}/sync-tasks/{id}/statistics",
        "path_params": {"id": "a/b c"},
        "query": [("data_type", "SUCCESS,FAILURE"), ("start_time", 1), ("end_time", 2)],
    },
    {
        "method": "POST",
        "path": "/v2/{project_id}/sync-tasks",
        "body": json.dumps({"src_ak": "x", "description": "日本語"}, ensure_ascii=False).encode(),
    },
    {"method": "POST", "path": "/v2/{project_id}/privacy-agreements"},
    {"method": "DELETE", "path": "/v2/{project_id}/tasks/{id}", "path_params": {"id": 191297407830872}},
    {"method": "PUT", "path": "/v2/{project_id}/taskgroups/{id}/stop", "path_params": {"id": "g~1._-"}},
    {"method": "GET", "path": "/v2/{project_id}/tasks", "extra_headers": {"X-Security-Token": "sts-token"}},
    {"method": "GET", "path": "/v2/{project_id}/tasks", "extra_headers": {"User-Agent": "ua ünicode"}},
]


@pytest.mark.parametrize("shape", SHAPES)
def test_our_client_signer_matches_the_sdk(shape: dict[str, object]) -> None:
    """`signed_headers` (used to publish to SMN) produces the SDK's exact Authorization for the same request."""
    theirs = signed(**shape)
    headers = {k: v for k, v in theirs.headers if k not in ("authorization", "host", "x-sdk-date")}
    host = theirs.header_values("host")[0]
    ours = signed_headers(AK, SK, theirs.method, host, theirs.raw_path, theirs.query_string, theirs.body,
                          headers, now=NOW)
    assert ours["authorization"] == theirs.header_values("authorization")[0]


@pytest.mark.parametrize("shape", SHAPES)
def test_sdk_signed_requests_verify(verifier: RequestVerifier, shape: dict[str, object]) -> None:
    principal = verifier.authenticate(signed(**shape), PROJECT)
    assert principal == Principal(project_id=PROJECT, method="aksk", access_key=AK)


def test_trailing_slash_spelling_is_the_same_request(verifier: RequestVerifier) -> None:
    req = signed(path="/v2/{project_id}/tasks")
    verifier.authenticate(dataclasses.replace(req, raw_path=req.raw_path + "/"), PROJECT)


def test_date_window(verifier: RequestVerifier) -> None:
    verifier.authenticate(signed(date=NOW - timedelta(minutes=14, seconds=59)), PROJECT)
    verifier.authenticate(signed(date=NOW + timedelta(minutes=14, seconds=59)), PROJECT)
    rejects(verifier, signed(date=NOW - timedelta(minutes=15, seconds=1)))
    rejects(verifier, signed(date=NOW + timedelta(minutes=15, seconds=1)))


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda r: dataclasses.replace(r, method="DELETE"), id="method"),
        pytest.param(lambda r: dataclasses.replace(r, raw_path=r.raw_path.replace("tasks", "taskz")), id="path"),
        pytest.param(lambda r: dataclasses.replace(r, raw_path=r.raw_path + "/x"), id="path-extra"),
        pytest.param(lambda r: dataclasses.replace(r, query_string="limit=6&offset=0"), id="query-value"),
        pytest.param(lambda r: dataclasses.replace(r, query_string=r.query_string + "&x=1"), id="query-added"),
        pytest.param(lambda r: dataclasses.replace(r, query_string=""), id="query-dropped"),
        pytest.param(lambda r: dataclasses.replace(r, body=b'{"a": 2}'), id="body"),
        pytest.param(lambda r: dataclasses.replace(r, body=b""), id="body-dropped"),
        pytest.param(lambda r: replace_header(r, "host", "evil:80"), id="host"),
        pytest.param(lambda r: replace_header(r, "user-agent", "other"), id="signed-header"),
        pytest.param(lambda r: replace_header(r, "x-sdk-date", None), id="no-date"),
        pytest.param(lambda r: replace_header(r, "x-sdk-date", "2026-11-24T19:19:03Z"), id="bad-date"),
        pytest.param(lambda r: replace_header(r, "x-sdk-date", sdk_date(NOW + timedelta(seconds=1))), id="date"),
        pytest.param(lambda r: replace_header(r, "authorization", None), id="no-authorization"),
        pytest.param(lambda r: dataclasses.replace(r, headers=[*r.headers, ("host", "x")]), id="dup-host"),
        pytest.param(
            lambda r: dataclasses.replace(r, headers=[*r.headers, ("authorization", "x")]), id="dup-authorization"
        ),
        pytest.param(lambda r: replace_header(r, "x-sdk-content-sha256", "UNSIGNED-PAYLOAD"), id="unsigned"),
    ],
)
def test_tampering_is_detected(verifier: RequestVerifier, tamper: object) -> None:
    req = signed(method="POST", query=[("limit", 5), ("offset", 0)], body=b'{"a": 1}')
    verifier.authenticate(req, PROJECT)
    rejects(verifier, tamper(req))  # type: ignore[operator]


def authorization_of(req: IncomingRequest) -> str:
    return req.header_values("authorization")[0]


@pytest.mark.parametrize(
    "rewrite",
    [
        lambda a: a.replace("SDK-HMAC-SHA256", "SDK-HMAC-SM3"),
        lambda a: a.replace("SDK-HMAC-SHA256", "V11-HMAC-SHA256"),
        lambda a: a[:-1] + ("0" if a[-1] != "0" else "1"),
        lambda a: a.replace(f"Access={AK}", "Access=NOSUCHAK"),
        lambda a: a.replace(f"Access={AK}", "Access=OTHERAK"),
        lambda a: a.replace("Signature=", "Signature=00"),
        lambda a: a.replace("SignedHeaders=content-type;host;", "SignedHeaders=content-type;"),
        lambda a: a.replace(";x-sdk-date", ""),
        lambda a: a.replace(", Signature", ", Signature=1, Signature"),
        lambda a: a.replace("Signature=", "Signature=é"),
        lambda a: a + ", Extra=1",
        lambda a: "",
        lambda a: "SDK-HMAC-SHA256",
        lambda a: "x" * 10000,
    ],
)
def test_bad_authorization_headers(verifier: RequestVerifier, rewrite: object) -> None:
    req = signed()
    rejects(verifier, replace_header(req, "authorization", rewrite(authorization_of(req))))  # type: ignore[operator]


def test_wrong_secret_key_and_unknown_key_look_alike(verifier: RequestVerifier) -> None:
    wrong_sk = to_incoming(signed_sdk_request(ak=AK, sk="not-the-sk", project_id=PROJECT, date=NOW))
    unknown = to_incoming(signed_sdk_request(ak="NOSUCH", sk=SK, project_id=PROJECT, date=NOW))
    errors = []
    for req in (wrong_sk, unknown):
        with pytest.raises(OmsError) as info:
            verifier.authenticate(req, PROJECT)
        errors.append((info.value.status, info.value.body()))
    assert errors[0] == errors[1]


def test_matching_declared_payload_hash_is_accepted(verifier: RequestVerifier) -> None:
    import hashlib

    body = b'{"x": 1}'
    digest = hashlib.sha256(body).hexdigest()
    req = signed(method="POST", body=body, extra_headers={"X-Sdk-Content-Sha256": digest})
    verifier.authenticate(req, PROJECT)


def test_project_checks(verifier: RequestVerifier) -> None:
    # A valid signature for a key of another project: authenticated, but not allowed in this project.
    other = to_incoming(signed_sdk_request(ak="OTHERAK", sk="othersk", project_id=OTHER_PROJECT, date=NOW))
    verifier.authenticate(other, OTHER_PROJECT)
    rejects(verifier, other, PROJECT, status=403)
    # The key belongs to PROJECT but the request claims another project in X-Project-Id.
    lying = to_incoming(
        signed_sdk_request(
            ak=AK, sk=SK, project_id=OTHER_PROJECT, date=NOW, extra_headers={"X-Project-Id": OTHER_PROJECT}
        )
    )
    rejects(verifier, lying, OTHER_PROJECT, status=403)
    # Routes without a project in the path only need a valid caller.
    assert verifier.authenticate(signed(), None).project_id == PROJECT


def test_token_auth(verifier: RequestVerifier) -> None:
    base = IncomingRequest("GET", f"/v2/{PROJECT}/tasks", "", [("host", "h")], b"")
    ok = replace_header(base, "x-auth-token", "tok-123")
    assert verifier.authenticate(ok, PROJECT) == Principal(project_id=PROJECT, method="token")
    rejects(verifier, replace_header(base, "x-auth-token", "tok-124"))
    rejects(verifier, replace_header(base, "x-auth-token", ""))
    rejects(verifier, dataclasses.replace(ok, headers=[*ok.headers, ("x-auth-token", "tok-123")]))
    rejects(verifier, ok, OTHER_PROJECT, status=403)
    rejects(verifier, replace_header(ok, "x-project-id", OTHER_PROJECT), PROJECT, status=403)
    rejects(verifier, base)


def test_a_signed_write_is_accepted_once(verifier: RequestVerifier) -> None:
    post = signed(method="POST", path="/v2/{project_id}/tasks", body=b'{"name": "a"}')
    verifier.authenticate(post, PROJECT)
    with pytest.raises(OmsError) as info:
        verifier.authenticate(post, PROJECT)
    assert (info.value.status, info.value.error_code) == (401, "APIGW.0301")
    assert "already received" in info.value.error_msg
    # The same call with another body, or another call, in the same second is another request.
    verifier.authenticate(signed(method="POST", path="/v2/{project_id}/tasks", body=b'{"name": "b"}'), PROJECT)
    verifier.authenticate(signed(method="DELETE", path="/v2/{project_id}/tasks/1"), PROJECT)
    get = signed()
    assert [verifier.authenticate(get, PROJECT).project_id for _ in range(3)] == [PROJECT] * 3
    # Sync events may come twice in a second (two uploads of one key): a repeat only compares the key again.
    for path in ("/v2/{project_id}/sync-tasks/{id}/events", "/v2/{project_id}/sync-tasks/{id}/notifications"):
        event = signed(method="POST", path=path, path_params={"id": "t-1"}, body=b'{"object_keys": ["k"]}')
        assert [verifier.authenticate(event, PROJECT).project_id for _ in range(2)] == [PROJECT] * 2
    # Not a path that merely ends like one.
    stop = signed(method="POST", path="/v2/{project_id}/sync-tasks/{id}/stop", path_params={"id": "events"})
    verifier.authenticate(stop, PROJECT)
    with pytest.raises(OmsError):
        verifier.authenticate(stop, PROJECT)


def test_seen_signatures_are_kept_for_the_window_only(store: InMemoryCredentialStore) -> None:
    now = [NOW]
    verifier = RequestVerifier(store, clock=lambda: now[0])
    verifier.authenticate(signed(method="POST", path="/v2/{project_id}/privacy-agreements"), PROJECT)
    assert len(store.seen) == 1
    # Once the date has left the window the request is stale anyway, and its signature is let go.
    now[0] = NOW + timedelta(minutes=15, seconds=1)
    verifier.authenticate(signed(method="POST", path="/v2/{project_id}/privacy-agreements", date=now[0]), PROJECT)
    assert len(store.seen) == 1


def test_a_full_replay_store_refuses_writes_rather_than_forget(store: InMemoryCredentialStore) -> None:
    from ferry.api.auth import SeenSignatures
    from ferry.errors import TransientError

    seen = SeenSignatures(capacity=2)
    t = NOW.timestamp()
    assert seen.add("a", t + 10, t) and seen.add("b", t + 20, t)
    assert not seen.add("a", t + 10, t)
    with pytest.raises(TransientError):
        seen.add("c", t + 30, t)
    assert seen.add("c", t + 30, t + 11) and len(seen) == 2  # "a" expired


def test_canonical_pieces_match_the_reference_example() -> None:
    assert canonical_uri(f"/v2/{PROJECT}/sync-tasks") == f"/v2/{PROJECT}/sync-tasks/"
    assert canonical_uri("/") == "/"
    assert canonical_uri("/v2/p/sync-tasks/a%2Fb%20c") == "/v2/p/sync-tasks/a/b%20c/"
    assert canonical_query("status=STOPPED&offset=0&limit=5") == "limit=5&offset=0&status=STOPPED"
    assert canonical_query("data_type=SUCCESS%2CFAILURE") == "data_type=SUCCESS%2CFAILURE"
    assert canonical_query("") == ""
    req = IncomingRequest(
        "get",
        f"/v2/{PROJECT}/sync-tasks",
        "limit=5&offset=0&status=STOPPED",
        [("content-type", "application/json"), ("host", "127.0.0.1:18777"), ("x-sdk-date", "20261124T191903Z")],
        b"",
    )
    expected = "\n".join(
        [
            "GET",
            f"/v2/{PROJECT}/sync-tasks/",
            "limit=5&offset=0&status=STOPPED",
            "content-type:application/json\nhost:127.0.0.1:18777\nx-sdk-date:20261124T191903Z\n",
            "content-type;host;x-sdk-date",
            EMPTY_SHA256,
        ]
    )
    assert canonical_request(req, ["content-type", "host", "x-sdk-date"], EMPTY_SHA256) == expected


def test_parse_authorization() -> None:
    sig = "a" * 64
    parsed = parse_authorization(f"SDK-HMAC-SHA256 Access=AK, SignedHeaders=host;x-sdk-date, Signature={sig}")
    assert parsed is not None and parsed.access_key == "AK" and parsed.signed_headers == ("host", "x-sdk-date")
    assert parse_authorization(f"SDK-HMAC-SHA256 Access=AK, SignedHeaders=Host;x-sdk-date, Signature={sig}") is None
    assert (
        parse_authorization(f"SDK-HMAC-SHA256 Access=AK, SignedHeaders=host;host;x-sdk-date, Signature={sig}") is None
    )
