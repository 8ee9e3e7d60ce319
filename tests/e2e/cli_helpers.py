"""Helpers for end-to-end tests that run the `ferry` command against real sandbox servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

FERRY = [sys.executable, "-m", "ferry.cli"]


def s3_client(server: Any) -> Any:
    return boto3.client(
        "s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        lines = [ln for ln in self.stdout.splitlines() if ln.strip()]
        assert lines, f"no stdout; stderr: {self.stderr}"
        result: dict[str, Any] = json.loads(lines[-1])
        return result


def ferry_env(src: Any, dst: Any) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FERRY_SRC_AK=src.access_key, FERRY_SRC_SK=src.secret_key,
               FERRY_DST_AK=dst.access_key, FERRY_DST_SK=dst.secret_key)
    env.pop("FERRY_DATABASE_URL", None)
    return env


def migrate_argv(src: Any, sbucket: str, dst: Any, dbucket: str, state: Path, *extra: str) -> list[str]:
    return [*FERRY, "migrate", f"s3://{sbucket}", f"s3://{dbucket}", "--src-endpoint", src.endpoint,
            "--dst-endpoint", dst.endpoint, "--state-dir", str(state), "--json", *extra]


def run_ferry(argv: list[str], env: dict[str, str], timeout: float = 240) -> Run:
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    return Run(p.returncode, p.stdout, p.stderr)
