"""A migration task's console page in headless Chromium: live progress to 100 %, pause and resume, failures by
reason with downloads, the API's refusals shown in the page, and another project seeing none of it."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from ferry_service import FerryService, fill, prefix_task, s3_client
from huaweicloudsdkoms.v2 import BandwidthPolicyDto, ShowTaskRequest
from playwright.sync_api import expect

from conftest import PHONE, ConsolePage, PageFactory
from ferry.sandbox import MotoServer, SeaweedServer

pytestmark = pytest.mark.timeout(240)
MIB = 1024 * 1024


def _slow_task(svc: FerryService, seaweed_a: SeaweedServer, seaweed_b: SeaweedServer, bucket_factory: Any,
               objects: int, size: int) -> int:
    """A prefix task held to 1 MiB/s by its bandwidth policy, so that a person (and a test) can watch it run."""
    src, dst = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    fill(seaweed_a, src, {f"data/{i:03d}.bin": bytes([i % 251]) * size for i in range(objects)})
    req = prefix_task(seaweed_a, src, seaweed_b, dst, description="watched from the console",
                      bandwidth_policy=[BandwidthPolicyDto(start="00:00", end="23:59", max_bandwidth=MIB)])
    return int(svc.client().create_task(req).id)


def _status(svc: FerryService, task_id: int) -> int:
    return int(svc.client().show_task(ShowTaskRequest(task_id=task_id)).status)


def test_the_task_page_follows_a_run_live_through_pause_and_resume(
        console: ConsolePage, console_service: FerryService, seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
        bucket_factory: Any) -> None:
    svc = console_service
    task_id = _slow_task(svc, seaweed_a, seaweed_b, bucket_factory, objects=24, size=256 * 1024)
    console.sign_in(svc.tenant)
    expect(console.page.locator(f"tr[data-task-id='{task_id}']")).to_be_visible()
    console.shot("list-running")
    console.page.click(f"tr[data-task-id='{task_id}'] a")
    page = console.page
    # A marker that a reload would wipe: everything below happens in this one page load.
    page.evaluate("window.__sameLoad = true")
    expect(page.locator("[data-live-text=status]")).to_have_text("running", timeout=30_000)
    expect(page.locator("text=at most 1.0 MiB/s")).to_be_visible()

    page.click("button[value=stop]")
    expect(page.locator(".flash.ok")).to_contain_text("Stop requested")
    expect(page.locator("[data-live-text=status]")).to_have_text("paused", timeout=30_000)
    assert _status(svc, task_id) == 3
    console.shot("paused")
    paused_at = page.locator("[data-live-text=progress]").inner_text()
    assert paused_at != "100.0 %", paused_at

    # Start again: the keys are asked for again, and a wrong form is refused with the API's words.
    page.click("#start-form summary")
    page.click("#start-form button[type=submit]")
    expect(page.locator(".flash.error")).to_contain_text("dst_ak")
    assert _status(svc, task_id) == 3
    page.click("#start-form summary")
    for name, value in (("src_ak", seaweed_a.access_key), ("src_sk", seaweed_a.secret_key),
                        ("dst_ak", seaweed_b.access_key), ("dst_sk", seaweed_b.secret_key)):
        page.fill(f"#start-form input[name={name}]", value)
    page.click("#start-form button[type=submit]")
    expect(page.locator(".flash.ok")).to_contain_text("queued to run again")
    # The keys just typed are nowhere in the page that comes back.
    assert seaweed_a.secret_key not in page.content() and seaweed_b.secret_key not in page.content()
    page.evaluate("window.__sameLoad = true")
    expect(page.locator("[data-live-text=status]")).to_have_text(re.compile("waiting|running"))
    # While it runs, the API refuses a delete, and the page says so in the API's words.
    page.once("dialog", lambda d: d.accept())
    page.click("button.danger")
    expect(page.locator(".flash.error")).to_contain_text("A running task cannot be deleted")
    page.evaluate("window.__sameLoad = true")
    expect(page.locator("[data-live-text=status]")).to_have_text("running")
    console.shot("running")

    expect(page.locator("[data-live-text=progress]")).to_have_text("100.0 %", timeout=60_000)
    expect(page.locator("[data-live-text=status]")).to_have_text("succeeded")
    expect(page.locator("[data-live-text=objects]")).to_have_text("24 / 24")
    assert page.evaluate("window.__sameLoad") is True  # reached live, without a reload
    expect(page.locator("#task")).to_have_attribute("data-live", "false")
    # The chart covers the run (both parts, 6 MiB at 1 MiB/s: a few seconds at least).
    expect(page.locator("#speed-chart canvas")).to_be_visible()
    points = int(page.locator("#speed-chart").get_attribute("data-points") or "0")
    assert points >= 3, points
    console.shot("task-succeeded")

    # Downloads: every object is in the succeeded list, or in the skipped one when the pause came after it was
    # written and before its result was recorded (the resumed run finds it there, complete).
    keys = []
    for which in ("success", "skipped"):
        with page.expect_download() as got:
            page.click(f"a[href$='/objects/{which}.jsonl']")
        assert got.value.suggested_filename == f"task-{task_id}-{which}.jsonl"
        keys += [json.loads(x)["key"] for x in open(got.value.path(), encoding="utf-8")]  # noqa: SIM115
    assert sorted(keys) == [f"data/{i:03d}.bin" for i in range(24)]

    # Finished: the policy can no longer change, in the API's words.
    page.click("#bandwidth-form summary")
    page.fill("input[name=start_0]", "01:00")
    page.fill("input[name=end_0]", "02:00")
    page.fill("input[name=mib_0]", "5")
    page.click("#bandwidth-form button[type=submit]")
    expect(page.locator(".flash.error")).to_contain_text("bandwidth policy of a finished task cannot be changed")


def test_failed_objects_are_grouped_by_reason_and_listed(
        new_page: PageFactory, console_service: FerryService, moto: MotoServer, seaweed_b: SeaweedServer,
        bucket_factory: Any) -> None:
    svc = console_service
    src, dst = bucket_factory(moto), bucket_factory(seaweed_b)
    client = s3_client(moto)
    cold = [f"cold/{i}.bin" for i in range(7)]
    for key in cold:
        client.put_object(Bucket=src, Key=key, Body=b"x" * 100, StorageClass="GLACIER")
    fill(moto, src, {f"hot/{i}.txt": b"hot" for i in range(3)})
    req = prefix_task(moto, src, seaweed_b, dst, enable_restore=False)
    req.body.src_node.cloud_type, req.body.src_node.region = "AWS", "us-east-1"
    task_id = svc.client().create_task(req).id

    console = new_page(PHONE)
    console.sign_in(svc.tenant)
    console.go(f"/console/tasks/{task_id}")
    page = console.page
    expect(page.locator("[data-live-text=status]")).to_have_text("failed", timeout=60_000)
    failures = page.locator("#failures")
    expect(failures.locator("td.reason").first).to_be_visible()
    console.shot("task-failed-phone")
    reasons = failures.locator("td.reason").all_inner_texts()
    counts = [int(n) for n in failures.locator("td.num").all_inner_texts()]
    # Reasons that differ only by the object's key or the store's request id are one group.
    assert len(reasons) <= 2 and sum(counts) == 7, (reasons, counts)
    assert all("archived and not restored" in r and "request id" not in r.replace("request id …", "")
               for r in reasons), reasons
    shown = failures.locator("tbody tr").first.locator("ul.keys li").all_inner_texts()
    assert shown == sorted(shown) and set(shown) <= set(cold) and len(shown) == min(5, counts[0])
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width

    with page.expect_download() as got:
        page.click("a[href$='/objects/failed.jsonl']")
    lines = [json.loads(x) for x in open(got.value.path(), encoding="utf-8")]  # noqa: SIM115
    assert sorted(e["key"] for e in lines) == cold and all("enable_restore" in e["reason"] for e in lines)


def test_another_project_sees_none_of_it(new_page: PageFactory, console_service: FerryService,
                                         seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
                                         bucket_factory: Any) -> None:
    svc = console_service
    src, dst = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    fill(seaweed_a, src, {"a.txt": b"a"})
    task_id = svc.client().create_task(prefix_task(seaweed_a, src, seaweed_b, dst)).id

    console = new_page()
    console.sign_in(svc.other)
    expect(console.page.locator(".empty")).to_contain_text("No migration tasks")
    console.shot("other-project-list")
    answer = console.go(f"/console/tasks/{task_id}")
    assert answer.status == 404
    expect(console.page.locator(".flash.error")).to_contain_text("Invalid task ID")
    console.shot("other-project-task")
    request = console.page.request
    for path in ("live", "speed", "failures", "objects/success.jsonl"):
        assert request.get(f"{svc.url}/console/tasks/{task_id}/{path}").status == 404, path
    # Its own valid CSRF token does not let it act on the task either.
    token = console.page.locator("input[name=csrf_token]").first.get_attribute("value") or ""
    for action in ("stop", "delete"):
        answer = request.post(f"{svc.url}/console/tasks/{task_id}/{action}", form={"csrf_token": token})
        assert answer.status == 404, action
    assert svc.client().show_task(ShowTaskRequest(task_id=task_id)).id == task_id
