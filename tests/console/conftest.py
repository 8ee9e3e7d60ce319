"""Fixtures for console tests: a live Ferry service (SeaweedFS and moto as clouds), headless Chromium driven by
Playwright, and a screenshot directory per test.

Chromium is Debian's /usr/bin/chromium (scripts/bootstrap.sh test installs it); Playwright never downloads a
browser of its own. Screenshots go to $FERRY_TEST_OUTPUT (default tests/output/, git-ignored), one directory
per test, so a failed run can be looked at afterwards.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "api"))

from console_browser import CHROMIUM, DESKTOP, OUTPUT, ConsolePage, PageFactory
from ferry_service import FerryService, start_service
from playwright.sync_api import Browser, Playwright, sync_playwright

from ferry.sandbox import MotoServer, SeaweedServer


# Module scope: its runner threads stop with the module instead of polling through the rest of the suite.
@pytest.fixture(scope="module")
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


# Module scope, not session: while Playwright's sync driver is open its event loop counts as running in this
# thread, and every asyncio test run after this module would fail to start its own loop.
@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/bootstrap.sh test installs Debian's)")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
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


@pytest.fixture
def new_page(browser: Browser, console_service: FerryService, shots: Path) -> Iterator[PageFactory]:
    """Opens a fresh browser context (its own cookies) per call: `new_page()` at desktop width,
    `new_page(PHONE)` at a phone's."""
    contexts = []
    pages: list[ConsolePage] = []

    def make(viewport: dict[str, int] | None = None) -> ConsolePage:
        ctx = browser.new_context(viewport=viewport or DESKTOP)  # type: ignore[arg-type]
        ctx.set_default_timeout(20_000)
        contexts.append(ctx)
        made = ConsolePage(ctx.new_page(), console_service.url, shots)
        pages.append(made)
        return made

    yield make
    for ctx in contexts:
        ctx.close()
    problems = [e for p in pages for e in p.errors]
    assert not problems, problems


@pytest.fixture
def console(new_page: PageFactory) -> ConsolePage:
    """A desktop-width tab, not signed in."""
    return new_page()
