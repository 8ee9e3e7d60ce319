"""Object-storage helper operations (§1.5) that talk to a cloud with the caller's credentials."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from fastapi import APIRouter
from starlette.responses import JSONResponse

from ferry.api.deps import Services, ok
from ferry.oms import (
    CheckedKey,
    CheckPrefixReq,
    CheckPrefixResponse,
    CheckUrlSourceListFileFormatReq,
    CloudType,
    EmptyResponse,
    ListBucketsReq,
    OmsError,
    ShowBucketListResponse,
    ShowBucketObjectsResponse,
    ShowBucketRecord,
    ShowBucketRegionReq,
    ShowBucketRegionResponse,
    ShowBucketReq,
    ShowCdnInfoReq,
    ShowCdnInfoResponse,
    refusal,
    regions,
)
from ferry.service import buckets
from ferry.service.buckets import CdnSource, CloudAccess, HelperError

router = APIRouter()
T = TypeVar("T")
# The region and bucket helpers are Huawei's console talking to OBS when no cloud is named.
_LIST_FILE_CLOUD = CloudType.HUAWEICLOUD.value


def helper_answer(exc: HelperError) -> OmsError:
    """The API error of a failed helper call (sync tasks checking their keys answer the same)."""
    return refusal(exc)


async def _answer(call: Awaitable[T]) -> T:
    try:
        return await call
    except HelperError as exc:
        raise helper_answer(exc) from None


@router.post("/objectstorage/buckets", response_model=ShowBucketListResponse, summary="show_bucket_list")
async def show_bucket_list(body: ListBucketsReq, services: Services) -> JSONResponse:
    access = CloudAccess(body.cloud_type.value, body.ak, body.sk, body.app_id)
    names = await _answer(buckets.show_bucket_list(access, services.bucket_helpers))
    return ok(ShowBucketListResponse(names))


@router.post("/objectstorage/buckets/objects", response_model=ShowBucketObjectsResponse,
             summary="show_bucket_objects")
async def show_bucket_objects(body: ShowBucketReq, services: Services) -> JSONResponse:
    access = CloudAccess(body.cloud_type.value, body.ak, body.sk, body.app_id)
    page = await _answer(buckets.show_bucket_objects(
        access, body.data_center, body.bucket_name, body.file_path, body.page_size, body.behind_filename,
        services.bucket_helpers,
    ))
    records = [ShowBucketRecord(name=r.name, size="--" if r.size is None else str(r.size)) for r in page.records]
    return ok(ShowBucketObjectsResponse(next_page=page.next_page, next_marker=page.next_marker, records=records))


@router.post("/objectstorage/buckets/regions", response_model=ShowBucketRegionResponse,
             summary="show_bucket_region")
async def show_bucket_region(body: ShowBucketRegionReq, services: Services) -> JSONResponse:
    access = CloudAccess(body.cloud_type.value, body.ak, body.sk, body.app_id)
    found = await _answer(buckets.show_bucket_region(access, body.bucket_name, services.bucket_helpers))
    names = {r.id: r.description for r in regions(body.cloud_type)}
    return ok(ShowBucketRegionResponse(id=found.region, name=names.get(found.region, found.region),
                                       support=found.supported))


@router.post("/objectstorage/buckets/prefix", response_model=CheckPrefixResponse, summary="check_prefix")
async def check_prefix(body: CheckPrefixReq, services: Services) -> JSONResponse:
    access = CloudAccess(body.cloud_type.value, body.ak, body.sk, body.app_id, body.security_token)
    exist = await _answer(buckets.check_prefix(
        access, body.data_center, body.bucket_name, body.file_name, services.bucket_helpers))
    return ok(CheckPrefixResponse(exist=exist))


@router.post("/objectstorage/buckets/cdn-info", response_model=ShowCdnInfoResponse, summary="show_cdn_info")
async def show_cdn_info(body: ShowCdnInfoReq, services: Services) -> JSONResponse:
    access = CloudAccess(body.cloud_type.value, body.ak, body.sk, body.app_id)
    cdn = body.source_cdn
    source = CdnSource(cdn.domain, cdn.protocol, cdn.authentication_type, cdn.authentication_key)
    report = await _answer(buckets.show_cdn_info(
        access, body.region, body.bucket, source, body.prefix.keys if body.prefix else None,
        services.bucket_helpers,
    ))
    checked = [CheckedKey(key=c.key, is_etag_matching=c.etag_matching, is_object_existing=c.exists)
               for c in report.checked]
    return ok(ShowCdnInfoResponse(is_same_cloud_type=report.same_cloud,
                                  is_download_available=report.download_available, checked_keys=checked))


@router.post("/objectstorage/buckets/url-source-list-file", response_model=EmptyResponse,
             summary="check_url_source_list_file_format")
async def check_url_source_list_file_format(body: CheckUrlSourceListFileFormatReq, services: Services) -> JSONResponse:
    # The list file lives in the destination's OBS bucket, so these are destination credentials.
    access = CloudAccess(_LIST_FILE_CLOUD, body.ak, body.sk, destination=True)
    await _answer(buckets.check_list_file(
        access, body.region, body.obs_bucket, body.list_file_key, services.bucket_helpers))
    return ok(EmptyResponse())
