"""Fixtures for API tests: a live Ferry API server per module and an OmsClient signed for its tenant."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from huaweicloudsdkoms.v2 import OmsClient
from live_server import LiveServer, oms_client, start_live, stop


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    server, running = start_live()
    try:
        yield server
    finally:
        stop(running)


@pytest.fixture(autouse=True)
def _reset_clock(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "live" in request.fixturenames:
        request.getfixturevalue("live").clock.offset = timedelta(0)


@pytest.fixture
def client(live: LiveServer) -> OmsClient:
    return oms_client(live.url, live.tenant.ak, live.tenant.sk, live.tenant.project_id)
