"""Each S3-compatible cloud's profile pinned to its vendor's documentation (sources-and-scale.md §B.3, §B.4).

One row per cloud: endpoint of a region, addressing, list version, CRC64 header, the class names written and
read, and the restore call. A profile edit that contradicts a vendor's documented fact fails here.
"""

from __future__ import annotations

import pytest

from ferry.oms.clouds import CloudTypeKind, cloud_types, region_table
from ferry.oms.common import CloudType
from ferry.service.endpoints import CLOUD_PROFILES, resolve, resolve_known
from ferry.storage.profiles import ARCHIVE_CLASSES, get_profile

# cloud: (region, endpoint, addressing, list version, CRC64 headers, restore call, restore status header)
FACTS = {
    "aws": ("eu-west-1", "https://s3.eu-west-1.amazonaws.com", "virtual", 2, (), "s3", "x-amz-restore"),
    "aliyun": ("cn-shanghai", "https://oss-cn-shanghai.aliyuncs.com", "virtual", 2, ("x-oss-hash-crc64ecma",),
               "s3", "x-oss-restore"),
    "tencent": ("ap-beijing", "https://cos.ap-beijing.myqcloud.com", "virtual", 1, ("x-cos-hash-crc64ecma",),
                "s3", "x-cos-restore"),
    "huaweicloud": ("cn-north-4", "https://obs.cn-north-4.myhuaweicloud.com", "virtual", 1,
                    ("x-obs-hash-crc64ecma", "x-amz-hash-crc64ecma"), "s3", "x-obs-restore"),
    "qingcloud": ("sh1a", "https://s3.sh1a.qingstor.com", "virtual", 2, (), None, None),
    "kingsoftcloud": ("cn-beijing", "https://ks3-cn-beijing.ksyuncs.com", "virtual", 2,
                      ("x-kss-checksum-crc64ecma",), "s3", "x-amz-restore"),
    "baidu": ("gz", "https://s3.gz.bcebos.com", "virtual", 1, ("x-bce-content-crc64ecma",), "bce", "x-bce-restore"),
    "qiniu": ("cn-south-1", "https://s3.cn-south-1.qiniucs.com", "path", 2, (), "qiniu", "x-amz-restore"),
    "ucloud": ("cn-sh2", "https://s3-cn-sh2.ufileos.com", "path", 1, (), "s3", "x-amz-restore"),
}


@pytest.mark.parametrize("cloud", sorted(FACTS))
def test_each_cloud_matches_its_documentation(cloud: str) -> None:
    region, endpoint, addressing, list_version, crc64, call, status = FACTS[cloud]
    p = get_profile(cloud)
    assert p.endpoint(region) == endpoint
    assert (p.addressing, p.list_version, p.crc64_headers) == (addressing, list_version, crc64)
    assert p.restore_call == call and p.restore is (call is not None)
    if status is not None:
        assert p.restore_status_headers[0] == status
    # The default region is one the cloud lists, and every listed region makes a well-formed endpoint.
    assert p.default_region in {r.id for r in p.regions}, cloud
    for r in p.regions:
        assert p.endpoint(r.id).startswith(("https://", "http://")) and "{" not in p.endpoint(r.id)


def test_qiniu_uses_the_documented_endpoint_and_accepts_native_zone_ids() -> None:
    q = get_profile("qiniu")
    assert q.endpoint() == "https://s3.cn-east-1.qiniucs.com"  # not the legacy s3-cn-east-1 form
    assert q.endpoint("z0") == "https://s3.cn-east-1.qiniucs.com" and q.region_id("na0") == "us-north-1"
    assert resolve_known("Qiniu", "z1", {}).url == "https://s3.cn-north-1.qiniucs.com"
    assert q.restore_host("z2") == "https://rs-z2.qiniuapi.com"
    assert q.restore_host("ap-southeast-2") == "https://rs.qiniuapi.com"
    # Classes as Qiniu's S3 API names them: LINE is infrequent access, GLACIER_IR is read without restore.
    assert q.vendor_class("IA") == "LINE" and q.vendor_class("ARCHIVE") == "GLACIER"
    assert q.canonical_class("GLACIER_IR") == "IA" and q.canonical_class("INTELLIGENT_TIERING") == "STANDARD"
    assert q.canonical_class("DEEP_ARCHIVE") in ARCHIVE_CLASSES


def test_baidu_never_sends_aws_chunked_and_writes_only_what_its_s3_put_takes() -> None:
    b = get_profile("baidu")
    assert not b.trailing_crc32c and not b.part_crc32c
    caps = b.capabilities()
    assert not caps.trailing_crc32c and not caps.part_crc32c
    assert set(b.to_vendor.values()) == {"STANDARD", "STANDARD_IA"}
    assert b.canonical_class("ARCHIVE") == "ARCHIVE"  # read and restored all the same
    # fwh and hkg answer plain HTTP only.
    assert b.endpoint("hkg") == "http://s3.hkg.bcebos.com" and b.endpoint("fwh") == "http://s3.fwh.bcebos.com"
    assert resolve("Baidu", "bj", {}).url == "https://s3.bj.bcebos.com"


def test_kingsoft_regions_are_endpoint_ids_with_the_sdk_names_as_aliases() -> None:
    k = get_profile("kingsoftcloud")
    assert k.endpoint("HONGKONG") == "https://ks3-cn-hk-1.ksyuncs.com"
    assert resolve_known("KingsoftCloud", "BEIJING", {}).region == "cn-beijing"
    assert k.vendor_class("DEEP_ARCHIVE") == "DEEP_COLD_ARCHIVE"


def test_ucloud_is_path_addressed_and_its_etag_is_not_an_md5() -> None:
    u = get_profile("ucloud")
    assert u.addressing == "path" and not u.etag_is_md5


def test_tencent_does_not_promise_a_crc64_on_every_object() -> None:
    assert not get_profile("tencent").capabilities().crc64
    assert get_profile("aliyun").capabilities().crc64


@pytest.mark.parametrize("cloud", sorted(FACTS))
def test_class_names_round_trip(cloud: str) -> None:
    p = get_profile(cloud)
    for canonical, vendor in p.to_vendor.items():
        assert p.canonical_class(vendor) == canonical
    assert p.canonical_class("STANDARD") == "STANDARD"


def test_cloud_type_list_and_region_list_answer_from_the_same_data() -> None:
    listed = set(cloud_types(CloudTypeKind.SRC))
    with_regions = {cloud for cloud, _ in region_table()}
    # Every source cloud has its regions, but a list of URLs, which has none.
    assert listed - with_regions == {CloudType.URLSOURCE}
    assert with_regions <= listed
    for cloud, regions in region_table():
        profile = CLOUD_PROFILES.get(cloud.value.lower())
        if profile is not None:
            assert regions == get_profile(profile).regions, cloud
            for r in regions:
                assert resolve_known(cloud.value, r.id, {}).region == r.id


class _Dst:
    """Just what StorageClassRule reads of a destination: its profile's capabilities."""

    def __init__(self, cloud: str) -> None:
        self.capabilities = get_profile(cloud).capabilities()
        self.name = cloud


@pytest.mark.parametrize("src_cloud", sorted(FACTS))
def test_src_storage_mapping_carries_every_vendor_class_to_every_vendor(src_cloud: str) -> None:
    """SRC_STORAGE_MAPPING: a source's own class name -> canonical -> the destination's name for it, or its
    default class when it has no such class (nothing is refused, nothing mislabelled)."""
    from ferry.engine.copier import KEEP_SOURCE_CLASS, StorageClassRule
    from ferry.objects import ObjectInfo

    src = get_profile(src_cloud)
    for dst_cloud in sorted(FACTS):
        dst = get_profile(dst_cloud)
        rule = StorageClassRule(KEEP_SOURCE_CLASS, _Dst(dst_cloud))  # type: ignore[arg-type]
        for vendor_name in src.from_vendor:
            canonical = src.canonical_class(vendor_name)
            assert canonical in ("STANDARD", "IA", "ARCHIVE", "DEEP_ARCHIVE"), (src_cloud, vendor_name)
            chosen = rule(ObjectInfo("k", 1, 0.0, storage_class=canonical))
            if canonical == "STANDARD" or canonical not in dst.to_vendor:
                assert chosen is None, (src_cloud, vendor_name, dst_cloud)
            else:
                assert chosen == canonical and dst.canonical_class(dst.vendor_class(chosen)) == canonical
