"""Validation errors told against the field they concern (what a form shows next to each input)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from ferry import oms as s
from ferry.errors import NotFoundError, UsageError
from ferry.service.buckets import HelperError
from ferry.service.sync import QuotaExceededError
from ferry.service.tasks import TaskError

DST = {"ak": "DAK", "sk": "DSK", "bucket": "dstb", "region": "cn-north-4"}
SRC = {"cloud_type": "Aliyun", "region": "cn-hangzhou", "ak": "SAK", "sk": "SSK", "bucket": "srcb"}


def fields_of(model: type[BaseModel], data: Any) -> dict[str, tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return {e.field: (e.code, e.message) for e in s.field_errors(info.value.errors(include_input=False))}


def test_rules_tying_fields_together_name_the_fields() -> None:
    got = fields_of(s.CreateTaskReq, {"task_type": "prefix", "src_node": {**SRC, "bucket": None}, "dst_node": DST})
    assert set(got) == {"src_node.bucket"}
    assert got["src_node.bucket"][0] == s.Codes.INVALID_PARAMETER
    assert "src_node.region and src_node.bucket are required" in got["src_node.bucket"][1]

    got = fields_of(s.CreateTaskReq, {"task_type": "list", "src_node": SRC, "dst_node": DST})
    assert set(got) == {"src_node.list_file.list_file_key", "src_node.list_file.obs_bucket"}

    got = fields_of(s.CreateTaskReq, {"src_node": {**SRC, "sk": None}, "dst_node": DST})
    assert set(got) == {"src_node.sk"}


def test_nested_kms_rule_is_placed_under_its_node() -> None:
    cdn = {"domain": "cdn.example.com", "protocol": "https", "authentication_type": "NONE", "crypto_type": "KMS"}
    body = {"src_region": "r", "src_bucket": "a", "src_ak": "x", "src_sk": "y", "dst_ak": "x", "dst_sk": "y",
            "dst_region": "r", "dst_bucket": "b"}
    got = fields_of(s.CreateSyncTaskReq, {**body, "source_cdn": cdn})
    assert set(got) == {"source_cdn.kms_key_id"}
    assert "source_cdn.kms_key_id is required" in got["source_cdn.kms_key_id"][1]
    assert set(fields_of(s.CreateSyncTaskReq, {**body, "dst_crypto_type": "KMS"})) == {"dst_kms_key_id"}


def test_field_limits_and_description_code() -> None:
    got = fields_of(s.CreateTaskReq, {"src_node": SRC, "dst_node": {**DST, "region": ""}, "description": "a<b",
                                      "bandwidth_policy": [{"start": "25:00", "end": "01:00",
                                                            "max_bandwidth": 1}]})
    assert got["description"][0] == s.Codes.DESCRIPTION_CHARS
    assert got["dst_node.region"] == (s.Codes.INVALID_PARAMETER, "is too short (at least 1)")
    assert {"bandwidth_policy[0].start", "bandwidth_policy[0].max_bandwidth"} <= set(got)


def test_refusal_is_one_mapping_for_every_service_error() -> None:
    assert s.refusal(TaskError(409, s.Codes.STATUS_CONFLICT, "busy")).body() == {
        "error_code": s.Codes.STATUS_CONFLICT, "error_msg": "busy"}
    helper = s.refusal(HelperError(s.Codes.UNREACHABLE, "down", status=503, retry_after=2.4))
    assert (helper.status, helper.error_code, helper.headers) == (503, s.Codes.UNREACHABLE, {"Retry-After": "2"})
    quota = s.refusal(QuotaExceededError("The number of sync tasks exceeds the limit (5 per project)."))
    assert (quota.status, quota.error_code) == (400, s.Codes.QUOTA)
    assert s.refusal(UsageError("bad")).error_msg.endswith(" bad")
    assert s.refusal(NotFoundError("secret path")).error_code == s.Codes.NOT_FOUND
