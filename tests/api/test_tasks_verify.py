"""A migration task, run by the service, verifies what it reads against the source's own checksum: through the fault
proxy, bytes damaged once are read again, bytes damaged on every read fail their object with the reason."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from ferry_service import (
    DST_REGION,
    SRC_REGION,
    FerryService,
    fill,
    listing,
    prefix_task,
    s3_client,
    start_service,
    wait_task,
)
from sdk_signing import SdkSigningAuth

from faultproxy import Damage, FaultProxy
from ferry.engine.verified_copy import READ_ATTEMPTS

MiB = 1024 * 1024
BODIES = {"small.bin": os.urandom(300 * 1024), "stream.bin": os.urandom(17 * MiB + 3)}


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory, seaweed_a: Any, seaweed_b: Any) -> Iterator[Any]:
    """The service, with the source region's endpoint a fault proxy in front of seaweed_a."""
    proxy = FaultProxy(seaweed_a.endpoint).start()
    data_dir = tmp_path_factory.mktemp("ferry-verify")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps({f"Aliyun/{SRC_REGION}": proxy.endpoint,
                                                          f"HuaweiCloud/{DST_REGION}": seaweed_b.endpoint}))
        started = start_service(data_dir, f"sqlite:///{data_dir / 'ferry.db'}")
        try:
            yield started.value, proxy
        finally:
            started.close()
            proxy.stop()


def _create(svc: FerryService, body: dict[str, Any]) -> int:
    """create_task by a signed request of our own: the SDK's model has no Ferry extension fields."""
    session = requests.Session()
    session.auth = SdkSigningAuth(svc.tenant.ak, svc.tenant.sk, svc.tenant.project_id)
    resp = session.post(f"{svc.url}/v2/{svc.tenant.project_id}/tasks", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    return int(resp.json()["id"])


def _show(svc: FerryService, task_id: int) -> dict[str, Any]:
    session = requests.Session()
    session.auth = SdkSigningAuth(svc.tenant.ak, svc.tenant.sk, svc.tenant.project_id)
    resp = session.get(f"{svc.url}/v2/{svc.tenant.project_id}/tasks/{task_id}", timeout=10)
    assert resp.status_code == 200, resp.text
    shown: dict[str, Any] = resp.json()
    return shown


def test_a_task_reads_damaged_objects_again_and_fails_what_stays_damaged(
        proxied: tuple[FerryService, FaultProxy], seaweed_a: Any, seaweed_b: Any, bucket_factory: Any) -> None:
    svc, proxy = proxied
    sbucket, dbucket = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    fill(seaweed_a, sbucket, BODIES)
    rules = [proxy.add(Damage(count=2), method="GET", key=re.escape(k) + "$", first=1) for k in BODIES]
    task_id = _create(svc, {**_body(seaweed_a, sbucket, seaweed_b, dbucket), "ferry_reread_size_only": True})
    client = svc.client()
    task, _ = wait_task(client, task_id, lambda t: t.status in (4, 5))
    assert (task.status, task.successful_num, task.failed_num) == (5, 2, 0), task.error_reason
    assert all(r.fired == 1 for r in rules)
    written = s3_client(seaweed_b)
    for key, body in BODIES.items():
        assert written.get_object(Bucket=dbucket, Key=key)["Body"].read() == body
    shown = _show(svc, task_id)
    assert shown["ferry_size_only_num"] == 0 and shown["ferry_reread_size_only"] is True

    again = bucket_factory(seaweed_b)
    proxy.add(Damage(count=2), method="GET", key=r"small\.bin$")
    task_id = _create(svc, _body(seaweed_a, sbucket, seaweed_b, again))
    task, _ = wait_task(client, task_id, lambda t: t.status in (4, 5))
    assert (task.status, task.successful_num, task.failed_num) == (4, 1, 1)
    assert {k for k in listing(seaweed_b, again) if not k.startswith("oms/")} == {"stream.bin"}
    failed = [json.loads(line) for line in written.get_object(
        Bucket=again, Key=task.failed_object_record.list_file_key)["Body"].read().decode().splitlines()]
    assert [f["key"] for f in failed] == ["small.bin"]
    assert "the source's MD5" in failed[0]["reason"] and f"each of {READ_ATTEMPTS} reads" in failed[0]["reason"]
    assert _show(svc, task_id)["ferry_reread_size_only"] is False


def _body(src: Any, sbucket: str, dst: Any, dbucket: str) -> dict[str, Any]:
    """The JSON of the SDK's create_task request, as the SDK sends it (unset fields left out)."""
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        return [clean(v) for v in value] if isinstance(value, list) else value

    body: dict[str, Any] = clean(prefix_task(src, sbucket, dst, dbucket,
                                             enable_failed_object_recording=True).body.to_dict())
    return body
