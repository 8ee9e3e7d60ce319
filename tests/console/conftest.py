"""Fixtures for console tests: a live Ferry service (SeaweedFS and moto as clouds), headless Chromium driven by
Playwright, and a screenshot directory per test.

Chromium is Debian's /usr/bin/chromium (scripts/bootstrap.sh test installs it); Playwright never downloads a
browser of its own. Screenshots go to $FERRY_TEST_OUTPUT (default tests/output/, git-ignored), one directory
per test, so a failed run can be looked at afterwards.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "api"))

from ferry_service import FerryService, Tenant, start_service
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from ferry.sandbox import MotoServer, SeaweedServer

CHROMIUM = os.environ.get("FERRY_CHROMIUM", "/usr/bin/chromium")
OUTPUT = Path(os.environ.get("FERRY_TEST_OUTPUT") or Path(__file__).resolve().parent.parent / "output")
# Desktop and phone widths the pages must work at.
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
def console_service(tmp_path_factory: pytest.TempPathFactory, seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
                    moto: MotoServer) -> Iterator[FerryService]:
    """The real service (database, runner, API and console) on 127.0.0.1; its clouds: Aliyun cn-hangzhou is
    seaweed_a, AWS us-east-1 is moto, HuaweiCloud cn-north-4 (the destination) is seaweed_b."""
    data_dir = tmp_path_factory.mktemp("ferry-console")
    table = {"Aliyun/cn-hangzhou": seaweed_a.endpoint, "AWS/us-east-1": moto.endpoint,
             "HuaweiCloud/cn-north-4": seaweed_b.endpoint}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERRY_ENDPOINT_OVERRIDES", json.dumps(table))
        started = start_service(data_dir, f"sqlite:///{data_dir / 'ferry.db'}")
        try:
            yield started.value
        finally:
            started.close()


@pytest.fixture(scope="session")
def playwright_driver() -> Iterator[Playwright]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/bootstrap.sh test installs Debian's)")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    # --no-sandbox: tests run as root in CI, where Chromium's sandbox refuses to start.
    launched = playwright_driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Path:
    """This test's screenshot directory (emptied first)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.split("::", 1)[-1])[:120]
    directory = OUTPUT / "console" / name
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.png"):
        old.unlink()
    return directory


@dataclass
class ConsolePage:
    """A browser tab on the console, and helpers tests share."""

    page: Page
    base: str
    shots: Path

    def go(self, path: str) -> Any:
        return self.page.goto(self.base + path)

    def shot(self, name: str, full_page: bool = True) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def sign_in(self, tenant: Tenant) -> None:
        self.go("/console/signin")
        self.page.fill("input[name=access_key]", tenant.ak)
        self.page.fill("input[name=secret_key]", tenant.sk)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(re.compile(r".*/console/tasks.*"))


PageFactory = Callable[..., ConsolePage]


@pytest.fixture
def new_page(browser: Browser, console_service: FerryService, shots: Path) -> Iterator[PageFactory]:
    """Opens a fresh browser context (its own cookies) per call: `new_page()` at desktop width,
    `new_page(PHONE)` at a phone's."""
    contexts = []

    def make(viewport: dict[str, int] | None = None) -> ConsolePage:
        ctx = browser.new_context(viewport=viewport or DESKTOP)  # type: ignore[arg-type]
        ctx.set_default_timeout(20_000)
        contexts.append(ctx)
        return ConsolePage(ctx.new_page(), console_service.url, shots)

    yield make
    for ctx in contexts:
        ctx.close()


@pytest.fixture
def console(new_page: PageFactory) -> ConsolePage:
    """A desktop-width tab, not signed in."""
    return new_page()
