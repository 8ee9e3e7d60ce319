"""CDN URL signing: every type against the vendors' worked examples, and the doc samples that do not reproduce."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from ferry.storage.cdn_signing import AUTH_TYPES, CdnCredentials, sign_url, url_path

ALIYUN_KEY = "aliyuncdnexp1234"
TENCENT_KEY = "dimtm5evg50ijsx2hvuwyfoiu65"


def _unix(stamp: str, hours_ahead_of_utc: int = 8) -> int:
    moment = datetime.strptime(stamp, "%Y%m%d%H%M").replace(tzinfo=UTC)
    return int(moment.timestamp()) - hours_ahead_of_utc * 3600


def _sign(kind: str, key: str, creds: CdnCredentials, now: int, rand: str = "0", domain: str = "cdn.example.com",
          scheme: str = "http", ttl: int = 3600) -> str:
    return sign_url(kind, scheme, domain, key, creds, now=now, rand=rand, ttl=ttl).url


def test_all_eleven_types_are_signed() -> None:
    assert len(AUTH_TYPES) == 11
    creds = CdnCredentials(key="k" * 16, ak="AK", sk="SK", bucket="b")
    urls = {kind: _sign(kind, "a b/ç.txt", creds, 1_700_000_000) for kind in AUTH_TYPES}
    assert urls["NONE"] == "http://cdn.example.com/a%20b/%C3%A7.txt"
    # Alibaba's and Tencent's types B and C are one algorithm each; every other pair differs.
    assert urls["ALIYUN_OSS_B"] == urls["TENCENT_COS_B"] and urls["ALIYUN_OSS_C"] == urls["TENCENT_COS_C"]
    assert len(set(urls.values())) == 9


def test_aliyun_type_a_worked_examples() -> None:
    creds = CdnCredentials(key=ALIYUN_KEY)
    assert _sign("ALIYUN_OSS_A", "video/standard/test.mp4", creds, 1444435200) == (
        "http://cdn.example.com/video/standard/test.mp4?auth_key=1444435200-0-0-23bf85053008f5c0e791667a313e28ce")
    assert _sign("ALIYUN_OSS_A", "video/standard/1K.html", creds, 1444435200).endswith(
        "-80cd3862d699b7118eed99103f2a3a4f")


def test_aliyun_type_b_worked_example_is_china_time() -> None:
    url = _sign("ALIYUN_OSS_B", "4/44/44c0909bcfc20a01afaf256ca99a8b8b.mp3", CdnCredentials(key=ALIYUN_KEY),
                1439596800)
    assert url == ("http://cdn.example.com/201508150800/9044548ef1527deadafa49a890a377f0"
                   "/4/44/44c0909bcfc20a01afaf256ca99a8b8b.mp3")


def test_aliyun_type_c_hashes_the_hex_time_as_written() -> None:
    # The doc example hashes upper-case hex; the signer writes lower case (Alibaba's demo), and hashes that.
    assert hashlib.md5(f"{ALIYUN_KEY}/test.flv55CE8100".encode()).hexdigest() == "a37fa50a5fb8f71214b1e7c95ec7a1bd"
    url = _sign("ALIYUN_OSS_C", "test.flv", CdnCredentials(key=ALIYUN_KEY), 0x55CE8100)
    lower = hashlib.md5(f"{ALIYUN_KEY}/test.flv55ce8100".encode()).hexdigest()
    assert url == f"http://cdn.example.com/{lower}/55ce8100/test.flv"


def test_tencent_worked_examples() -> None:
    creds = CdnCredentials(key=TENCENT_KEY)
    a = _sign("TENCENT_COS_A", "test.jpg", creds, 1582791032, rand="im1acp76sx9sdqe601v", domain="cloud.tencent.com")
    assert a == ("http://cloud.tencent.com/test.jpg"
                 "?sign=1582791032-im1acp76sx9sdqe601v-0-3fbb88382c9356b6faaf9d68c7b2ae3a")
    b = _sign("TENCENT_COS_B", "test.jpg", creds, _unix("202002271610"), domain="cloud.tencent.com")
    assert b == "http://cloud.tencent.com/202002271610/2e03a07cfa55a47768226d3e5ea82a8d/test.jpg"
    c = _sign("TENCENT_COS_C", "test.jpg", creds, 0x5E577978, domain="cloud.tencent.com")
    assert c == "http://cloud.tencent.com/7913fc0c5c9e92dd3633b7895152bbb2/5e577978/test.jpg"
    d = _sign("TENCENT_COS_D", "test.jpg", creds, 1582791032, domain="cloud.tencent.com")
    assert d == "http://cloud.tencent.com/test.jpg?sign=900a5049aa8ac1ab144527d9c2be4cea&t=1582791032"


def test_edgeone_examples_of_the_same_family() -> None:
    creds = CdnCredentials(key="DvYmqE81E1F9R791H6lmht")
    assert "/d1f0b51c6894231fc12e054fcc7f0b3e/" in _sign("TENCENT_COS_B", "foo.jpg", creds, _unix("202407151533"))
    assert "sign=cadcec4a04e67b9c2abf4b61c642a0dd&" in _sign("TENCENT_COS_D", "foo.jpg", creds, 1721029907)


def test_vendor_doc_samples_that_do_not_reproduce_are_not_produced() -> None:
    creds = CdnCredentials(key=TENCENT_KEY)
    # The English TypeC page's formula, md5(key + time + uri), does not give its own worked example.
    assert hashlib.md5(f"{TENCENT_KEY}5e577978/test.jpg".encode()).hexdigest() != "7913fc0c5c9e92dd3633b7895152bbb2"
    a = _sign("TENCENT_COS_A", "test.jpg", creds, 1582791032, rand="im1acp76sx9sdqe601v")
    b = _sign("TENCENT_COS_B", "test.jpg", creds, _unix("202002271610"))
    d = _sign("TENCENT_COS_D", "test.jpg", creds, 1582791032)
    assert "dd63f95e" not in a
    assert "b91bad39" not in b and "ea68b93a" not in b
    assert "0f8201d8" not in d
    qiniu = _sign("QINIU_PRIVATE_AUTHENTICATION", "resource/flower.jpg", CdnCredentials(ak="AK", sk="MY_SECRET_KEY"),
                  1451491200 - 3600, domain="78re52.com1.z0.glb.clouddn.com")
    assert "yN9WtB0lQheegAwva64yBuH3ZgU=" not in qiniu


def test_qiniu_download_token_worked_example() -> None:
    url = _sign("QINIU_PRIVATE_AUTHENTICATION", "resource/flower.jpg", CdnCredentials(ak="MY_ACCESS_KEY",
                sk="MY_SECRET_KEY"), 1451491200 - 3600, domain="78re52.com1.z0.glb.clouddn.com")
    assert url == ("http://78re52.com1.z0.glb.clouddn.com/resource/flower.jpg?e=1451491200"
                   "&token=MY_ACCESS_KEY:438dd8pXocjYuF-6dTcKMtETB2g=")


def test_kingsoft_query_signature_vector() -> None:
    url = _sign("KSYUN_PRIVATE_AUTHENTICATION", "photos/a.jpg", CdnCredentials(ak="AKLT1", sk="SECRETKEY",
                bucket="mybucket"), 1700000000 - 60, ttl=60)
    assert url == ("http://cdn.example.com/photos/a.jpg?KSSAccessKeyId=AKLT1&Expires=1700000000"
                   "&Signature=SPteNm2OOOVYiQOEYnDIIm199WE%3D")


def test_azure_sas_is_appended_as_given() -> None:
    creds = CdnCredentials(key="?sv=2024-01-01&sr=b&sig=abc%3D")
    assert _sign("AZURE_SAS_TOKEN", "c/d.txt", creds, 0) == "http://cdn.example.com/c/d.txt?sv=2024-01-01&sr=b&sig=abc%3D"


@pytest.mark.parametrize("kind", sorted(AUTH_TYPES - {"NONE"}))
def test_missing_signing_material_is_refused(kind: str) -> None:
    with pytest.raises(ValueError):
        _sign(kind, "k", CdnCredentials(), 0)


def test_unknown_type_and_repr_hide_secrets() -> None:
    with pytest.raises(ValueError):
        _sign("ALIYUN_OSS_F", "k", CdnCredentials(key="x"), 0)
    assert "sekrit" not in repr(CdnCredentials(key="sekrit", ak="a", sk="sekrit"))
    assert url_path("a+b?c#d%e") == "/a%2Bb%3Fc%23d%25e"
