"""Endpoint resolution: public table, operator overrides, and refusal of internal addresses."""

from __future__ import annotations

import pytest

from ferry.errors import UsageError
from ferry.service.endpoints import is_public_host, load_overrides, resolve


def test_public_table_and_override() -> None:
    assert resolve("Aliyun", "cn-hangzhou", {}).url == "https://oss-cn-hangzhou.aliyuncs.com"
    ov = load_overrides('{"HuaweiCloud/cn-north-4": "http://127.0.0.1:9000/"}')
    got = resolve("HuaweiCloud", "cn-north-4", ov)
    assert (got.url, got.profile, got.from_override) == ("http://127.0.0.1:9000", "huaweicloud", True)
    assert resolve("HEC", "cn-north-4", ov).url == "http://127.0.0.1:9000"


@pytest.mark.parametrize("cloud,region", [
    ("AWS", "127.0.0.1"), ("AWS", "x/../y"), ("AWS", ""), ("Nowhere", "r1"), ("Aliyun", "a" * 80),
    ("AWS", "us-east-1.evil.com#"),
])
def test_bad_cloud_or_region_is_refused(cloud: str, region: str) -> None:
    with pytest.raises(UsageError):
        resolve(cloud, region, {})


@pytest.mark.parametrize("host,public", [
    ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.0.1", False), ("169.254.169.254", False),
    ("::1", False), ("[fd00::1]", False), ("localhost", False), ("0.0.0.0", False), ("8.8.8.8", True),
    ("oss-cn-hangzhou.aliyuncs.com", True), ("metadata.google.internal", False),
])
def test_internal_hosts_are_not_public(host: str, public: bool) -> None:
    assert is_public_host(host) is public


@pytest.mark.parametrize("raw", ["[1]", "{not json", '{"AWS": "http://x"}', '{"AWS/r": "ftp://x"}', '{"a/b": 3}'])
def test_malformed_overrides_are_a_clear_error(raw: str) -> None:
    with pytest.raises(UsageError):
        load_overrides(raw)
