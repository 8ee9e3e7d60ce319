"""S3 provider profiles: lookup by OMS cloud-type names, endpoints, storage classes, bucket rules."""

from __future__ import annotations

import pytest

from ferry.errors import UsageError
from ferry.storage.base import ListOrder
from ferry.storage.profiles import ARCHIVE_CLASSES, get_profile

OMS_CLOUD_TYPES = ["AWS", "Aliyun", "Tencent", "HuaweiCloud", "QingCloud", "KingsoftCloud", "Baidu", "Qiniu",
                   "UCloud", "HEC"]


@pytest.mark.parametrize("cloud", OMS_CLOUD_TYPES)
def test_every_oms_cloud_type_has_a_profile(cloud: str) -> None:
    p = get_profile(cloud)
    assert p.endpoint().startswith("https://")
    assert p.list_order is ListOrder.LEXICOGRAPHIC
    assert p.vendor_class("STANDARD")
    assert p.canonical_class(p.vendor_class("STANDARD")) == "STANDARD"
    for canonical, vendor in p.to_vendor.items():
        assert p.canonical_class(vendor) == canonical, (cloud, vendor)


def test_lookup_is_forgiving_and_strict() -> None:
    assert get_profile("huawei-cloud").name == "huaweicloud"
    assert get_profile("OSS").name == "aliyun"
    with pytest.raises(UsageError):
        get_profile("nimbus")


def test_unverifiable_orders_are_unordered() -> None:
    assert get_profile("seaweedfs").list_order is ListOrder.UNORDERED
    assert get_profile("s3").list_order is ListOrder.UNORDERED
    assert get_profile("seaweedfs").addressing == "path"
    with pytest.raises(UsageError):
        get_profile("s3").endpoint()


def test_endpoints_and_crc64_headers() -> None:
    assert get_profile("aliyun").endpoint("cn-shanghai") == "https://oss-cn-shanghai.aliyuncs.com"
    assert get_profile("tencent").endpoint("ap-beijing") == "https://cos.ap-beijing.myqcloud.com"
    assert get_profile("aws").endpoint("eu-west-1") == "https://s3.eu-west-1.amazonaws.com"
    assert get_profile("aliyun").crc64_headers == ("x-oss-hash-crc64ecma",)
    assert get_profile("tencent").crc64_headers == ("x-cos-hash-crc64ecma",)
    assert get_profile("aliyun").capabilities().crc64 and not get_profile("tencent").capabilities().crc64
    assert not get_profile("aws").capabilities().crc64


def test_storage_classes() -> None:
    aws = get_profile("aws")
    assert aws.vendor_class("ARCHIVE") == "GLACIER"
    assert aws.canonical_class("glacier") == "ARCHIVE"
    assert aws.canonical_class("GLACIER_IR") == "IA"  # instantly readable: no restore needed
    assert aws.canonical_class(None) is None
    assert aws.canonical_class("FANCY_NEW") == "FANCY_NEW"
    assert get_profile("aliyun").canonical_class("ColdArchive") in ARCHIVE_CLASSES
    assert get_profile("huaweicloud").canonical_class("WARM") == "IA"
    with pytest.raises(UsageError):
        get_profile("qingcloud").vendor_class("ARCHIVE")
    assert aws.capabilities().storage_classes == frozenset({"STANDARD", "IA", "ARCHIVE", "DEEP_ARCHIVE"})
    assert aws.capabilities().restore


def test_tencent_bucket_appid() -> None:
    cos = get_profile("tencent")
    assert cos.bucket_name("photos", "1250000000") == "photos-1250000000"
    assert cos.bucket_name("photos-1250000000", "1250000000") == "photos-1250000000"
    cos.check_bucket("photos-1250000000")
    with pytest.raises(UsageError, match="APPID"):
        cos.check_bucket("photos")
    get_profile("aws").check_bucket("photos")
