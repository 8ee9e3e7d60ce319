"""Unit tests for the OMS request/response models and the validation-error mapping."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from ferry import oms as s
from ferry.oms import OmsError
from ferry.secrets import Secret

DST = {"ak": "DAK", "sk": "DSK", "bucket": "dstb", "region": "cn-north-4"}
SRC = {"cloud_type": "Aliyun", "region": "cn-hangzhou", "ak": "SAK", "sk": "SSK", "bucket": "srcb"}


def fails(model: type[BaseModel], data: Any) -> OmsError:
    with pytest.raises(OmsError) as info:
        s.parse_request(model, data)
    assert info.value.status == 400
    return info.value


def test_create_task_minimal_gets_documented_defaults() -> None:
    req = s.parse_request(s.CreateTaskReq, {"src_node": SRC, "dst_node": DST, "enable_kms": True, "junk": 1})
    assert req.task_type is s.TaskType.OBJECT
    assert req.object_overwrite_mode is s.OverwriteMode.SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE
    assert req.consistency_check is s.ConsistencyCheck.SIZE_LAST_MODIFIED
    assert req.dst_storage_policy is s.StoragePolicy.STANDARD
    assert req.enable_failed_object_recording is True and req.enable_restore is False
    assert isinstance(req.src_node.sk, Secret) and req.src_node.sk.reveal() == "SSK"
    assert "SSK" not in repr(req) and "DSK" not in req.model_dump_json()


def test_create_task_full_sdk_body() -> None:
    body = {
        "task_type": "prefix",
        "src_node": {**SRC, "object_key": ["a/", ""], "app_id": "125"},
        "dst_node": {**DST, "save_prefix": "p/", "security_token": "t" * 16384},
        "description": "d1",
        "migrate_since": 1700000000,
        "bandwidth_policy": [
            {"start": "00:00", "end": "08:00", "max_bandwidth": 1048576},
            {"start": "22:00", "end": "23:59", "max_bandwidth": 209715200},
        ],
        "source_cdn": {"authentication_type": "NONE", "domain": "cdn.example.com", "protocol": "https"},
        "smn_config": {"topic_urn": "urn:smn:x", "trigger_conditions": ["SUCCESS", "FAILURE"], "language": "en-us"},
        "enable_metadata_migration": True,
        "object_overwrite_mode": "CRC64_COMPARISON_OVERWRITE",
        "dst_storage_policy": "SRC_STORAGE_MAPPING",
        "consistency_check": "crc64",
        "enable_requester_pays": False,
        "task_priority": "HIGH",
    }
    req = s.parse_request(s.CreateTaskReq, json.loads(json.dumps(body)))
    assert req.bandwidth_policy is not None and len(req.bandwidth_policy) == 2
    assert req.source_cdn is not None and req.source_cdn.protocol is s.CdnProtocol.HTTPS


def test_url_list_task_defaults_source_cloud_to_urlsource() -> None:
    list_file = {"list_file_key": "l.txt", "obs_bucket": "b", "list_file_num": 3}
    req = s.parse_request(
        s.CreateTaskReq, {"task_type": "url_list", "src_node": {"list_file": list_file}, "dst_node": DST}
    )
    assert req.src_node.cloud_type is s.CloudType.URLSOURCE
    assert req.src_node.list_file is not None and req.src_node.list_file.list_file_num == "3"
    fails(
        s.CreateTaskReq,
        {"task_type": "url_list", "src_node": {"cloud_type": "AWS", "list_file": list_file}, "dst_node": DST},
    )
    fails(s.CreateTaskReq, {"task_type": "url_list", "src_node": {}, "dst_node": DST})
    fails(s.CreateTaskReq, {"task_type": "list", "src_node": SRC, "dst_node": DST})


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"src_node": {**SRC, "region": None}}, "src_node.region"),
        ({"src_node": {**SRC, "sk": None}}, "src_node.ak"),
        ({"src_node": {**SRC, "cloud_type": "Dropbox"}}, "src_node.cloud_type"),
        ({"src_node": {**SRC, "cloud_type": "HEC"}}, "src_node.cloud_type"),
        ({"src_node": {**SRC, "sk": "x" * 101}}, "src_node.sk"),
        ({"src_node": {**SRC, "object_key": ["k"] * 501}}, "src_node.object_key"),
        ({"src_node": {**SRC, "crypto_type": "KMS"}}, "kms_key_id"),
        ({"dst_node": {k: v for k, v in DST.items() if k != "ak"}}, "dst_node.ak"),
        ({"dst_node": {**DST, "kms_key_id": "short"}}, "dst_node.kms_key_id"),
        ({"task_type": "OBJECTS"}, "task_type"),
        ({"migrate_since": -1}, "migrate_since"),
        ({"description": "x" * 256}, "description"),
        ({"bandwidth_policy": [{"start": "00:00", "end": "01:00", "max_bandwidth": 1}]}, "max_bandwidth"),
        ({"bandwidth_policy": [{"start": "24:00", "end": "01:00", "max_bandwidth": 1048576}]}, "start"),
        ({"bandwidth_policy": [{"start": "00:00", "max_bandwidth": 1048576}]}, "end"),
        (
            {
                "bandwidth_policy": [
                    {"start": f"0{i}:00", "end": f"0{i}:30", "max_bandwidth": 1048576} for i in range(6)
                ]
            },
            "bandwidth_policy",
        ),
        (
            {
                "bandwidth_policy": [
                    {"start": "22:00", "end": "02:00", "max_bandwidth": 1048576},
                    {"start": "01:00", "end": "03:00", "max_bandwidth": 1048576},
                ]
            },
            "overlap",
        ),
        ({"smn_config": {"topic_urn": "u", "trigger_conditions": []}}, "trigger_conditions"),
        ({"source_cdn": {"domain": "d", "protocol": "ftp", "authentication_type": "NONE"}}, "protocol"),
        ({"task_priority": "URGENT"}, "task_priority"),
        ({"enable_restore": "maybe"}, "enable_restore"),
    ],
)
def test_create_task_rejections(change: dict[str, Any], where: str) -> None:
    body = {"src_node": SRC, "dst_node": DST, **change}
    err = fails(s.CreateTaskReq, body)
    assert err.error_code == "OMS.0001"
    assert where in err.error_msg
    assert "SSK" not in err.error_msg and "DSK" not in err.error_msg


def test_secret_values_never_reach_error_messages() -> None:
    err = fails(s.CreateTaskReq, {"src_node": {**SRC, "sk": "TOPSECRET" * 20}, "dst_node": DST})
    assert "TOPSECRET" not in err.error_msg and "TOPSECRET" not in str(err)


@pytest.mark.parametrize("char", list("^<>&\"'"))
def test_task_description_forbidden_characters_give_oms_0078(char: str) -> None:
    err = fails(s.CreateTaskReq, {"src_node": SRC, "dst_node": DST, "description": f"a{char}b"})
    assert err.error_code == "OMS.0078"


def test_sync_description_rules_differ() -> None:
    base = {
        "src_region": "r",
        "src_bucket": "b",
        "src_ak": "a",
        "src_sk": "k",
        "dst_ak": "a",
        "dst_sk": "k",
        "dst_region": "r",
        "dst_bucket": "b",
    }
    assert s.parse_request(s.CreateSyncTaskReq, {**base, "description": "a^b"}).description == "a^b"
    assert fails(s.CreateSyncTaskReq, {**base, "description": "a(b"}).error_code == "OMS.0078"
    req = s.parse_request(
        s.CreateSyncTaskReq, {**base, "consistency_check": "transmission", "src_cloud_type": "tencent"}
    )
    assert req.consistency_check is s.ConsistencyCheck.NO_CHECK and req.src_cloud_type is s.CloudType.TENCENT
    assert "src_cloud_type" in fails(s.CreateSyncTaskReq, {**base, "src_cloud_type": "Google"}).error_msg
    missing = fails(s.CreateSyncTaskReq, {}).error_msg
    assert "is required" in missing and "and 5 more" in missing


def test_save_prefix_is_a_folder_for_tasks_and_groups() -> None:
    for model, src in ((s.CreateTaskReq, SRC), (s.CreateTaskGroupReq, SRC)):
        for given, folder in (("all", "all/"), ("all/", "all/"), ("a/b", "a/b/"), ("", "")):
            req = s.parse_request(model, {"src_node": src, "dst_node": {**DST, "save_prefix": given}})
            assert req.dst_node.save_prefix == folder
    fails(s.CreateTaskReq, {"src_node": SRC, "dst_node": {**DST, "save_prefix": "p" * 1024}})
    assert s.parse_request(s.CreateTaskReq, {"src_node": SRC, "dst_node": {**DST, "save_prefix": "p" * 1023}})


def test_case_insensitive_enums_answer_canonical_spelling() -> None:
    group = s.parse_request(
        s.CreateTaskGroupReq, {"src_node": {**SRC, "cloud_type": "ALIYUN"}, "dst_node": DST, "task_type": "prefix"}
    )
    assert group.src_node.cloud_type is s.CloudType.ALIYUN and group.task_type is s.GroupTaskType.PREFIX
    assert group.dst_node.cloud_type is s.CloudType.HEC


def test_sync_events_limits() -> None:
    assert s.parse_request(s.SyncObjectReq, {"object_keys": ["a%2Fb.txt"] * 10}).object_keys[0] == "a%2Fb.txt"
    fails(s.SyncObjectReq, {"object_keys": ["k"] * 11})
    fails(s.SyncObjectReq, {"object_keys": []})
    fails(s.SyncObjectReq, {"object_keys": [""]})
    fails(s.SyncObjectReq, {})


def test_batch_update_needs_exactly_one_target() -> None:
    policy = [{"start": "01:00", "end": "02:00", "max_bandwidth": 2097152}]
    assert s.parse_request(s.BatchUpdateTasksReq, {"ids": [1, 2], "bandwidth_policy": policy}).ids == [1, 2]
    assert s.parse_request(s.BatchUpdateTasksReq, {"group_id": "g", "bandwidth_policy": []}).group_id == "g"
    fails(s.BatchUpdateTasksReq, {"bandwidth_policy": policy})
    fails(s.BatchUpdateTasksReq, {"ids": [1], "group_id": "g", "bandwidth_policy": policy})
    fails(s.BatchUpdateTasksReq, {"ids": [1]})
    fails(s.BatchUpdateTasksReq, {"ids": [2**63], "bandwidth_policy": policy})


def test_start_and_retry_requests() -> None:
    assert s.parse_request(s.StartTaskReq, {"dst_ak": "a", "dst_sk": "k"}).migrate_failed_object is False
    fails(s.StartTaskReq, {"dst_ak": "a"})
    fails(s.StartSyncTaskReq, {"dst_ak": "a", "dst_sk": "k"})
    fails(s.StartTaskGroupReq, {})
    assert s.parse_request(s.RetryTaskGroupReq, {}).dst_ak is None
    fails(s.RetryTaskGroupReq, {"src_crypto_type": "KMS"})
    assert s.parse_request(s.UpdateBandwidthPolicyReq, {"bandwidth_policy": []}).bandwidth_policy == []
    fails(s.UpdateBandwidthPolicyReq, {})


def test_helper_requests() -> None:
    base = {
        "cloud_type": "AWS",
        "data_center": "us-east-1",
        "page_size": 100,
        "behind_filename": "",
        "bucket_name": "b",
    }
    assert s.parse_request(s.ShowBucketReq, {**base, "file_path": "dir/"}).file_path == "dir/"
    fails(s.ShowBucketReq, {**base, "file_path": "dir"})
    fails(s.ShowBucketReq, {**base, "file_path": "", "page_size": 0})
    cdn = {"authentication_type": "NONE", "domain": "d", "protocol": "http"}
    cdn_req = {"ak": "a", "sk": "k", "cloud_type": "Aliyun", "region": "r", "bucket": "b", "source_cdn": cdn}
    assert s.parse_request(s.ShowCdnInfoReq, cdn_req).source_cdn.domain == "d"
    fails(s.ShowCdnInfoReq, {**cdn_req, "cloud_type": "Google"})
    fails(s.ShowCdnInfoReq, {**cdn_req, "prefix": {"keys": ["k"] * 101}})
    assert s.parse_request(s.ListBucketsReq, {"cloud_type": "HEC"}).cloud_type is s.CloudType.HEC
    fails(s.ListBucketsReq, {"ak": "a"})
    fails(
        s.CheckUrlSourceListFileFormatReq, {"obs_bucket": "b", "list_file_key": "", "ak": "a", "sk": "k", "region": "r"}
    )


def test_queries() -> None:
    q = s.parse_request(s.ListTasksQuery, {"limit": "5", "offset": "0", "status": "3"})
    assert (q.limit, q.offset, q.status) == (5, 0, s.TaskStatus.STOPPED)
    assert s.parse_request(s.ListTasksQuery, {}).limit == 10
    assert s.parse_request(s.ListTasksQuery, {"status": "6"}).status is s.TaskStatus.RETRYING
    for bad in ({"limit": "0"}, {"limit": "101"}, {"offset": "10001"}, {"status": "8"}, {"status": "x"}):
        fails(s.ListTasksQuery, bad)
    fails(s.ListTasksQuery, {"task_name": "a<b"})
    stat = s.parse_request(
        s.ListSyncTaskStatisticQuery, {"data_type": "SUCCESS,FAILURE,SUCCESS", "start_time": "1", "end_time": "2"}
    )
    assert stat.data_type == [s.SyncStatType.SUCCESS, s.SyncStatType.FAILURE]
    fails(s.ListSyncTaskStatisticQuery, {"data_type": "SUCCESS,BOGUS", "start_time": 1, "end_time": 2})
    fails(s.ListSyncTaskStatisticQuery, {"data_type": "SUCCESS", "start_time": 3, "end_time": 2})
    fails(s.ShowSyncTaskQuery, {})
    assert s.parse_request(s.ShowCloudTypeQuery, {"type": "SRC"}).type is s.CloudTypeKind.SRC
    fails(s.ShowCloudTypeQuery, {"type": "both"})
    assert s.parse_request(s.ListSyncTasksQuery, {"status": "stopped"}).status is s.SyncStatus.STOPPED


def test_responses_serialise_real_json_types() -> None:
    task = s.TaskResp(
        id=191297407830872,
        status=s.TaskStatus.RUNNING,
        progress=0.522,
        enable_restore=False,
        migrate_since=datetime(2024, 1, 1, tzinfo=UTC),
        start_time=1700000000123,
        src_node=s.SrcNodeResp(cloud_type=s.CloudType.ALIYUN, bucket="b", object_key=[""]),
        bandwidth_policy=[s.BandwidthPolicyDto(start="00:00", end="01:00", max_bandwidth=1048576)],
        description="",
    )
    out = task.to_json()
    assert out["id"] == 191297407830872 and out["status"] == 2 and out["enable_restore"] is False
    assert out["migrate_since"] == 1704067200000 and out["start_time"] == 1700000000123
    assert out["src_node"] == {"bucket": "b", "cloud_type": "Aliyun", "object_key": [""]}
    assert out["description"] == "" and "error_reason" not in out
    assert json.loads(json.dumps(out)) == out
    assert s.ShowTaskResponse is s.TaskResp

    group = s.TaskGroupResp(
        group_id="g",
        status=s.GroupStatus.MONITORING,
        src_node=s.TaskGroupSrcNodeResp(cloud_type=s.CloudType.HUAWEICLOUD),
        smn_config=s.SmnInfo(notify_result=True),
    ).to_json()
    assert group == {
        "group_id": "g",
        "status": 2,
        "src_node": {"cloud_type": "HUAWEICLOUD"},
        "smn_config": {"notify_result": True},
    }
    assert s.dump(s.ShowBucketListResponse(["a", "b"])) == ["a", "b"]
    assert s.dump(s.ShowCloudTypeResponse([s.CloudType.URLSOURCE])) == ["URLSource"]
    assert s.ShowBucketRecord(name="k", size=12).to_json() == {"name": "k", "size": "12"}
    assert s.EmptyResponse().to_json() == {}
    stats = s.ListSyncTaskStatisticResponse(
        sync_task_id="x",
        statistic_time_type=s.StatGranularity.FIVE_MINUTES,
        statistic_datas=[
            s.StatisticTypeData(data_type=s.SyncStatType.SIZE, data=[s.StatisticData(time_stamp=1, statistic_num=2)])
        ],
    ).to_json()
    assert stats["statistic_datas"][0]["data"] == [{"time_stamp": 1, "statistic_num": 2}]


def test_mapping_of_path_task_id_and_json_errors() -> None:
    err = s.oms_error_for_validation([{"type": "int_parsing", "loc": ("path", "task_id"), "msg": "bad"}])
    assert (err.status, err.error_code) == (400, "OMS.0054")
    err = s.oms_error_for_validation([{"type": "json_invalid", "loc": ("body", 3), "msg": "JSON decode error"}])
    assert err.error_code == "OMS.0001" and "not valid JSON" in err.error_msg
    assert s.oms_error_for_validation([]).error_msg == "Invalid parameter settings. Modify the request parameters."
