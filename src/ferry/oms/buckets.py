"""Object-storage helpers (oms-api.md §1.5): buckets, objects, prefixes, CDN checks, cloud types and regions."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, RootModel, StringConstraints
from pydantic_core import PydanticCustomError

from ferry.oms.clouds import CloudTypeKind
from ferry.oms.common import (
    AccessKey,
    AppId,
    Bucket,
    CdnHelperCloud,
    CloudType,
    ConnectionString,
    HelperCloud,
    JsonAuthFile,
    Region,
    RequestModel,
    ResponseModel,
    SecretKey,
    SecurityToken,
    SourceCdnReq,
    number_as_text,
)


class CloudAccessReq(RequestModel):
    """The cloud and the caller's keys, as the bucket helpers take them."""

    cloud_type: HelperCloud
    ak: AccessKey | None = None
    sk: SecretKey | None = None
    json_auth_file: JsonAuthFile | None = None
    connection_string: ConnectionString | None = None
    app_id: AppId | None = None


class ListBucketsReq(CloudAccessReq):
    """show_bucket_list: the keys are all it needs."""


class ShowBucketListResponse(RootModel[list[str]]):
    """A bare JSON array of bucket names."""


def _folder_path(value: str) -> str:
    if value and not value.endswith("/"):
        raise PydanticCustomError("file_path", "must end with '/'")
    return value


class ShowBucketReq(RequestModel):
    cloud_type: HelperCloud
    file_path: Annotated[str, StringConstraints(max_length=1023), AfterValidator(_folder_path)]
    ak: AccessKey | None = None
    sk: SecretKey | None = None
    connection_string: ConnectionString | None = None
    json_auth_file: JsonAuthFile | None = None
    data_center: Region
    page_size: Annotated[int, Field(ge=1)]
    behind_filename: Annotated[str, StringConstraints(max_length=1024)]
    app_id: AppId | None = None
    bucket_name: Bucket


class ShowBucketRecord(ResponseModel):
    name: str | None = None
    size: Annotated[str | None, BeforeValidator(number_as_text)] = None


class ShowBucketObjectsResponse(ResponseModel):
    next_page: bool | None = None
    next_marker: str | None = None
    records: list[ShowBucketRecord] | None = None


class ShowBucketRegionReq(CloudAccessReq):
    bucket_name: Bucket


class ShowBucketRegionResponse(ResponseModel):
    id: str | None = None
    name: str | None = None
    support: bool | None = None


class CheckPrefixReq(CloudAccessReq):
    bucket_name: Bucket
    file_name: Annotated[str, StringConstraints(max_length=1024)]
    data_center: Region
    security_token: SecurityToken | None = None


class CheckPrefixResponse(ResponseModel):
    exist: bool | None = None


class PrefixKeyInfo(RequestModel):
    keys: Annotated[list[Annotated[str, StringConstraints(max_length=2048)]], Field(max_length=100)]


class ShowCdnInfoReq(RequestModel):
    ak: AccessKey
    sk: SecretKey
    connection_string: ConnectionString | None = None
    cloud_type: CdnHelperCloud
    region: Region
    app_id: AppId | None = None
    bucket: Bucket
    prefix: PrefixKeyInfo | None = None
    source_cdn: SourceCdnReq


class CheckedKey(ResponseModel):
    key: str | None = None
    is_etag_matching: bool | None = None
    is_object_existing: bool | None = None


class ShowCdnInfoResponse(ResponseModel):
    is_same_cloud_type: bool | None = None
    is_download_available: bool | None = None
    checked_keys: list[CheckedKey] | None = None


class ShowCloudTypeQuery(RequestModel):
    type: CloudTypeKind


class ShowCloudTypeResponse(RootModel[list[CloudType]]):
    """A bare JSON array of cloud type names."""


class RegionInfo(ResponseModel):
    cloud_type: str | None = None
    value: str | None = None
    description: str | None = None


class ShowRegionInfoResp(ResponseModel):
    service_name: str | None = None
    region_list: list[RegionInfo] | None = None


class ShowRegionInfoResponse(RootModel[list[ShowRegionInfoResp]]):
    """A bare JSON array, one entry per cloud."""


class CheckUrlSourceListFileFormatReq(RequestModel):
    obs_bucket: Bucket
    list_file_key: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    ak: AccessKey
    sk: SecretKey
    region: Region
