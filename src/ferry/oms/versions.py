"""API versions (oms-api.md §1.1)."""

from __future__ import annotations

from ferry.oms.common import OmsEnum, ResponseModel


class VersionStatus(OmsEnum):
    CURRENT = "CURRENT"
    SUPPORTED = "SUPPORTED"
    DEPRECATED = "DEPRECATED"


class Link(ResponseModel):
    href: str | None = None
    rel: str | None = None


class Version(ResponseModel):
    id: str | None = None
    links: list[Link] | None = None
    status: VersionStatus | None = None
    updated: str | None = None


class ListApiVersionsResponse(ResponseModel):
    versions: list[Version] | None = None


class ShowApiInfoResponse(Version):
    """`GET /{version}`: the fields of one Version, flat."""
