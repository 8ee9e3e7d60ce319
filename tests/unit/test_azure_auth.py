"""Azure credentials: SharedKey signatures against worked examples, connection strings parsed strictly."""

from __future__ import annotations

import base64
from functools import cmp_to_key
from urllib.parse import parse_qsl

import pytest

from ferry.errors import UsageError
from ferry.storage.azure import _decode_meta_name, _encode_meta_name
from ferry.storage.azure_auth import (
    DEV_ACCOUNT,
    DEV_KEY,
    SharedKeySigner,
    _collate,
    account_credentials,
    parse_connection_string,
)

KEY = bytes(range(64))
SECRET = base64.b64encode(KEY).decode()
DATE = "Thu, 03 Dec 2026 12:00:00 GMT"


# Both signatures were computed by azure-storage-blob 12.31.1's SharedKeyCredentialPolicy for the same requests
# (https://myaccount.blob.core.windows.net/..., account key = bytes 0..63).
def test_put_block_signature_matches_the_sdk() -> None:
    signer = SharedKeySigner("myaccount", KEY)
    headers = {"x-ms-date": DATE, "x-ms-version": "2023-11-03", "Content-MD5": "XrY7u+Ae7tCTyyK7j1rNww==",
               "x-ms-meta-a1": "y", "x-ms-meta-a_1": "x", "If-Match": '"0x8D"'}
    path = "/mycontainer/photos/Gr%C3%BC%C3%9Fe%20a%2Bb.jpg"
    query = parse_qsl("comp=block&blockid=QUJD%2BZA%3D%3D")
    assert signer.string_to_sign("PUT", path, query, headers, 11) == (
        'PUT\n\n\n11\nXrY7u+Ae7tCTyyK7j1rNww==\n\n\n\n"0x8D"\n\n\n\n'
        "x-ms-date:Thu, 03 Dec 2026 12:00:00 GMT\nx-ms-meta-a_1:x\nx-ms-meta-a1:y\nx-ms-version:2023-11-03\n"
        "/myaccount/mycontainer/photos/Gr%C3%BC%C3%9Fe%20a%2Bb.jpg\nblockid:QUJD+ZA==\ncomp:block"
    )
    assert signer.authorization("PUT", path, query, headers, 11) == \
        "SharedKey myaccount:ErQNKUMF7MFBZS8HArEkFjXyM06VT9/tJFc33IglHM4="


def test_list_blobs_signature_matches_the_sdk() -> None:
    signer = SharedKeySigner("myaccount", KEY)
    query = parse_qsl("restype=container&comp=list&prefix=a%2Fb&maxresults=5000")
    got = signer.authorization("GET", "/mycontainer", query, {"x-ms-date": DATE, "x-ms-version": "2023-11-03"}, 0)
    assert got == "SharedKey myaccount:IDcJAPfAMHrWiCMVwHUUD99Q76j36nXnxgiOYkJBlSc="


def test_header_collation_is_the_services_not_code_point_order() -> None:
    names = ["x-ms-meta-a1", "x-ms-meta-a-1", "x-ms-meta-A2", "x-ms-meta-a_1", "x-ms-version", "x-ms-date"]
    assert sorted(names, key=cmp_to_key(_collate)) == [
        "x-ms-date", "x-ms-meta-a_1", "x-ms-meta-a1", "x-ms-meta-a-1", "x-ms-meta-A2", "x-ms-version"]


def test_account_key_credentials_default_to_the_public_endpoint() -> None:
    creds = account_credentials("myaccount", key=SECRET)
    assert creds.endpoint == "https://myaccount.blob.core.windows.net" and creds.key == KEY
    assert SECRET not in repr(creds)
    sas = account_credentials("myaccount", sas="?sv=2023-11-03&sp=rl&sig=abc%2Bdef")
    assert sas.sas == "sv=2023-11-03&sp=rl&sig=abc%2Bdef" and sas.key is None


@pytest.mark.parametrize("text, account, endpoint", [
    (f"DefaultEndpointsProtocol=https;AccountName=myaccount;AccountKey={SECRET};EndpointSuffix=core.windows.net",
     "myaccount", "https://myaccount.blob.core.windows.net"),
    (f"AccountName=myaccount;AccountKey={SECRET};EndpointSuffix=core.chinacloudapi.cn;",
     "myaccount", "https://myaccount.blob.core.chinacloudapi.cn"),
    (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={SECRET};"
     "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;",
     "devstoreaccount1", "http://127.0.0.1:10000/devstoreaccount1"),
    ("BlobEndpoint=https://myaccount.blob.core.windows.net/;SharedAccessSignature=sv=2023-11-03&sp=rl&sig=x%2By",
     "myaccount", "https://myaccount.blob.core.windows.net"),
    ("UseDevelopmentStorage=true", DEV_ACCOUNT, "http://127.0.0.1:10000/devstoreaccount1"),
])
def test_connection_strings(text: str, account: str, endpoint: str) -> None:
    creds = parse_connection_string(text)
    assert (creds.account, creds.endpoint) == (account, endpoint)
    assert (creds.key is None) != (creds.sas is None)
    if text.startswith("UseDevelopmentStorage"):
        assert creds.key == base64.b64decode(DEV_KEY)


@pytest.mark.parametrize("text, reason", [
    ("", "needs AccountKey or SharedAccessSignature"),
    ("AccountName=myaccount", "needs AccountKey or SharedAccessSignature"),
    (f"AccountName=myaccount;AccountKey={SECRET};AccountName=other", "given twice"),
    (f"AccountName=myaccount;AccountKey={SECRET};Colour=blue", "unknown setting in part 3"),
    ("AccountName=myaccount;AccountKey", "part 2 is not Name=value"),
    (f"AccountName=myaccount;{SECRET}", "unknown setting in part 2"),  # a pasted key alone: `==` splits it
    ("AccountName=myaccount;AccountKey=not*base64!", "not a base64 Azure account key"),
    (f"AccountKey={SECRET}", "AccountKey needs AccountName"),
    (f"AccountName=My_Account;AccountKey={SECRET}", "invalid Azure storage account name"),
    (f"AccountName=myaccount;AccountKey={SECRET};SharedAccessSignature=sig=1", "both AccountKey and"),
    (f"AccountName=myaccount;AccountKey={SECRET};BlobEndpoint=ftp://user:{SECRET}@host/", "BlobEndpoint"),
    (f"DefaultEndpointsProtocol=gopher;AccountName=myaccount;AccountKey={SECRET}", "DefaultEndpointsProtocol"),
    ("AccountName=myaccount;SharedAccessSignature=sv=2023-11-03&sp=rl", "SAS token is malformed"),
])
def test_malformed_connection_strings_are_refused_without_echoing_a_secret(text: str, reason: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_connection_string(text)
    message = caught.value.message
    assert reason in message
    assert SECRET not in message and SECRET[:12] not in message and "not*base64" not in message


@pytest.mark.parametrize("name", ["owner", "x-trace", "empty-ish", "Ünïcode key", "a_b", "_x", "ferryx_a", "9lives"])
def test_metadata_names_azure_refuses_are_encoded_reversibly(name: str) -> None:
    encoded = _encode_meta_name(name)
    assert encoded.isascii() and (encoded[0].isalpha() or encoded[0] == "_")
    assert all(ch.isalnum() or ch == "_" for ch in encoded)
    assert _decode_meta_name(encoded) == name
    assert (encoded == name) == (name in ("owner", "a_b", "_x"))
