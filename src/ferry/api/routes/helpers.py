"""Object-storage helper operations (§1.5) that need no source credentials: cloud types and regions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import JSONResponse

from ferry.api.deps import ok
from ferry.oms import (
    RegionInfo,
    ShowCloudTypeQuery,
    ShowCloudTypeResponse,
    ShowRegionInfoResp,
    ShowRegionInfoResponse,
    cloud_types,
    region_table,
)

router = APIRouter()


@router.get("/objectstorage/cloud-type", response_model=ShowCloudTypeResponse, summary="show_cloud_type")
def show_cloud_type(query: Annotated[ShowCloudTypeQuery, Query()]) -> JSONResponse:
    return ok(ShowCloudTypeResponse(list(cloud_types(query.type))))


@router.get("/objectstorage/data-center", response_model=ShowRegionInfoResponse, summary="show_region_info")
def show_region_info() -> JSONResponse:
    table = [
        ShowRegionInfoResp(
            service_name=cloud.value,
            region_list=[RegionInfo(cloud_type=cloud.value, value=r.id, description=r.description) for r in regions],
        )
        for cloud, regions in region_table()
    ]
    return ok(ShowRegionInfoResponse(table))
