"""Task-end SMN notifications: published, signed, to a live SMN stand-in, and reported as `smn_info` via the SDK."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import pytest
from ferry_service import DST_REGION, FerryService, fill, overrides, prefix_task, start_service, wait_task
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkoms.v2 import (
    CreateTaskGroupReq,
    CreateTaskGroupRequest,
    ShowTaskGroupRequest,
    SmnConfig,
    TaskGroupDstNode,
    TaskGroupSrcNode,
)
from live_server import next_second

from ferry.api.auth import IncomingRequest, InMemoryCredentialStore, RequestVerifier
from ferry.oms import OmsError
from ferry.sandbox import SeaweedServer

pytestmark = pytest.mark.timeout(300)
SMN_AK, SMN_SK = "SMNPUBLISHER0001", "smn/secret+key=1"
SMN_PROJECT = uuid.uuid4().hex


@dataclass
class SmnStandIn:
    """An HTTP server that checks each publish's SDK-HMAC-SHA256 signature, as SMN's gateway does, and keeps it."""

    url: str
    published: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    answer: int = 200


@pytest.fixture(scope="module")
def smn() -> Iterator[SmnStandIn]:
    store = InMemoryCredentialStore()
    store.add_access_key(SMN_AK, SMN_SK, SMN_PROJECT)
    verifier = RequestVerifier(store)
    state: list[SmnStandIn] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            stand_in = state[0]
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            path, _, query = self.path.partition("?")
            req = IncomingRequest("POST", path, query, [(k.lower(), v) for k, v in self.headers.items()], body)
            try:
                # Signature only: the operator's key may publish to the topics of every project it serves.
                verifier.authenticate(req, None)
            except OmsError:
                stand_in.refused.append(path)
                self._reply(401, {"error_code": "APIGW.0301", "error_msg": "Incorrect IAM authentication"})
                return
            topic = unquote(path.split("/")[5])
            if stand_in.answer != 200:
                self._reply(stand_in.answer, {"error_code": "SMN.0011", "error_msg": "topic not found"})
                return
            stand_in.published.append({"topic": topic, **json.loads(body)})
            self._reply(200, {"request_id": uuid.uuid4().hex, "message_id": uuid.uuid4().hex})

        def _reply(self, status: int, data: dict[str, Any]) -> None:
            raw = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.append(SmnStandIn(f"http://127.0.0.1:{httpd.server_address[1]}"))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield state[0]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
        smn: SmnStandIn) -> Iterator[FerryService]:
    data_dir = tmp_path_factory.mktemp("ferry-smn")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps({**overrides(seaweed_a, seaweed_b),
                                                          f"SMN/{DST_REGION}": smn.url}))
        mp.setenv("FERRY_SMN_AK", SMN_AK)
        mp.setenv("FERRY_SMN_SK", SMN_SK)
        started = start_service(data_dir, f"sqlite:///{data_dir / 'ferry.db'}")
        try:
            yield started.value
        finally:
            started.close()


def topic(svc: FerryService, name: str) -> str:
    """A topic URN in the project of the service's first tenant (the caller of these tests)."""
    return f"urn:smn:{DST_REGION}:{svc.tenant.project_id}:{name}"


def test_a_succeeded_task_publishes_its_summary(svc: FerryService, smn: SmnStandIn, bucket_factory: Any,
                                                seaweed_a: SeaweedServer, seaweed_b: SeaweedServer) -> None:
    src, dst = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    fill(seaweed_a, src, {"a.txt": b"a" * 100, "b/c.txt": b"c" * 50})
    client = svc.client()
    config = SmnConfig(topic_urn=topic(svc, "done"), trigger_conditions=["SUCCESS", "FAILURE"], language="en-us")
    created = client.create_task(prefix_task(seaweed_a, src, seaweed_b, dst, smn_config=config))
    task, _ = wait_task(client, created.id, lambda t: t.status == 5 and t.smn_info is not None
                        and t.smn_info.notify_result)
    assert task.smn_info.topic_name == "done" and task.smn_info.notify_error_message == ""
    sent = [m for m in smn.published if m["topic"] == topic(svc, "done")]
    assert len(sent) == 1
    assert task.name in sent[0]["subject"] and "succeeded" in sent[0]["subject"]
    assert "Transferred data: 150 B" in sent[0]["message"] and f"Destination bucket: {dst}" in sent[0]["message"]
    assert svc.tenant.sk not in json.dumps(sent[0]) and seaweed_a.secret_key not in json.dumps(sent[0])


def test_a_template_message_carries_the_documented_keys(svc: FerryService, smn: SmnStandIn, bucket_factory: Any,
                                                        seaweed_a: SeaweedServer, seaweed_b: SeaweedServer) -> None:
    src, dst = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    fill(seaweed_a, src, {"x": b"x"})
    client = svc.client()
    config = SmnConfig(topic_urn=topic(svc, "tmpl"), trigger_conditions=["SUCCESS"], message_template_name="oms_done")
    created = client.create_task(prefix_task(seaweed_a, src, seaweed_b, dst, smn_config=config))
    wait_task(client, created.id, lambda t: t.status == 5 and t.smn_info is not None and t.smn_info.notify_result)
    sent = [m for m in smn.published if m["topic"] == topic(svc, "tmpl")]
    assert len(sent) == 1 and sent[0]["message_template_name"] == "oms_done"
    tags = sent[0]["tags"]
    assert tags["Task_Status"] == "SUCCESS" and tags["Source_Bucket"] == src and tags["Destination_Bucket"] == dst
    assert tags["Transferred_Data"] == "1 B" and tags["Start_Time"].endswith("UTC")


def test_a_status_outside_the_triggers_sends_nothing(svc: FerryService, smn: SmnStandIn, bucket_factory: Any,
                                                     seaweed_a: SeaweedServer, seaweed_b: SeaweedServer) -> None:
    src, dst = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    client = svc.client()
    config = SmnConfig(topic_urn=topic(svc, "failures-only"), trigger_conditions=["FAILURE"])
    # An empty source: the task fails with TRF.0012, which is a FAILURE trigger...
    created = client.create_task(prefix_task(seaweed_a, src, seaweed_b, dst, smn_config=config))
    task, _ = wait_task(client, created.id, lambda t: t.status == 4 and t.smn_info is not None
                        and t.smn_info.notify_result)
    assert task.error_reason.error_code == "TRF.0012"
    assert [m["subject"] for m in smn.published if m["topic"] == topic(svc, "failures-only")] == [
        f"OMS migration task {task.name} failed"]
    # ...while a success is not.
    fill(seaweed_a, src, {"k": b"v"})
    next_second()
    other = client.create_task(prefix_task(seaweed_a, src, seaweed_b, dst, smn_config=config))
    done, _ = wait_task(client, other.id, lambda t: t.status == 5 and t.smn_info is not None)
    assert (done.smn_info.notify_result, done.smn_info.notify_error_message) == (False, "")
    assert len([m for m in smn.published if m["topic"] == topic(svc, "failures-only")]) == 1


def test_a_refused_publish_is_reported_with_its_error_code(svc: FerryService, smn: SmnStandIn, bucket_factory: Any,
                                                           seaweed_a: SeaweedServer, seaweed_b: SeaweedServer) -> None:
    src, dst = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    fill(seaweed_a, src, {"k": b"v"})
    client = svc.client()
    smn.answer = 404
    try:
        config = SmnConfig(topic_urn=topic(svc, "gone"), trigger_conditions=["SUCCESS"])
        created = client.create_task(prefix_task(seaweed_a, src, seaweed_b, dst, smn_config=config))
        task, _ = wait_task(client, created.id, lambda t: t.status == 5 and t.smn_info is not None
                            and t.smn_info.notify_error_message)
    finally:
        smn.answer = 200
    assert (task.smn_info.notify_result, task.smn_info.notify_error_message) == (False, "SMN.0011")
    assert smn.refused == []  # the publish was signed correctly; SMN said no for its own reason


@pytest.mark.parametrize("urn", ["not-a-urn", f"urn:smn:{DST_REGION}:nothex:topic", "urn:smn::abc:t"])
def test_a_malformed_topic_urn_is_refused_at_creation(svc: FerryService, bucket_factory: Any, urn: str,
                                                      seaweed_a: SeaweedServer, seaweed_b: SeaweedServer) -> None:
    src, dst = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    with pytest.raises(ClientRequestException) as info:
        svc.client().create_task(prefix_task(seaweed_a, src, seaweed_b, dst,
                                             smn_config=SmnConfig(topic_urn=urn, trigger_conditions=["SUCCESS"])))
    assert (info.value.status_code, info.value.error_code) == (400, "OMS.0169")


def test_a_completed_task_group_publishes_once(svc: FerryService, smn: SmnStandIn, bucket_factory: Any,
                                               seaweed_a: SeaweedServer, seaweed_b: SeaweedServer) -> None:
    src, dst = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    fill(seaweed_a, src, {f"k{i}": b"v" * i for i in range(1, 6)})
    client = svc.client()
    created = client.create_task_group(CreateTaskGroupRequest(CreateTaskGroupReq(
        src_node=TaskGroupSrcNode(cloud_type="Aliyun", region="cn-hangzhou", ak=seaweed_a.access_key,
                                  sk=seaweed_a.secret_key, bucket=src, object_key=[""]),
        dst_node=TaskGroupDstNode(ak=seaweed_b.access_key, sk=seaweed_b.secret_key, region=DST_REGION, bucket=dst),
        smn_config=SmnConfig(topic_urn=topic(svc, "group"), trigger_conditions=["SUCCESS"]))))
    deadline = time.monotonic() + 90
    while True:
        group = client.show_task_group(ShowTaskGroupRequest(group_id=created.group_id))
        if group.status == 6 and group.smn_config is not None and group.smn_config.notify_result:
            break
        assert time.monotonic() < deadline, group
        time.sleep(0.2)
    sent = [m for m in smn.published if m["topic"] == topic(svc, "group")]
    assert len(sent) == 1 and created.group_id in sent[0]["subject"] and "Transferred data: 15 B" in sent[0]["message"]


def _group_req(seaweed_a: SeaweedServer, src: str, seaweed_b: SeaweedServer, dst: str,
               config: SmnConfig) -> CreateTaskGroupRequest:
    return CreateTaskGroupRequest(CreateTaskGroupReq(
        src_node=TaskGroupSrcNode(cloud_type="Aliyun", region="cn-hangzhou", ak=seaweed_a.access_key,
                                  sk=seaweed_a.secret_key, bucket=src, object_key=[""]),
        dst_node=TaskGroupDstNode(ak=seaweed_b.access_key, sk=seaweed_b.secret_key, region=DST_REGION, bucket=dst),
        smn_config=config))


def test_a_topic_of_another_project_is_refused_at_creation(svc: FerryService, smn: SmnStandIn, bucket_factory: Any,
                                                           seaweed_a: SeaweedServer, seaweed_b: SeaweedServer) -> None:
    src, dst = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    client = svc.client()
    # The other tenant's project, and a project no tenant of this server has: neither is the caller's.
    for project_id in (svc.other.project_id, SMN_PROJECT):
        config = SmnConfig(topic_urn=topic(svc, "theirs").replace(svc.tenant.project_id, project_id),
                           trigger_conditions=["SUCCESS", "FAILURE"])
        for group in (False, True):
            with pytest.raises(ClientRequestException) as info:
                if group:
                    client.create_task_group(_group_req(seaweed_a, src, seaweed_b, dst, config))
                else:
                    client.create_task(prefix_task(seaweed_a, src, seaweed_b, dst, smn_config=config))
            assert (info.value.status_code, info.value.error_code) == (400, "OMS.0169")
            assert "project" in info.value.error_msg and project_id not in info.value.error_msg


def test_a_stored_task_with_another_projects_topic_does_not_publish(
        svc: FerryService, smn: SmnStandIn, bucket_factory: Any, seaweed_a: SeaweedServer,
        seaweed_b: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from ferry.service import tasks

    src, dst = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    fill(seaweed_a, src, {"k": b"v"})
    client = svc.client()
    foreign = topic(svc, "victim").replace(svc.tenant.project_id, svc.other.project_id)
    # A task stored before creation checked the topic's project: only the URN's shape was checked then.
    monkeypatch.setattr(tasks, "check_smn", lambda config, *args: None)
    created = client.create_task(prefix_task(seaweed_a, src, seaweed_b, dst, smn_config=SmnConfig(
        topic_urn=foreign, trigger_conditions=["SUCCESS"])))
    task, _ = wait_task(client, created.id, lambda t: t.status == 5 and t.smn_info is not None
                        and (t.smn_info.notify_result or t.smn_info.notify_error_message))
    assert (task.smn_info.notify_result, task.smn_info.notify_error_message) == (False, "OMS.0169")
    assert [m for m in smn.published if m["topic"] == foreign] == []
