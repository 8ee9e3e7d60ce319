"""The fast ListObjects parser agrees with ElementTree on every shape of listing XML stores send."""

from __future__ import annotations

from urllib.parse import quote_plus

import pytest

from ferry.storage.s3 import S3Backend

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
KEYS = ["a", "a b/c", "x+y", "%41", "q?x", "amp&lt", "ü/日本", "dir/", "<tag>", "'quote\""]


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _aws(keys: list[str], encode: bool, pretty: bool) -> bytes:
    nl = "\n  " if pretty else ""
    rows = "".join(
        f"{nl}<Contents>{nl}<Key>{quote_plus(k, safe='/') if encode else _esc(k)}</Key>"
        f"{nl}<LastModified>2024-01-02T03:04:0{i % 10}.000Z</LastModified>{nl}<ETag>&quot;e{i}&quot;</ETag>"
        f"<ChecksumAlgorithm>CRC64NVME</ChecksumAlgorithm><Size>{i}</Size><Owner><ID>o</ID>"
        f"<DisplayName>d</DisplayName></Owner><StorageClass>{'GLACIER' if i % 3 else 'STANDARD'}</StorageClass>"
        f"</Contents>"
        for i, k in enumerate(keys)
    )
    enc = "<EncodingType>url</EncodingType>" if encode else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult {NS}><Name>b</Name><Prefix></Prefix>'
            f"<KeyCount>{len(keys)}</KeyCount><MaxKeys>1000</MaxKeys>{enc}<IsTruncated>true</IsTruncated>"
            f"{rows}<NextContinuationToken>tok/=+</NextContinuationToken></ListBucketResult>").encode()


def _seaweed(keys: list[str]) -> bytes:
    rows = "".join(
        f"<Contents><Key>{quote_plus(k, safe='/')}</Key><ETag>&#34;e{i}&#34;</ETag><Size>{i}</Size>"
        f"<StorageClass>STANDARD</StorageClass><LastModified>2026-11-25T03:04:44Z</LastModified></Contents>"
        for i, k in enumerate(keys)
    )
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult {NS}><Name>b</Name><Prefix></Prefix>'
            f"<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{rows}"
            f"<EncodingType>url</EncodingType><KeyCount>{len(keys)}</KeyCount></ListBucketResult>").encode()


@pytest.mark.parametrize("body", [
    _aws(KEYS, encode=True, pretty=False),
    _aws(KEYS, encode=False, pretty=False),
    _aws(KEYS, encode=True, pretty=True),
    _aws([], encode=True, pretty=False),
    _seaweed(KEYS),
    b'<?xml version="1.0"?><ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key><![CDATA[c]]>'
    b"</Key><Size>1</Size></Contents></ListBucketResult>",
])
def test_fast_parser_matches_element_tree(body: bytes) -> None:
    b = S3Backend("http://127.0.0.1:9", "us-east-1", "a", "b", "bkt", profile="aws")
    fast = b._parse_listing(body, 0)
    assert fast == b._parse_listing_tree(body, 0)
    if b"CDATA" not in body and fast[0]:
        assert [o.key for o in fast[0]] == KEYS


def test_parsed_fields() -> None:
    b = S3Backend("http://127.0.0.1:9", "us-east-1", "a", "b", "bkt", "pre/", profile="aws")
    objects, truncated, token, last = b._parse_listing(_aws(["pre/x y", "pre/z"], True, False), len("pre/"))
    assert [(o.key, o.size, o.etag, o.storage_class) for o in objects] == [
        ("x y", 0, "e0", "STANDARD"), ("z", 1, "e1", "ARCHIVE")]
    assert objects[0].mtime == 1704164640.0
    assert truncated and token == "tok/=+" and last == "pre/z"
