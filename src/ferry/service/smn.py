"""Task-end notifications published to the Huawei Cloud SMN topic named in a task's or group's `smn_config`.

OMS publishes with its own service identity; a self-hosted Ferry publishes with the operator's keys,
`FERRY_SMN_AK` / `FERRY_SMN_SK`. The topic URN (`urn:smn:<region>:<project_id>:<topic>`) says where: the endpoint
is `https://smn.<region>.myhuaweicloud.com` unless `FERRY_ENDPOINT_OVERRIDES` has an `"SMN/<region>"` entry.
A message is sent at most once per finished run, when the final status is one of the trigger conditions; the
outcome (sent, or the error code of the failure) is what the API reports as `smn_info`.

Since the operator's keys may reach the topics of other projects too, a task may only name a topic of its own
project (the URN's `<project_id>`): checked when the task is created and again before every publish, so a task
stored before that check existed cannot publish across projects either.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote, urlsplit

from ferry.errors import UsageError
from ferry.oms import Codes
from ferry.runner.notices import RunEnd
from ferry.sdk_hmac import signed_headers
from ferry.service.endpoints import is_public_host, load_overrides
from ferry.storage.http1 import Http1Pool, HttpError, HttpResponse, Url, split_url

log = logging.getLogger(__name__)

_URN = re.compile(r"^urn:smn:([a-z0-9][a-z0-9-]{0,63}):([0-9a-f]{32}):([A-Za-z0-9][A-Za-z0-9_-]{0,255})$")
NOT_CONFIGURED = "FERRY.SMN_NOT_CONFIGURED"
UNREACHABLE = "FERRY.SMN_UNREACHABLE"
# OMS's code for an SMN topic it will not use; what a publish that never went out reports for a bad topic.


@dataclass(frozen=True, slots=True)
class Topic:
    """The parts of an SMN topic URN."""

    urn: str
    region: str
    project_id: str
    name: str

    @classmethod
    def parse(cls, urn: str) -> Topic:
        m = _URN.match(urn)
        if m is None:
            raise UsageError("smn_config.topic_urn must look like urn:smn:<region>:<project_id>:<topic_name>")
        return cls(urn, m.group(1), m.group(2), m.group(3))


def project_topic(urn: str, project_id: str) -> Topic:
    """The topic `urn` names, if it is one of `project_id`'s; UsageError otherwise (the message names no project)."""
    topic = Topic.parse(urn)
    if topic.project_id != project_id.lower():
        raise UsageError("smn_config.topic_urn must name a topic of your own project")
    return topic


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to a task's notification; `error` is empty when it was sent or not due."""

    sent: bool
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "error": self.error}

    @classmethod
    def from_json(cls, data: Any) -> Outcome | None:
        if not isinstance(data, dict):
            return None
        return cls(bool(data.get("sent")), str(data.get("error") or ""))


@dataclass(frozen=True, slots=True)
class SmnSettings:
    """The operator's publishing identity and how long one publish may take."""

    access_key: str | None = None
    secret_key: str | None = None
    timeout: float = 10.0

    @classmethod
    def from_env(cls) -> SmnSettings:
        return cls(os.environ.get("FERRY_SMN_AK") or None, os.environ.get("FERRY_SMN_SK") or None,
                   float(os.environ.get("FERRY_SMN_TIMEOUT_SECONDS") or 10.0))


def topic_name(config: dict[str, Any] | None) -> str:
    urn = str((config or {}).get("topic_urn", ""))
    return urn.rsplit(":", 1)[-1]


def endpoint(region: str, overrides: dict[str, str] | None = None) -> str:
    """The SMN endpoint of `region`: the operator's override, else the public one (which must stay public)."""
    table = load_overrides() if overrides is None else overrides
    url = table.get(f"smn/{region}")
    if url is not None:
        return url
    url = f"https://smn.{region}.myhuaweicloud.com"
    if not is_public_host(urlsplit(url).hostname or ""):
        raise UsageError(f"SMN endpoint for {region} is not a public address")
    return url


def _text(values: dict[str, str], language: str) -> tuple[str, str]:
    status = values["Task_Status"]
    if language == "zh-cn":
        subject = f"OMS 迁移任务 {values['Task_Name']} {'成功' if status == 'SUCCESS' else '失败'}"
        labels = {"Task_Name": "任务名称", "Task_Status": "任务状态", "Start_Time": "开始时间",
                  "Total_Time_Used": "总耗时", "Transferred_Data": "已迁移数据", "Average_Speed": "平均速度",
                  "Source_Bucket": "源端桶", "Destination_Bucket": "目的端桶"}
    else:
        subject = f"OMS migration task {values['Task_Name']} {'succeeded' if status == 'SUCCESS' else 'failed'}"
        labels = {"Task_Name": "Task name", "Task_Status": "Task status", "Start_Time": "Start time",
                  "Total_Time_Used": "Total time used", "Transferred_Data": "Transferred data",
                  "Average_Speed": "Average speed", "Source_Bucket": "Source bucket",
                  "Destination_Bucket": "Destination bucket"}
    lines = [f"{label}: {values[key]}" for key, label in labels.items() if values.get(key)]
    lines += [f"{key}: {value}" for key, value in values.items() if key not in labels and value]
    return subject, "\n".join(lines)


def publish_body(config: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """The SMN publish request: the named message template with the task's values as tags, else plain text."""
    template = config.get("message_template_name")
    if template:
        return {"message_template_name": template, "tags": values, "time_to_live": "3600"}
    subject, message = _text(values, str(config.get("language") or "en-us"))
    return {"subject": subject[:512], "message": message, "time_to_live": "3600"}


def due(config: dict[str, Any] | None, succeeded: bool) -> bool:
    if not config:
        return False
    return ("SUCCESS" if succeeded else "FAILURE") in (config.get("trigger_conditions") or [])


def notify(config: dict[str, Any], values: dict[str, str], *, project_id: str, settings: SmnSettings | None = None,
           overrides: dict[str, str] | None = None) -> Outcome:
    """Publish one message for a task or group of `project_id` (blocking, bounded by the timeout); every failure
    becomes an error code, never raised."""
    settings = settings or SmnSettings.from_env()
    if not settings.access_key or not settings.secret_key:
        return Outcome(False, NOT_CONFIGURED)
    try:
        topic = project_topic(str(config.get("topic_urn", "")), project_id)
        base = endpoint(topic.region, overrides)
    except UsageError:
        return Outcome(False, Codes.SMN_TOPIC)
    path = f"/v2/{topic.project_id}/notifications/topics/{quote(topic.urn, safe='')}/publish"
    body = json.dumps(publish_body(config, values), ensure_ascii=False).encode("utf-8")
    try:
        url = split_url(base.rstrip("/") + path)
        # Blocking, as the runners call it from a worker thread: one short-lived loop and connection.
        resp = asyncio.run(_publish(url, path, body, topic.project_id, settings.access_key, settings.secret_key,
                                    settings.timeout))
    except (HttpError, OSError, ValueError) as exc:
        log.warning("SMN publish to topic %s failed: %s", topic.name, type(exc).__name__)
        return Outcome(False, UNREACHABLE)
    if 200 <= resp.status < 300:
        return Outcome(True)
    # A redirect is not followed: it could lead the publish (and its signature) where the endpoint table
    # never allowed.
    code = _error_code(resp)
    log.warning("SMN publish to topic %s refused: HTTP %d %s", topic.name, resp.status, code)
    return Outcome(False, code)


def publish_end(end: RunEnd) -> dict[str, Any]:
    """The runners' notifier: publish the message of a finished task or group if its trigger conditions ask for
    it; the outcome as the runner stores it (`smn_result`)."""
    outcome = Outcome(False)
    if due(end.config, end.succeeded):
        values = template_values(name=end.name, succeeded=end.succeeded, started_at=end.started_at,
                                 seconds=end.seconds, bytes_done=end.bytes_done, src_bucket=end.src_bucket,
                                 dst_bucket=end.dst_bucket, list_file=end.list_file, records=end.records)
        outcome = notify(end.config, values, project_id=end.project_id)
    return outcome.to_json()


async def _publish(url: Url, path: str, body: bytes, project_id: str, access_key: str, secret_key: str,
                   timeout: float) -> HttpResponse:
    headers = signed_headers(access_key, secret_key, "POST", url.host_header, path, "", body, {
        "content-type": "application/json;charset=utf-8", "x-project-id": project_id})
    del headers["host"]  # the pool sends it
    pool = Http1Pool(url.scheme, url.host, url.port, limit=1, connect_timeout=timeout, read_timeout=timeout)
    try:
        return await pool.request("POST", url.target, url.host_header, headers, body)
    finally:
        await pool.close()


def _error_code(resp: HttpResponse) -> str:
    try:
        data = json.loads(resp.body[:4096] or b"{}")
    except ValueError:
        data = {}
    code = data.get("error_code") if isinstance(data, dict) else None
    if isinstance(code, str) and re.fullmatch(r"[A-Za-z0-9._-]{1,32}", code):
        return code
    return f"FERRY.SMN_HTTP_{resp.status}"


def _size(n: int) -> str:
    units = ["B", "KB", "MB", "GB", "TB", "PB"]
    value, unit = float(n), 0
    while value >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    return f"{value:.2f} {units[unit]}" if unit else f"{n} B"


def shown_record_path(path: str | None) -> str | None:
    """An object list's path as a caller sees it: relative to the records area (`<project>/<task>/failed.jsonl`
    under `$FERRY_DATA_DIR/records`), never where the server keeps its data. Keys that are not server paths
    (a destination-bucket key) are shown as they are."""
    if not path or not PurePosixPath(path).is_absolute():
        return path
    parts = PurePosixPath(path).parts
    return "/".join(parts[-3:]) if len(parts) >= 4 and parts[-4] == "records" else parts[-1]


def template_values(*, name: str, succeeded: bool, started_at: float | None, seconds: float, bytes_done: int,
                    src_bucket: str | None, dst_bucket: str, list_file: dict[str, Any] | None = None,
                    records: dict[str, Any] | None = None) -> dict[str, str]:
    """The template keys OMS documents for SMN messages, filled from a finished task or group."""
    records = records or {}
    listing = list_file or {}
    start = dt.datetime.fromtimestamp(started_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if started_at else ""
    speed = int(bytes_done / seconds) if seconds > 0 else 0
    return {
        "Task_Status": "SUCCESS" if succeeded else "FAILURE",
        "Task_Name": name,
        "Start_Time": start,
        "Total_Time_Used": f"{int(seconds)} s",
        "Transferred_Data": _size(bytes_done),
        "Average_Speed": f"{_size(speed)}/s",
        "Source_Bucket": src_bucket or "",
        "Destination_Bucket": dst_bucket,
        "List_File_Bucket": str(listing.get("obs_bucket") or ""),
        "List_File_Key": str(listing.get("list_file_key") or ""),
        "Success_object_list_path": shown_record_path(records.get("success")) or "",
        "Skip_object_list_path": shown_record_path(records.get("skip")) or "",
        "Failed_object_list_path": shown_record_path(records.get("failed")) or "",
    }
