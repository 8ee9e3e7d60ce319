"""`ferry migrate ./dir s3://...`: a plain directory tree, as users have one, is a source; a directory Ferry
wrote in its own layout is still read in that layout."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cli_helpers import FERRY, ferry_env, run_ferry, s3_client

MiB = 1024 * 1024


def _objects(client: Any, bucket: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def test_a_plain_folder_migrates_keyed_by_relative_paths(
    seaweed_b: Any, bucket_factory: Any, tmp_path: Path
) -> None:
    tree = tmp_path / "My Photos"
    files = {
        "2024/holiday/beach 01.jpg": os.urandom(3000),
        "2024/holiday/ü 日本.png": b"png",
        "2024/notes.txt": b"notes",
        "odd/100% #1?.txt": b"odd",
        "odd/.hidden": b"dotfile",
        "big/video.mp4": os.urandom(6 * MiB + 5),  # over the multipart threshold below
        "empty.txt": b"",
    }
    for key, body in files.items():
        (tree / key).parent.mkdir(parents=True, exist_ok=True)
        (tree / key).write_bytes(body)
    (tree / "empty-folder" / "inside").mkdir(parents=True)  # nothing to copy
    os.symlink(tree / "2024" / "notes.txt", tree / "link-to-notes")  # not followed: fails, and says why
    db = bucket_factory(seaweed_b)
    argv = [*FERRY, "migrate", str(tree), f"s3://{db}/backup", "--dst-endpoint", seaweed_b.endpoint,
            "--state-dir", str(tmp_path / "state"), "--json", "--multipart-threshold", "5", "--part-size", "5"]
    run = run_ferry(argv, ferry_env(seaweed_b, seaweed_b))
    assert run.code == 1, run.stderr  # one object failed: the link
    s = run.summary
    assert (s["total"], s["success"], s["failed"]) == (len(files) + 1, len(files), 1)
    report = [json.loads(line) for line in Path(s["report"]).read_text().splitlines()]
    assert [r["key"] for r in report] == ["link-to-notes"] and "symbolic link" in report[0]["reason"]
    dst = s3_client(seaweed_b)
    assert _objects(dst, db) == {f"backup/{k}": v for k, v in files.items()}
    head = dst.head_object(Bucket=db, Key="backup/2024/holiday/beach 01.jpg")
    assert head["ContentType"] == "image/jpeg"
    # Run again: nothing changed, nothing copied; the link still fails.
    again = run_ferry(argv, ferry_env(seaweed_b, seaweed_b))
    assert again.code == 1 and again.summary["skipped"] == len(files), again.stderr


def test_a_folder_ferry_wrote_is_read_back_in_its_layout(seaweed_a: Any, bucket_factory: Any, tmp_path: Path) -> None:
    sb, db = bucket_factory(seaweed_a), bucket_factory(seaweed_a)
    src = s3_client(seaweed_a)
    keys = {"a": b"file a", "a/b": b"child", "dir-marker/": b"", "x%2Fy": b"percent"}
    for key, body in keys.items():
        src.put_object(Bucket=sb, Key=key, Body=body)
    local = tmp_path / "copy"
    local.mkdir()
    env = ferry_env(seaweed_a, seaweed_a)
    out = run_ferry([*FERRY, "migrate", f"s3://{sb}", str(local), "--src-endpoint", seaweed_a.endpoint,
                     "--state-dir", str(tmp_path / "s1"), "--json"], env)
    assert out.code == 0, out.stderr
    back = run_ferry([*FERRY, "migrate", str(local), f"s3://{db}", "--dst-endpoint", seaweed_a.endpoint,
                      "--state-dir", str(tmp_path / "s2"), "--json"], env)
    assert back.code == 0, back.stderr
    assert _objects(src, db) == keys  # keys S3 allows and a plain tree could not hold came back exactly
