"""Migration tasks from Google Cloud Storage (`cloud_type: Google`, `json_auth_file`) through the real OMS SDK.

The source is FakeGcs (tests/gcs_servers.py: Google's token endpoint and JSON API as documented, every JWT
checked), mapped by the operator's table as `Google/us`; the destination is SeaweedFS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ferry_service import FerryService, listing, s3_client, start_service, wait_task
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkoms.v2 import (
    CreateTaskGroupReq,
    CreateTaskGroupRequest,
    CreateTaskReq,
    CreateTaskRequest,
    DstNodeReq,
    ShowTaskGroupRequest,
    ShowTaskRequest,
    SrcNodeReq,
    StartTaskReq,
    StartTaskRequest,
    TaskGroupDstNode,
    TaskGroupSrcNode,
)

from gcs_servers import Account, FakeGcs

pytestmark = pytest.mark.timeout(300)
BUCKET = "gcs-photos"
DST_REGION = "cn-north-4"


@pytest.fixture(scope="module")
def account() -> Account:
    return Account()


@pytest.fixture(scope="module")
def fake(account: Account) -> Iterator[FakeGcs]:
    with FakeGcs(account, page_size=50) as server:
        yield server


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, fake: FakeGcs, seaweed_b: Any) -> Iterator[FerryService]:
    data_dir: Path = tmp_path_factory.mktemp("ferry-google")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps({
            "Google/us": fake.endpoint, f"HuaweiCloud/{DST_REGION}": seaweed_b.endpoint}))
        started = start_service(data_dir, f"sqlite:///{data_dir / 'ferry.db'}")
        try:
            yield started.value
        finally:
            started.close()


def google_task(key_file: str, dst: Any, dbucket: str, prefix: str = "") -> CreateTaskRequest:
    return CreateTaskRequest(body=CreateTaskReq(
        task_type="prefix",
        src_node=SrcNodeReq(cloud_type="Google", region="us", json_auth_file=key_file, bucket=BUCKET,
                            object_key=[prefix]),
        dst_node=DstNodeReq(ak=dst.access_key, sk=dst.secret_key, bucket=dbucket, region=DST_REGION),
    ))


def test_a_google_bucket_migrates_with_a_service_account_key(
    svc: FerryService, fake: FakeGcs, account: Account, seaweed_b: Any, bucket_factory: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    bodies = {f"album/{i:03d}.jpg": os.urandom(4096 + i) for i in range(120)}
    bodies["album/big.bin"] = os.urandom(9 * 1024 * 1024)  # streamed, past the multipart threshold
    bodies["album/empty"] = b""
    bodies["album/ünï code.txt"] = b"text"
    for key, body in bodies.items():
        fake.put(BUCKET, key, body, content_type="image/jpeg")
    fake.put(BUCKET, "album/composed", b"c" * 3000, composite=True)  # crc32c only
    fake.put(BUCKET, "album/cold", b"archived but readable", storage_class="ARCHIVE")
    bodies["album/composed"], bodies["album/cold"] = b"c" * 3000, b"archived but readable"
    fake.put(BUCKET, "elsewhere/x", b"not under the prefix")
    db = bucket_factory(seaweed_b)
    client = svc.client()
    key_file = account.json(fake.token_uri)

    created = client.create_task(google_task(key_file, seaweed_b, db, "album/"))
    task, _ = wait_task(client, created.id, lambda t: t.status in (4, 5), timeout=180)
    assert task.status == 5, task.error_reason
    assert (task.total_num, task.successful_num, task.failed_num) == (len(bodies), len(bodies), 0)
    assert task.src_node.cloud_type == "Google" and task.src_node.bucket == BUCKET
    got = listing(seaweed_b, db)
    assert {k: v[0] for k, v in got.items()} == {k: len(v) for k, v in bodies.items()}
    dst = s3_client(seaweed_b)
    for key in ("album/big.bin", "album/composed", "album/cold", "album/ünï code.txt"):
        body = dst.get_object(Bucket=db, Key=key)["Body"].read()
        assert hashlib.md5(body).hexdigest() == hashlib.md5(bodies[key]).hexdigest(), key
    # Every JWT the runner signed was checked by the fake's token endpoint; one token served the whole run.
    assert 1 <= fake.token_requests <= 2
    # The key never comes back.
    shown = client.show_task(ShowTaskRequest(task_id=created.id)).raw_content
    key_body = account.pem().splitlines()[5]  # a line of the key's base64
    assert b"PRIVATE KEY" not in shown and key_body.encode() not in shown
    # Nor does the key, or a token made with it, reach a log line or a file of the data directory in plaintext.
    assert key_body not in caplog.text and "ya29." not in caplog.text and "BEGIN PRIVATE" not in caplog.text
    for path in svc.service.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key_body.encode() not in data and b"BEGIN PRIVATE KEY" not in data, path


def test_a_malformed_key_file_is_refused_with_an_oms_error(svc: FerryService, seaweed_b: Any, account: Account,
                                                            fake: FakeGcs) -> None:
    client = svc.client()
    broken = json.loads(account.json(fake.token_uri))
    broken["private_key"] = broken["private_key"][:200]  # cut short
    for key_file, says in ((json.dumps(broken), '"private_key" is not an unencrypted PEM private key'),
                           ("{not json", "not valid JSON"),
                           (json.dumps({"type": "authorized_user"}), '"type" is not "service_account"')):
        with pytest.raises(ClientRequestException) as info:
            client.create_task(google_task(key_file, seaweed_b, "some-bucket"))
        err = info.value
        assert err.status_code == 400 and err.error_code == "OMS.0001", (err.error_code, err.error_msg)
        assert says in err.error_msg and "src_node.json_auth_file" in err.error_msg
        assert "PRIVATE KEY" not in err.error_msg and broken["private_key"][30:60] not in err.error_msg


def test_a_key_google_refuses_fails_the_task_naming_json_auth_file(
    svc: FerryService, fake: FakeGcs, seaweed_b: Any, bucket_factory: Any, account: Account
) -> None:
    fake.put(BUCKET, "one/x", b"x")
    client = svc.client()
    stranger = Account()  # a well-formed key the token endpoint does not know
    created = client.create_task(google_task(stranger.json(fake.token_uri), seaweed_b,
                                             bucket_factory(seaweed_b), "one/"))
    task, _ = wait_task(client, created.id, lambda t: t.status in (4, 5), timeout=120)
    assert task.status == 4 and "json_auth_file" in task.error_reason.error_msg, task.error_reason
    assert task.error_reason.error_msg.startswith("source: "), task.error_reason
    assert task.error_reason.error_code == "TRF.0151", task.error_reason  # the source refused the keys
    # Restarting needs the key file again; with the right one the task completes.
    with pytest.raises(ClientRequestException):
        client.start_task(StartTaskRequest(task_id=created.id, body=StartTaskReq(
            src_ak="ak", src_sk="sk", dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key)))
    client.start_task(StartTaskRequest(task_id=created.id, body=StartTaskReq(
        json_auth_file=account.json(fake.token_uri), dst_ak=seaweed_b.access_key, dst_sk=seaweed_b.secret_key)))
    task, _ = wait_task(client, created.id, lambda t: t.status in (4, 5), timeout=120)
    assert task.status == 5, task.error_reason


def test_a_task_group_splits_a_google_bucket_and_completes(
    svc: FerryService, fake: FakeGcs, account: Account, seaweed_b: Any, bucket_factory: Any
) -> None:
    bodies = {f"grouped/{i:02d}.txt": f"body {i}".encode() for i in range(30)}
    for key, body in bodies.items():
        fake.put(BUCKET, key, body)
    db = bucket_factory(seaweed_b)
    client = svc.client()
    gid = client.create_task_group(CreateTaskGroupRequest(CreateTaskGroupReq(
        src_node=TaskGroupSrcNode(cloud_type="Google", region="us", json_auth_file=account.json(fake.token_uri),
                                  bucket=BUCKET, object_key=["grouped/"]),
        dst_node=TaskGroupDstNode(ak=seaweed_b.access_key, sk=seaweed_b.secret_key, region=DST_REGION, bucket=db),
    ))).group_id
    deadline = time.monotonic() + 120
    while (group := client.show_task_group(ShowTaskGroupRequest(group_id=gid))).status not in (3, 4, 5, 6):
        assert time.monotonic() < deadline, group.status
        time.sleep(0.2)
    assert group.status == 6, (group.status, group.error_reason)  # 6: completed
    assert (group.total_num, group.success_num, group.fail_num) == (len(bodies), len(bodies), 0)
    got = {k: v[0] for k, v in listing(seaweed_b, db).items() if not k.startswith("oms/")}
    assert got == {k: len(v) for k, v in bodies.items()}
