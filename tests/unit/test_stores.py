"""The one seam that opens a cloud's bucket: keys never shown, the profile decides the kind of store."""

from __future__ import annotations

import pytest

from ferry.errors import UsageError
from ferry.storage import stores
from ferry.storage.azure import AzureBackend
from ferry.storage.base import ListOrder
from ferry.storage.s3 import S3Backend
from ferry.storage.stores import StoreAt, StoreKeys, open_at


def test_keys_are_never_shown() -> None:
    keys = StoreKeys("AKIDEXAMPLE", "very-secret-key", connection_string="AccountKey=hidden")
    shown = f"{keys!r} {keys!s}"
    assert "very-secret-key" not in shown and "hidden" not in shown and "AKIDEXAMPLE" not in shown
    assert "ak" in shown and "connection_string" in shown


def test_keys_of_one_side_of_a_task() -> None:
    secrets = {"src_ak": "a", "src_sk": "b", "src_security_token": "", "dst_ak": "c", "dst_sk": "d"}
    assert StoreKeys.of(secrets, "src") == StoreKeys("a", "b")
    assert StoreKeys.of(secrets, "dst") == StoreKeys("c", "d")


def test_an_s3_cloud_opens_an_s3_backend_and_an_override_lists_unordered() -> None:
    at = StoreAt("aliyun", "http://127.0.0.1:9", "cn-hangzhou", "bucket-a", "pre/", from_override=True)
    backend = open_at(at, StoreKeys("ak", "sk"))
    assert isinstance(backend, S3Backend)
    assert backend.capabilities.list_order is ListOrder.UNORDERED
    public = open_at(StoreAt("aliyun", None, "cn-hangzhou", "bucket-a"), StoreKeys("ak", "sk"))
    assert public.capabilities.list_order is ListOrder.LEXICOGRAPHIC


def test_an_s3_cloud_without_keys_is_refused() -> None:
    with pytest.raises(UsageError, match="access key and a secret key"):
        open_at(StoreAt("aws", None, "us-east-1", "bucket-a"), StoreKeys(json_auth="{}"))


def test_a_kind_without_an_opener_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = stores.get_profile("aws").replace(backend="elsewhere")
    monkeypatch.setattr(stores, "get_profile", lambda name: profile)
    with pytest.raises(UsageError, match="cannot be opened"):
        open_at(StoreAt("aws", None, "us-east-1", "bucket-a"), StoreKeys("ak", "sk"))


AZURE_KEY = "a2V5IG9mIGEgdGVzdCBhY2NvdW50IGZvciBmZXJyeQ=="


def test_azure_opens_the_accounts_endpoint_from_ak_sk() -> None:
    backend = open_at(StoreAt("Azure", "https://blob.core.windows.net", "eastus", "photos", "p/"),
                      StoreKeys("myaccount", AZURE_KEY))
    assert isinstance(backend, AzureBackend)
    assert (backend.endpoint, backend.container, backend.prefix) == (
        "https://myaccount.blob.core.windows.net", "photos", "p/")
    assert backend.capabilities.list_order is ListOrder.UNORDERED and backend.capabilities.restore
    assert AZURE_KEY not in repr(backend) and AZURE_KEY not in repr(backend.credentials)


def test_azure_connection_strings_keep_to_azure_unless_the_operator_maps_the_region() -> None:
    text = f"AccountName=myaccount;AccountKey={AZURE_KEY};EndpointSuffix=core.chinacloudapi.cn"
    china = open_at(StoreAt("azure", "https://blob.core.windows.net", "chinaeast2", "photos"),
                    StoreKeys(connection_string=text))
    assert isinstance(china, AzureBackend) and china.endpoint == "https://myaccount.blob.core.chinacloudapi.cn"
    inward = f"AccountName=myaccount;AccountKey={AZURE_KEY};BlobEndpoint=http://10.0.0.5:10000/myaccount"
    public = StoreAt("azure", "https://blob.core.windows.net", "eastus", "photos")
    with pytest.raises(UsageError, match="not one of Azure's public endpoints"):
        open_at(public, StoreKeys(connection_string=inward))
    mapped = open_at(StoreAt("azure", "http://127.0.0.1:10000/myaccount", "eastus", "photos", from_override=True),
                     StoreKeys(connection_string=inward))
    assert isinstance(mapped, AzureBackend) and mapped.endpoint == "http://127.0.0.1:10000/myaccount"


def test_azure_without_keys_or_with_a_bad_container_is_refused() -> None:
    at = StoreAt("azure", None, "eastus", "photos")
    with pytest.raises(UsageError, match="account name and key"):
        open_at(at, StoreKeys(ak="myaccount"))
    with pytest.raises(UsageError, match="bucket name"):
        open_at(StoreAt("azure", None, "eastus", "Photos_2024"), StoreKeys("myaccount", AZURE_KEY))
