"""The clouds and regions the API advertises (show_cloud_type, show_region_info), read from the storage profiles."""

from __future__ import annotations

from ferry.oms.common import DESTINATION_CLOUDS, SOURCE_CLOUDS, CloudType, OmsEnum
from ferry.storage.profiles import CloudRegion, cloud_regions


class CloudTypeKind(OmsEnum):
    SRC = "src"
    DST = "dst"


def cloud_types(kind: CloudTypeKind) -> tuple[CloudType, ...]:
    """Clouds that can be a migration source (`src`) or destination (`dst`)."""
    return SOURCE_CLOUDS if kind is CloudTypeKind.SRC else DESTINATION_CLOUDS


def regions(cloud: CloudType) -> tuple[CloudRegion, ...]:
    """The regions of `cloud` (HEC's are Huawei Cloud's); none for URL sources."""
    return cloud_regions(cloud)


def region_table() -> list[tuple[CloudType, tuple[CloudRegion, ...]]]:
    """Every cloud with regions, in source-list order (URL sources have none)."""
    return [(cloud, found) for cloud in SOURCE_CLOUDS if (found := regions(cloud))]
