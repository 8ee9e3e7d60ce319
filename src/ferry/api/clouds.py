"""The clouds and regions the API advertises (show_cloud_type, show_region_info): data, not code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from ferry.api.schemas import CloudType, CloudTypeKind


@dataclass(frozen=True)
class CloudRegion:
    """One region of a cloud: its id as that cloud spells it, and a human description."""

    id: str
    description: str


# The source list is CLOUD_TYPE_TASK of oms-api.md §1.7, in the SDK's order.
SOURCE_CLOUDS: Final[tuple[CloudType, ...]] = (
    CloudType.AWS,
    CloudType.AZURE,
    CloudType.ALIYUN,
    CloudType.TENCENT,
    CloudType.HUAWEICLOUD,
    CloudType.QINGCLOUD,
    CloudType.KINGSOFTCLOUD,
    CloudType.BAIDU,
    CloudType.QINIU,
    CloudType.GOOGLE,
    CloudType.URLSOURCE,
    CloudType.UCLOUD,
)

# Huawei's OMS only writes into OBS; Ferry writes to any object store it has a backend for, so the
# destinations are the object-storage clouds (CLOUD_TYPE_SYNC) — not Google or plain HTTP sources.
DESTINATION_CLOUDS: Final[tuple[CloudType, ...]] = (
    CloudType.HUAWEICLOUD,
    CloudType.AWS,
    CloudType.AZURE,
    CloudType.ALIYUN,
    CloudType.TENCENT,
    CloudType.QINGCLOUD,
    CloudType.KINGSOFTCLOUD,
    CloudType.BAIDU,
    CloudType.QINIU,
    CloudType.UCLOUD,
)


def _regions(*pairs: tuple[str, str]) -> tuple[CloudRegion, ...]:
    return tuple(CloudRegion(region_id, description) for region_id, description in pairs)


# Huawei Cloud: the OmsRegion ids the SDK knows (oms-api.md §0). The other clouds: their public region ids
# as their own SDKs spell them. Keep in step with the storage profiles, which own the endpoints.
REGIONS: Final[Mapping[CloudType, tuple[CloudRegion, ...]]] = MappingProxyType(
    {
        CloudType.HUAWEICLOUD: _regions(
            ("cn-north-4", "CN North-Beijing4"),
            ("cn-north-1", "CN North-Beijing1"),
            ("cn-north-9", "CN North-Ulanqab1"),
            ("cn-north-12", "cn-north-12"),
            ("cn-east-2", "CN East-Shanghai2"),
            ("cn-east-3", "CN East-Shanghai1"),
            ("cn-east-4", "cn-east-4"),
            ("cn-south-1", "CN South-Guangzhou"),
            ("cn-south-4", "CN South-Guangzhou-InvitationOnly"),
            ("cn-southwest-2", "CN Southwest-Guiyang1"),
            ("ap-southeast-1", "CN-Hong Kong"),
            ("ap-southeast-2", "AP-Bangkok"),
            ("ap-southeast-3", "AP-Singapore"),
            ("ap-southeast-4", "AP-Jakarta"),
            ("ap-southeast-5", "AP-Manila"),
            ("af-south-1", "AF-Johannesburg"),
            ("la-south-2", "LA-Santiago"),
            ("la-north-2", "LA-Mexico City2"),
            ("sa-brazil-1", "LA-Sao Paulo1"),
            ("tr-west-1", "TR-Istanbul"),
            ("me-east-1", "ME-Riyadh"),
        ),
        CloudType.AWS: _regions(
            ("us-east-1", "US East (N. Virginia)"),
            ("us-east-2", "US East (Ohio)"),
            ("us-west-1", "US West (N. California)"),
            ("us-west-2", "US West (Oregon)"),
            ("ca-central-1", "Canada (Central)"),
            ("sa-east-1", "South America (São Paulo)"),
            ("eu-central-1", "Europe (Frankfurt)"),
            ("eu-west-1", "Europe (Ireland)"),
            ("eu-west-2", "Europe (London)"),
            ("eu-west-3", "Europe (Paris)"),
            ("eu-north-1", "Europe (Stockholm)"),
            ("eu-south-1", "Europe (Milan)"),
            ("me-south-1", "Middle East (Bahrain)"),
            ("af-south-1", "Africa (Cape Town)"),
            ("ap-east-1", "Asia Pacific (Hong Kong)"),
            ("ap-south-1", "Asia Pacific (Mumbai)"),
            ("ap-northeast-1", "Asia Pacific (Tokyo)"),
            ("ap-northeast-2", "Asia Pacific (Seoul)"),
            ("ap-northeast-3", "Asia Pacific (Osaka)"),
            ("ap-southeast-1", "Asia Pacific (Singapore)"),
            ("ap-southeast-2", "Asia Pacific (Sydney)"),
            ("ap-southeast-3", "Asia Pacific (Jakarta)"),
            ("cn-north-1", "China (Beijing)"),
            ("cn-northwest-1", "China (Ningxia)"),
        ),
        CloudType.AZURE: _regions(
            ("eastus", "East US"),
            ("eastus2", "East US 2"),
            ("centralus", "Central US"),
            ("westus", "West US"),
            ("westus2", "West US 2"),
            ("westus3", "West US 3"),
            ("canadacentral", "Canada Central"),
            ("brazilsouth", "Brazil South"),
            ("northeurope", "North Europe"),
            ("westeurope", "West Europe"),
            ("uksouth", "UK South"),
            ("francecentral", "France Central"),
            ("germanywestcentral", "Germany West Central"),
            ("eastasia", "East Asia"),
            ("southeastasia", "Southeast Asia"),
            ("japaneast", "Japan East"),
            ("koreacentral", "Korea Central"),
            ("centralindia", "Central India"),
            ("australiaeast", "Australia East"),
            ("chinaeast2", "China East 2"),
            ("chinanorth3", "China North 3"),
        ),
        CloudType.ALIYUN: _regions(
            ("cn-hangzhou", "China (Hangzhou)"),
            ("cn-shanghai", "China (Shanghai)"),
            ("cn-qingdao", "China (Qingdao)"),
            ("cn-beijing", "China (Beijing)"),
            ("cn-zhangjiakou", "China (Zhangjiakou)"),
            ("cn-huhehaote", "China (Hohhot)"),
            ("cn-wulanchabu", "China (Ulanqab)"),
            ("cn-shenzhen", "China (Shenzhen)"),
            ("cn-heyuan", "China (Heyuan)"),
            ("cn-guangzhou", "China (Guangzhou)"),
            ("cn-chengdu", "China (Chengdu)"),
            ("cn-hongkong", "China (Hong Kong)"),
            ("ap-southeast-1", "Singapore"),
            ("ap-southeast-3", "Malaysia (Kuala Lumpur)"),
            ("ap-southeast-5", "Indonesia (Jakarta)"),
            ("ap-northeast-1", "Japan (Tokyo)"),
            ("us-west-1", "US (Silicon Valley)"),
            ("us-east-1", "US (Virginia)"),
            ("eu-central-1", "Germany (Frankfurt)"),
            ("eu-west-1", "UK (London)"),
        ),
        CloudType.TENCENT: _regions(
            ("ap-beijing", "Beijing"),
            ("ap-nanjing", "Nanjing"),
            ("ap-shanghai", "Shanghai"),
            ("ap-guangzhou", "Guangzhou"),
            ("ap-chengdu", "Chengdu"),
            ("ap-chongqing", "Chongqing"),
            ("ap-hongkong", "Hong Kong"),
            ("ap-singapore", "Singapore"),
            ("ap-jakarta", "Jakarta"),
            ("ap-seoul", "Seoul"),
            ("ap-bangkok", "Bangkok"),
            ("ap-tokyo", "Tokyo"),
            ("na-siliconvalley", "Silicon Valley"),
            ("na-ashburn", "Virginia"),
            ("sa-saopaulo", "São Paulo"),
            ("eu-frankfurt", "Frankfurt"),
        ),
        CloudType.QINGCLOUD: _regions(
            ("pek3a", "Beijing 3A"),
            ("pek3b", "Beijing 3B"),
            ("sh1a", "Shanghai 1A"),
            ("gd2", "Guangdong 2"),
        ),
        CloudType.KINGSOFTCLOUD: _regions(
            ("BEIJING", "Beijing"),
            ("SHANGHAI", "Shanghai"),
            ("GUANGZHOU", "Guangzhou"),
            ("HONGKONG", "Hong Kong"),
            ("RUSSIA", "Russia"),
            ("SINGAPORE", "Singapore"),
        ),
        CloudType.BAIDU: _regions(
            ("bj", "Beijing"),
            ("bd", "Baoding"),
            ("gz", "Guangzhou"),
            ("su", "Suzhou"),
            ("fwh", "Wuhan"),
            ("hkg", "Hong Kong"),
        ),
        CloudType.QINIU: _regions(
            ("z0", "East China (Zhejiang)"),
            ("cn-east-2", "East China (Zhejiang 2)"),
            ("z1", "North China (Hebei)"),
            ("z2", "South China (Guangdong)"),
            ("na0", "North America (Los Angeles)"),
            ("as0", "Asia Pacific (Singapore)"),
        ),
        CloudType.GOOGLE: _regions(
            ("us-central1", "Iowa"),
            ("us-east1", "South Carolina"),
            ("us-west1", "Oregon"),
            ("europe-west1", "Belgium"),
            ("europe-west3", "Frankfurt"),
            ("asia-east1", "Taiwan"),
            ("asia-east2", "Hong Kong"),
            ("asia-northeast1", "Tokyo"),
            ("asia-southeast1", "Singapore"),
            ("us", "United States (multi-region)"),
            ("eu", "European Union (multi-region)"),
            ("asia", "Asia (multi-region)"),
        ),
        CloudType.UCLOUD: _regions(
            ("cn-bj", "Beijing"),
            ("cn-wlcb", "Ulanqab"),
            ("cn-sh2", "Shanghai 2"),
            ("cn-gd", "Guangzhou"),
            ("hk", "Hong Kong"),
            ("sg", "Singapore"),
            ("jpn-tky", "Tokyo"),
            ("us-ca", "Los Angeles"),
            ("ge-fra", "Frankfurt"),
        ),
    }
)


def cloud_types(kind: CloudTypeKind) -> tuple[CloudType, ...]:
    """Clouds that can be a migration source (`src`) or destination (`dst`)."""
    return SOURCE_CLOUDS if kind is CloudTypeKind.SRC else DESTINATION_CLOUDS


def region_table() -> list[tuple[CloudType, tuple[CloudRegion, ...]]]:
    """Every cloud with regions, in source-list order (URL sources have none)."""
    return [(cloud, REGIONS[cloud]) for cloud in SOURCE_CLOUDS if cloud in REGIONS]
