"""`ferry sandbox`: a local S3 store to try Ferry on, started from the command line and stopped with Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from cli_helpers import FERRY, ferry_env, run_ferry, s3_client

pytestmark = pytest.mark.timeout(120)


def test_sandbox_serves_its_buckets_until_interrupted(tmp_path: Path) -> None:
    proc = subprocess.Popen([*FERRY, "sandbox", "--bucket", "tryme", "--bucket", "there"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        printed = []
        for line in proc.stdout:  # the lines it prints once the store answers
            printed.append(line)
            if line.startswith("ferry migrate "):
                break
        text = "".join(printed)
        endpoint = re.search(r"(http://127\.0\.0\.1:\d+)", text)
        keys = dict(re.findall(r"(FERRY_\w+)=(\S+)", text))
        assert endpoint and {"FERRY_SRC_AK", "FERRY_SRC_SK", "FERRY_DST_AK", "FERRY_DST_SK"} <= set(keys), text
        store = SimpleNamespace(endpoint=endpoint.group(1), access_key=keys["FERRY_SRC_AK"],
                                secret_key=keys["FERRY_SRC_SK"])
        s3_client(store).put_object(Bucket="tryme", Key="hello.txt", Body=b"hi")
        # The migration it suggests works as printed.
        env = {**ferry_env(store, store), **keys}
        run = run_ferry([*FERRY, "migrate", "s3://tryme", "s3://there", "--src-endpoint", store.endpoint,
                         "--dst-endpoint", store.endpoint, "--state-dir", str(tmp_path), "--json"], env)
        assert run.code == 0, run.stderr
        assert s3_client(store).get_object(Bucket="there", Key="hello.txt")["Body"].read() == b"hi"
    finally:
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
