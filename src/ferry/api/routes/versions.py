"""API version discovery: `GET /` and `GET /{version}`, public like Huawei's (no project, no signature)."""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from ferry.api.deps import ok, public_base_url
from ferry.oms import (
    Codes,
    Link,
    ListApiVersionsResponse,
    Messages,
    OmsError,
    ShowApiInfoResponse,
    Version,
    VersionStatus,
)

router = APIRouter()

# Ferry serves v2 only; Huawei's v1 is gone from the SDK.
VERSIONS: Final[tuple[tuple[str, VersionStatus, str], ...]] = (("v2", VersionStatus.CURRENT, "2024-01-01T00:00:00Z"),)


def api_versions(base_url: str) -> list[Version]:
    """The versions this server speaks, with links rooted at `base_url`."""
    root = base_url.rstrip("/")
    return [
        Version(id=vid, links=[Link(href=f"{root}/{vid}/", rel="self")], status=status, updated=updated)
        for vid, status, updated in VERSIONS
    ]


@router.get("/", response_model=ListApiVersionsResponse, summary="list_api_versions")
def list_api_versions(request: Request) -> JSONResponse:
    return ok(ListApiVersionsResponse(versions=api_versions(public_base_url(request))))


@router.get("/{version}", response_model=ShowApiInfoResponse, summary="show_api_info")
def show_api_info(version: str, request: Request) -> JSONResponse:
    for item in api_versions(public_base_url(request)):
        if item.id == version:
            return ok(ShowApiInfoResponse.model_validate(item.model_dump()))
    # An unknown version is an unknown API, which the gateway answers with APIGW.0101.
    raise OmsError(404, Codes.NO_API, Messages.NO_API)
