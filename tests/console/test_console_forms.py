"""The console's create forms and a sync task's page, in headless Chromium against the real service: a prefix
migration task between two SeaweedFS buckets made through the form, OMS errors shown next to their fields, and a
sync task made through its form whose page charts its statistics, lists its failed keys and runs its actions."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from console_browser import PHONE, ConsolePage, PageFactory
from ferry_service import FerryService, fill, listing, s3_client, wait_task
from huaweicloudsdkoms.v2 import CreateSyncEventsRequest, ShowTaskGroupRequest, SyncObjectReq
from playwright.sync_api import Page, expect

from ferry.oms import Codes
from ferry.sandbox import SeaweedServer
from ferry.service import sync

SRC_REGION, DST_REGION = "cn-hangzhou", "cn-north-4"  # seaweed_a as Aliyun, seaweed_b as HuaweiCloud


def _field(page: Page, name: str) -> Any:
    return page.locator(f"[name='{name}']")


def _error(page: Page, name: str) -> Any:
    return page.locator(f".field-error[data-field='{name}']")


def _fill(page: Page, values: dict[str, str]) -> None:
    for name, value in values.items():
        field = _field(page, name)
        if field.evaluate("el => el.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)


def _task_source(src: SeaweedServer, bucket: str) -> dict[str, str]:
    return {"src_node.cloud_type": "Aliyun", "src_node.region": SRC_REGION, "src_node.bucket": bucket,
            "src_node.ak": src.access_key, "src_node.sk": src.secret_key}


def _task_destination(dst: SeaweedServer, bucket: str) -> dict[str, str]:
    return {"dst_node.region": DST_REGION, "dst_node.bucket": bucket, "dst_node.ak": dst.access_key,
            "dst_node.sk": dst.secret_key}


def _no_secrets_shown(page: Page, *servers: SeaweedServer) -> None:
    html = page.content()
    for server in servers:
        assert server.secret_key not in html and server.access_key not in html
    for secret in page.locator("input[type=password], textarea[name$=json_auth_file]").all():
        assert secret.input_value() == ""


def test_a_prefix_task_made_through_the_form_copies_the_prefix(console: ConsolePage, console_service: FerryService,
                                                               seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
                                                               bucket_factory: Any) -> None:
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    bodies = {f"logs/{i:03d}.txt": os.urandom(1024 + i) for i in range(24)}
    fill(seaweed_a, sb, {**bodies, "other/not-copied.txt": b"outside the prefix"})
    console.sign_in(console_service.tenant)
    page = console.page
    page.click("text=New migration task")
    expect(page.locator("h1")).to_have_text("New migration task")
    # Client-side hints come from the request model: limits, required fields, and only the inputs the type uses.
    expect(_field(page, "description")).to_have_attribute("maxlength", "255")
    expect(_field(page, "dst_node.region")).to_have_attribute("required", "")
    expect(_field(page, "bandwidth_policy[0].max_bandwidth")).to_have_attribute("min", "1048576")
    _field(page, "task_type").select_option("list")
    expect(_field(page, "src_node.list_file.list_file_key")).to_be_visible()
    expect(_field(page, "src_node.object_key")).to_be_hidden()
    _field(page, "task_type").select_option("prefix")
    expect(_field(page, "src_node.list_file.list_file_key")).to_be_hidden()
    expect(_field(page, "src_node.object_key")).to_be_visible()
    # Inputs another input calls for: a KMS key with KMS encryption, a connection string for an Azure source.
    expect(_field(page, "dst_node.kms_key_id")).to_be_hidden()
    _field(page, "dst_node.crypto_type").select_option("KMS")
    expect(_field(page, "dst_node.kms_key_id")).to_be_visible()
    _field(page, "dst_node.crypto_type").select_option("DEFAULT")
    expect(_field(page, "src_node.connection_string")).to_be_hidden()
    _field(page, "src_node.cloud_type").select_option("Azure")
    expect(_field(page, "src_node.connection_string")).to_be_visible()
    expect(_field(page, "src_node.json_auth_file")).to_be_hidden()

    _fill(page, {"description": "console prefix copy", **_task_source(seaweed_a, sb), "src_node.object_key": "logs/",
                 **_task_destination(seaweed_b, db), "consistency_check": "crc64"})
    console.shot("task-form-filled")
    page.click("button[type=submit]:has-text('Create')")
    page.wait_for_url(re.compile(r"/console/tasks/\d+$"))
    task_id = int(page.url.rsplit("/", 1)[1])

    # The task the form made is an ordinary OMS task: the API shows it, and it copies the prefix alone.
    client = console_service.client()
    task, _ = wait_task(client, task_id, lambda t: t.status in (4, 5))
    assert task.status == 5, task.error_reason
    assert (task.task_type, task.description, task.consistency_check) == ("prefix", "console prefix copy", "crc64")
    assert (task.total_num, task.successful_num, task.progress) == (len(bodies), len(bodies), 1)
    assert task.src_node.object_key == ["logs/"] and task.dst_node.bucket == db
    assert set(listing(seaweed_b, db)) == set(bodies)
    # The form led to the task's own page, which follows it to the end.
    expect(page.locator("[data-live-text=progress]")).to_have_text(re.compile(r"^100(\.0)? ?%$"))
    console.shot("task-page-done")
    console.go("/console/tasks")
    expect(page.locator(f"a[href='/console/tasks/{task_id}']")).to_be_visible()
    console.shot("task-listed")


def test_bad_input_is_shown_next_to_its_field_and_secrets_are_not_echoed(
        console: ConsolePage, console_service: FerryService, seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
        bucket_factory: Any) -> None:
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    console.sign_in(console_service.tenant)
    page = console.page
    console.go("/console/tasks/new")
    source, destination = _task_source(seaweed_a, sb), _task_destination(seaweed_b, db)

    # A field's own rule: the description's forbidden characters, with the API's own code (OMS.0078).
    _fill(page, {"task_type": "list", "description": "nightly <copy>", **source, **destination})
    page.click("button[type=submit]:has-text('Create')")
    expect(_error(page, "description")).to_contain_text(Codes.DESCRIPTION_CHARS)
    expect(_field(page, "description")).to_have_value("nightly <copy>")
    expect(_field(page, "src_node.bucket")).to_have_value(sb)
    _no_secrets_shown(page, seaweed_a, seaweed_b)
    console.shot("description-refused")

    # A rule tying fields together: a list task needs its list file, shown at the list file's inputs.
    _fill(page, {"description": "nightly copy", **source, **destination})
    page.click("button[type=submit]:has-text('Create')")
    expect(_error(page, "src_node.list_file.list_file_key")).to_contain_text("list_file is required")
    expect(_error(page, "src_node.list_file.obs_bucket")).to_be_visible()
    expect(_error(page, "description")).to_have_count(0)
    console.shot("list-file-required")

    # KMS encryption without its key: the model's rule, at the key's input (shown although its encryption is the
    # default again, so the error is never hidden).
    _fill(page, {"task_type": "prefix", **source, **destination, "dst_node.crypto_type": "KMS"})
    page.click("button[type=submit]:has-text('Create')")
    expect(_error(page, "dst_node.kms_key_id")).to_contain_text("kms_key_id is required when dst_node.crypto_type")
    expect(_field(page, "dst_node.kms_key_id")).to_be_visible()
    _field(page, "dst_node.crypto_type").select_option("DEFAULT")

    # A refusal only the service can make (the destination cloud's bucket naming rule), at the bucket's input.
    _fill(page, {"task_type": "prefix", **source, **destination, "dst_node.bucket": "Not_A_Bucket"})
    page.click("button[type=submit]:has-text('Create')")
    expect(_error(page, "dst_node.bucket")).to_contain_text(Codes.INVALID_PARAMETER)
    expect(_error(page, "dst_node.bucket")).to_contain_text("bucket name")
    _no_secrets_shown(page, seaweed_a, seaweed_b)
    console.shot("bucket-refused")

    # A task group form shows its errors the same way (its destination cloud list included).
    console.go("/console/groups/new")
    expect(_field(page, "dst_node.cloud_type")).to_have_value("HEC")
    _fill(page, {"task_type": "PREFIX", **source, **destination,
                 "bandwidth_policy[0].start": "01:00", "bandwidth_policy[0].end": "02:00",
                 "bandwidth_policy[0].max_bandwidth": "1048576", "bandwidth_policy[1].start": "01:30",
                 "bandwidth_policy[1].end": "03:00", "bandwidth_policy[1].max_bandwidth": "1048576"})
    page.click("button[type=submit]:has-text('Create')")
    expect(page.locator(".field-error")).to_contain_text("must not overlap")
    console.shot("group-windows-overlap")


def _sync_form(src: SeaweedServer, sb: str, dst: SeaweedServer, db: str) -> dict[str, str]:
    return {"description": "console sync", "src_cloud_type": "Aliyun", "src_region": SRC_REGION, "src_bucket": sb,
            "src_ak": src.access_key, "src_sk": src.secret_key, "dst_region": DST_REGION, "dst_bucket": db,
            "dst_ak": dst.access_key, "dst_sk": dst.secret_key}


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_sync_task_made_through_the_form_charts_its_statistics(
        new_page: PageFactory, console_service: FerryService, seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
        bucket_factory: Any) -> None:
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    console = new_page()
    console.sign_in(console_service.tenant)
    page = console.page
    page.on("dialog", lambda dialog: dialog.accept())  # the Stop and Delete buttons ask first
    console.go("/console/sync-tasks")
    page.click("text=New sync task")

    # Keys the source refuses: the API's code (checked against the store itself), at the key inputs.
    _fill(page, {**_sync_form(seaweed_a, sb, seaweed_b, db), "src_sk": "not-the-secret-key"})
    page.click("button[type=submit]:has-text('Create')")
    expect(_error(page, "src_sk")).to_contain_text(Codes.SRC_AUTH)
    expect(_field(page, "src_bucket")).to_have_value(sb)
    _no_secrets_shown(page, seaweed_a, seaweed_b)
    assert "not-the-secret-key" not in page.content()
    console.shot("sync-keys-refused")

    _fill(page, _sync_form(seaweed_a, sb, seaweed_b, db))
    page.click("button[type=submit]:has-text('Create')")
    page.wait_for_url(re.compile(r"/console/sync-tasks/[0-9a-f-]{36}$"))
    task_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("[data-status]")).to_have_text("synchronizing")
    ctx = console_service.service.services.sync
    assert ctx is not None
    project = console_service.tenant.project_id

    # Events: three objects that exist and one that does not (it fails, with its reason). They are put once the
    # task's first reconciliation (of the empty bucket) is over, so the events, not it, copy them.
    _wait(lambda: (row := ctx.repo.get_task(task_id)) is not None and row.reconciled_at is not None, 30,
          "the first reconciliation")
    files = {"a.txt": b"alpha", "dir/b.txt": b"bravo" * 100, "c d.txt": b"charlie"}
    fill(seaweed_a, sb, files)
    client = console_service.client()
    client.create_sync_events(CreateSyncEventsRequest(sync_task_id=task_id, body=SyncObjectReq(
        object_keys=["a.txt", "dir%2Fb.txt", "c%20d.txt", "gone%2Fmissing.txt"])))

    def settled() -> bool:
        _, month = sync.show_sync_task(ctx, project, task_id, int(time.time() * 1000))
        problems, _ = sync.list_key_problems(ctx, project, task_id)
        return month.success >= 3 and any(p.reason for p in problems)

    _wait(settled, 60, "the events copied and the missing key failed")
    console.go(f"/console/sync-tasks/{task_id}")
    chart = page.locator("#chart-counts")
    expect(chart).to_have_attribute("data-drawn", "true")
    expect(page.locator("#chart-size")).to_have_attribute("data-drawn", "true")
    expect(chart).to_have_attribute("data-request-total", "4")
    expect(page.locator("[data-total=REQUEST]")).to_have_text("4")
    expect(page.locator("[data-month=SUCCESS]")).to_have_text(re.compile(r"^[3-9]$"))
    size = sum(len(v) for v in files.values())
    expect(page.locator("[data-month=SIZE]")).to_have_attribute("title", f"{size} bytes")
    failed = page.locator("table.failed-keys tr[data-key='gone/missing.txt']")
    expect(failed.locator(".reason")).to_have_text("the source object does not exist")
    assert {k: v for k, v in listing(seaweed_b, db).items() if k in files}.keys() == files.keys()
    console.shot("sync-page")

    # Another window: hourly points over a week, the same totals.
    page.click("a[data-window='7d']")
    expect(page).to_have_url(re.compile(r"window=7d$"))
    expect(page.locator("#chart-counts")).to_have_attribute("data-drawn", "true")
    expect(page.locator("#window-totals")).to_contain_text("hourly points")
    expect(page.locator("[data-total=REQUEST]")).to_have_text("4")

    # Actions as the API allows them: stop, start again with the keys re-supplied, delete.
    page.click("button:has-text('Stop')")
    expect(page.locator("[data-status]")).to_have_text("stopped")
    page.click("summary:has-text('Start')")
    _fill(page, {"src_ak": seaweed_a.access_key, "src_sk": seaweed_a.secret_key, "dst_ak": seaweed_b.access_key,
                 "dst_sk": "wrong"})
    page.click("form.start-form button[type=submit]")
    expect(_error(page, "dst_sk")).to_contain_text(Codes.DST_AUTH)
    expect(page.locator("[data-status]")).to_have_text("stopped")
    _no_secrets_shown(page, seaweed_a, seaweed_b)
    console.shot("sync-start-refused")
    _fill(page, {"src_ak": seaweed_a.access_key, "src_sk": seaweed_a.secret_key, "dst_ak": seaweed_b.access_key,
                 "dst_sk": seaweed_b.secret_key})
    page.click("form.start-form button[type=submit]")
    expect(page.locator("[data-status]")).to_have_text("synchronizing")

    phone = new_page(PHONE)
    phone.sign_in(console_service.tenant)
    phone.go(f"/console/sync-tasks/{task_id}")
    expect(phone.page.locator("#chart-counts")).to_have_attribute("data-drawn", "true")
    phone.shot("sync-page-phone")

    page.click("button:has-text('Delete')")
    page.wait_for_url(re.compile(r"/console/sync-tasks$"))
    expect(page.locator(f"tr[data-sync-task-id='{task_id}']")).to_have_count(0)
    assert ctx.repo.get_task(task_id) is None


def _create(console: ConsolePage, path: str, values: dict[str, str], created: str) -> str:
    console.go(path)
    _fill(console.page, values)
    console.page.click("button[type=submit]:has-text('Create')")
    console.page.wait_for_url(re.compile(created))
    return console.page.url.rsplit("/", 1)[1]


def test_object_list_and_url_list_tasks_and_a_group_through_the_forms(
        console: ConsolePage, console_service: FerryService, seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
        bucket_factory: Any) -> None:
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_b)
    bodies = {"a.txt": b"a", "b/c.txt": b"bc", "d e.txt": b"de", "f.txt": b"f"}
    fill(seaweed_a, sb, bodies)
    s3_client(seaweed_b).put_object(Bucket=db, Key="lists/keys.txt", Body=b"d%20e.txt\nf.txt\n",
                                    ContentType="text/plain")
    console.sign_in(console_service.tenant)
    client = console_service.client()
    source, destination = _task_source(seaweed_a, sb), _task_destination(seaweed_b, db)
    task_page = r"/console/tasks/\d+$"

    # object: named keys, into a folder, with a bandwidth window over the whole day and a start time.
    object_id = int(_create(console, "/console/tasks/new", {
        "task_type": "object", **source, "src_node.object_key": "a.txt\nb/c.txt", **destination,
        "dst_node.save_prefix": "objects", "migrate_since": "2020-01-01T00:00", "task_priority": "LOW",
        "bandwidth_policy[0].start": "00:00", "bandwidth_policy[0].end": "00:00",
        "bandwidth_policy[0].max_bandwidth": "209715200"}, task_page))
    # list: the keys of a list file in the destination's region.
    list_id = int(_create(console, "/console/tasks/new", {
        "task_type": "list", **source, "src_node.list_file.list_file_key": "lists/keys.txt",
        "src_node.list_file.obs_bucket": db, **destination, "dst_node.save_prefix": "listed/"}, task_page))
    # url_list: no source bucket or keys; its list file is missing here, which the task reports when it runs.
    url_id = int(_create(console, "/console/tasks/new", {
        "task_type": "url_list", "src_node.list_file.list_file_key": "lists/no-urls.txt",
        "src_node.list_file.obs_bucket": db, **destination}, task_page))
    group_id = _create(console, "/console/groups/new", {
        "task_type": "PREFIX", **source, "src_node.object_key": "b/", **destination,
        "dst_node.save_prefix": "grouped/"}, r"/console/groups/[0-9a-f-]{36}$")

    obj, _ = wait_task(client, object_id, lambda t: t.status in (4, 5))
    assert obj.status == 5 and obj.successful_num == 2, obj.error_reason
    assert (obj.task_type, obj.migrate_since, obj.task_priority) == ("object", 1577836800000, "LOW")
    assert [(p.start, p.end, p.max_bandwidth) for p in obj.bandwidth_policy] == [("00:00", "00:00", 209715200)]
    listed, _ = wait_task(client, list_id, lambda t: t.status in (4, 5))
    assert listed.status == 5 and listed.successful_num == 2, listed.error_reason
    url, _ = wait_task(client, url_id, lambda t: t.status in (4, 5))
    assert (url.task_type, url.src_node.cloud_type) == ("url_list", "URLSource")
    assert url.status == 4 and url.error_reason.error_code == "TRF.0013"

    def group_done() -> Any:
        group = client.show_task_group(ShowTaskGroupRequest(group_id=group_id))
        return group if group.status in (4, 5, 6) else None

    _wait(group_done, 90, "the group to complete")
    group = client.show_task_group(ShowTaskGroupRequest(group_id=group_id))
    assert group.status == 6 and group.success_num == 1, group.error_reason
    got = set(listing(seaweed_b, db))
    assert {"objects/a.txt", "objects/b/c.txt", "listed/d e.txt", "listed/f.txt", "grouped/b/c.txt"} <= got
    console.go("/console/groups")
    expect(console.page.locator(f"a[href='/console/groups/{group_id}']")).to_be_visible()
    console.shot("groups-listed")
