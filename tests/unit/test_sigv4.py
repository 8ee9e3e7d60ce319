"""SigV4 signer against the worked S3 examples of the AWS documentation, and against botocore."""

from __future__ import annotations

import hashlib

import pytest

from ferry.storage.s3 import S3Backend
from ferry.storage.sigv4 import (
    EMPTY_SHA256,
    SigV4Signer,
    canonical_query,
    quote_path,
)

# The example credentials and timestamp of "Signature Calculations for the Authorization Header" (S3 docs).
AK = "AKIAIOSFODNN7EXAMPLE"
SK = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
HOST = "examplebucket.s3.amazonaws.com"
STAMP = "20130524T000000Z"


def _signature(headers: dict[str, str]) -> str:
    return headers["Authorization"].rsplit("Signature=", 1)[1]


@pytest.fixture
def signer() -> SigV4Signer:
    return SigV4Signer(AK, SK, "us-east-1")


def test_get_object_example(signer: SigV4Signer) -> None:
    h = signer.sign("GET", HOST, "/test.txt", "", {"Range": "bytes=0-9"},
                    payload_hash=EMPTY_SHA256, timestamp=STAMP)
    assert "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date," in h["Authorization"]
    assert _signature(h) == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    scope = "20130524/us-east-1/s3/aws4_request"
    assert h["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={AK}/{scope}")


def test_put_object_example(signer: SigV4Signer) -> None:
    payload = b"Welcome to Amazon S3."
    h = signer.sign(
        "PUT", HOST, quote_path("/test$file.text"), "",
        {"Date": "Fri, 24 May 2013 00:00:00 GMT", "x-amz-storage-class": "REDUCED_REDUNDANCY"},
        payload_hash=hashlib.sha256(payload).hexdigest(), timestamp=STAMP,
    )
    assert _signature(h) == "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"


def test_get_bucket_lifecycle_example(signer: SigV4Signer) -> None:
    h = signer.sign("GET", HOST, "/", "lifecycle=", {}, payload_hash=EMPTY_SHA256, timestamp=STAMP)
    assert _signature(h) == "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"


def test_list_objects_example(signer: SigV4Signer) -> None:
    query = canonical_query([("prefix", "J"), ("max-keys", "2")])
    assert query == "max-keys=2&prefix=J"
    h = signer.sign("GET", HOST, "/", query, {}, payload_hash=EMPTY_SHA256, timestamp=STAMP)
    assert _signature(h) == "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"


def test_encoding_rules() -> None:
    assert quote_path("/b/a b+c%d?e#f~g/ü") == "/b/a%20b%2Bc%25d%3Fe%23f~g/%C3%BC"
    assert canonical_query([("prefix", "a/b c"), ("list-type", "2")]) == "list-type=2&prefix=a%2Fb%20c"


def test_repr_hides_secret(signer: SigV4Signer) -> None:
    assert SK not in repr(signer)
    assert SK not in str(signer)


@pytest.mark.parametrize("key", ["plain", "sp ace/ü+%#?", "dir/", "x" * 900])
def test_matches_botocore(key: str) -> None:
    """Our signer and botocore's agree for the same request (path style, encoded keys and query)."""
    botocore = pytest.importorskip("botocore")
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    del botocore
    path = quote_path(f"/bucket/{key}")
    query = canonical_query([("partNumber", "3"), ("uploadId", "a/b=c")])
    url = f"http://127.0.0.1:8333{path}?{query}"
    req = AWSRequest(method="PUT", url=url, headers={"x-amz-meta-k": "v", "Content-Type": "text/plain"})
    S3SigV4Auth(Credentials(AK, SK), "s3", "eu-west-1").add_auth(req)
    ours = SigV4Signer(AK, SK, "eu-west-1").sign(
        "PUT", "127.0.0.1:8333", path, query, {"x-amz-meta-k": "v", "Content-Type": "text/plain"},
        payload_hash=EMPTY_SHA256, timestamp=req.context["timestamp"],
    )
    assert ours["Authorization"] == req.headers["Authorization"]


@pytest.mark.parametrize(("key", "wire"), [
    ("a/../b", "/bucket/a/%2E%2E/b"), ("../x", "/bucket/%2E%2E/x"), ("c/./d", "/bucket/c/%2E/d"),
    ("e/..", "/bucket/e/%2E%2E"), ("f/.", "/bucket/f/%2E"), ("g/.../h..", "/bucket/g/.../h.."),
    ("i./.j", "/bucket/i./.j"),
])
def test_dot_segments_are_encoded_on_the_wire_and_signed_as_botocore_signs_them(key: str, wire: str) -> None:
    """A `.`/`..` segment goes out percent-encoded, so no normalising hop resolves it; the signature covers
    the key as S3 canonicalises it (decoded, then encoded once: dots stay dots), which is what botocore signs
    for the same key and what SeaweedFS verifies."""
    pytest.importorskip("botocore")
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    backend = S3Backend("http://127.0.0.1:8333", "eu-west-1", AK, SK, "bucket", profile="s3")
    target, signed = backend._signed("PUT", key, (), {"Content-Type": "text/plain"}, b"", None, EMPTY_SHA256)
    assert target == wire
    req = AWSRequest(method="PUT", url=f"http://127.0.0.1:8333{quote_path('/bucket/' + key)}", data=b"",
                     headers={"Content-Type": "text/plain"})
    req.context["timestamp"] = signed["x-amz-date"]
    S3SigV4Auth(Credentials(AK, SK), "s3", "eu-west-1").add_auth(req)
    assert signed["Authorization"] == req.headers["Authorization"]
