"""Sync service rules without servers: key decoding, S3 notification parsing, time units, month windows."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ferry.errors import UsageError
from ferry.oms import EPOCH_MILLIS_MAX, ShowSyncTaskQuery
from ferry.service.sync import decode_event_key, month_window, parse_s3_notification, to_epoch_seconds


def test_event_keys_are_percent_decoded_and_checked() -> None:
    assert decode_event_key("a%2Fb%20c+d.txt", "k") == "a/b c+d.txt"  # OMS: '+' is a plus sign
    assert decode_event_key("a%2Fb+c", "k", plus_is_space=True) == "a/b c"  # S3 notifications: form encoding
    assert decode_event_key("%E6%96%87", "k") == "\u6587"
    assert decode_event_key("plain", "k") == "plain"
    for bad, why in (("", "empty"), ("%FF", "UTF-8"), ("a" * 1025, "1024"), ("%E6%96%87" * 342, "1024")):
        with pytest.raises(UsageError, match=why):
            decode_event_key(bad, "object_keys[0]")


def _record(name: str, bucket: str, key: str) -> dict[str, Any]:
    return {"eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}


def test_s3_notifications_minio_aws_and_sns() -> None:
    payload = {"EventName": "s3:ObjectCreated:Put", "Key": "b/x", "Records": [
        _record("s3:ObjectCreated:Put", "b", "dir/a+b%2Bc.txt"),  # MinIO spelling, form-encoded key
        _record("ObjectCreated:Copy", "b", "y"),
        _record("ObjectRemoved:Delete", "b", "gone"),
        _record("ObjectCreated:Put", "other-bucket", "z"),
        _record("ObjectRestore:Completed", "b", "w"),
    ]}
    assert parse_s3_notification(payload, "b") == (["dir/a b+c.txt", "y"], 3)
    sns = {"Type": "Notification", "Message": json.dumps({"Records": [_record("ObjectCreated:Post", "b", "p")]})}
    assert parse_s3_notification(sns, "b") == (["p"], 0)
    assert parse_s3_notification({"Service": "Amazon S3", "Event": "s3:TestEvent"}, "b") == ([], 0)
    for bad in ([], "x", {"Records": "no"}, {"Records": [1]}, {"Records": [{"eventName": "ObjectCreated:Put"}]},
                {"Type": "SubscriptionConfirmation", "SubscribeURL": "http://169.254.169.254/"},
                {"Type": "Notification", "Message": "{not json"},
                {"Records": [_record("ObjectCreated:Put", "b", "%FF")]},
                {"Records": [_record("ObjectCreated:Put", "b", "k")] * 1001}):
        with pytest.raises(UsageError):
            parse_s3_notification(bad, "b")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["Records", "eventName", "s3", "bucket", "name", "object", "key", "Type", "Message"])
        | st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_any_json_is_either_parsed_or_refused_cleanly(payload: Any) -> None:
    try:
        keys, ignored = parse_s3_notification(payload, "b")
    except UsageError:
        return
    assert all(isinstance(k, str) and k for k in keys) and ignored >= 0


def test_times_in_seconds_or_milliseconds_and_utc_months() -> None:
    assert to_epoch_seconds(1_700_000_000_000) == 1_700_000_000.0
    assert to_epoch_seconds(1_700_000_000) == 1_700_000_000.0
    with pytest.raises(UsageError):
        to_epoch_seconds(-1)
    assert month_window(1_700_000_000) == (1_698_796_800, 1_701_388_800)  # November 2023, UTC
    assert month_window(1_703_980_800 + 3600) == (1_701_388_800, 1_704_067_200)  # December wraps to January
    # The last month a request may name (EpochMillis ends with year 9999): its end is no datetime any more.
    last = EPOCH_MILLIS_MAX // 1000
    assert month_window(last) == (last + 1 - 31 * 86_400, last + 1)


def test_times_beyond_year_9999_are_refused_at_the_edge() -> None:
    assert ShowSyncTaskQuery(query_time=EPOCH_MILLIS_MAX).query_time == EPOCH_MILLIS_MAX
    for query in ({"query_time": EPOCH_MILLIS_MAX + 1}, {"query_time": 2**62}):
        with pytest.raises(ValidationError):
            ShowSyncTaskQuery.model_validate(query)
