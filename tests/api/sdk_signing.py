"""Test helper: build and sign requests exactly as huaweicloudsdkcore does, with its own Signer class."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import requests
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer

from ferry.api.auth import IncomingRequest

USER_AGENT = "huaweicloud-usdk-python/3.0; os/Linux python/3.11 impl/CPython; app/test"


def sdk_date(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def signed_sdk_request(
    *,
    ak: str,
    sk: str,
    project_id: str,
    method: str = "GET",
    path: str = "/v2/{project_id}/tasks",
    path_params: dict[str, Any] | None = None,
    query: list[tuple[str, Any]] | None = None,
    body: bytes | None = None,
    host: str = "127.0.0.1:8080",
    date: datetime | None = None,
    extra_headers: dict[str, str] | None = None,
) -> SdkRequest:
    """An SdkRequest prepared the way `Client.build_future_request` does it, then signed by the SDK Signer."""
    resource_path = path.replace("{project_id}", quote(project_id, safe=""))
    for name, value in (path_params or {}).items():
        resource_path = resource_path.replace("{" + name + "}", quote(str(value), safe=""))
    headers: dict[str, str] = {
        "Content-Type": "application/json;charset=utf-8" if body is not None else "application/json",
        "User-Agent": USER_AGENT,
        "X-Project-Id": project_id,
    }
    if date is not None:
        headers["X-Sdk-Date"] = sdk_date(date)
    headers.update(extra_headers or {})
    request = SdkRequest(
        method=method,
        schema="http",
        host=host,
        resource_path=resource_path,
        query_params=list(query or []),
        header_params=headers,
        body=body if body is not None else "",
    )
    return Signer(BasicCredentials(ak, sk, project_id)).sign(request)


def to_incoming(request: SdkRequest) -> IncomingRequest:
    """What our server sees for a signed SdkRequest (header values travel as UTF-8 bytes)."""
    path, _, query = request.uri.partition("?")
    headers = [(k.lower(), str(v).encode("latin-1").decode("utf-8")) for k, v in request.header_params.items()]
    body = request.body if isinstance(request.body, bytes) else str(request.body or "").encode()
    return IncomingRequest(request.method, path, query, headers, body)


class SdkSigningAuth(requests.auth.AuthBase):
    """A `requests` auth hook that signs any prepared request with the SDK Signer (for fuzzing)."""

    def __init__(self, ak: str, sk: str, project_id: str) -> None:
        self.credentials = BasicCredentials(ak, sk, project_id)

    def __call__(self, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        from urllib.parse import parse_qsl, urlsplit

        url = urlsplit(prepared.url or "")
        headers = {k: v for k, v in prepared.headers.items() if k.lower() in {"content-type", "x-project-id"}}
        headers.setdefault("Content-Type", "application/json")
        raw_body = prepared.body
        body = raw_body.encode() if isinstance(raw_body, str) else (raw_body or b"")
        request = SdkRequest(
            method=prepared.method or "GET",
            schema=url.scheme,
            host=url.netloc,
            resource_path=url.path or "/",
            query_params=parse_qsl(url.query, keep_blank_values=True),
            header_params=headers,
            body=body,
        )
        signed = Signer(self.credentials).sign(request)
        for name in ("X-Sdk-Date", "Host", "Authorization", "Content-Type"):
            if name in signed.header_params:
                prepared.headers[name] = signed.header_params[name]
        # The SDK sends its canonical query string, which is what it signed.
        prepared.url = f"{url.scheme}://{url.netloc}{signed.uri}"
        return prepared
