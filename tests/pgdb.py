"""Test helper: a throwaway PostgreSQL database on the development machine's server, dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

PG_ADMIN = os.environ.get("FERRY_TEST_PG", "postgresql://127.0.0.1:5432/test")


def pg_database() -> Iterator[str]:
    """Yields the URL of a fresh database, dropped afterwards; skips the test when PostgreSQL is not reachable."""
    try:
        import psycopg

        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except Exception as exc:  # any failure to reach it means "not available here"
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN}: {type(exc).__name__}")
    name = f"ferry_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
