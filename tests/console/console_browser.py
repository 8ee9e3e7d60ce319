"""What the console's browser tests share: the page widths, where screenshots go, and a tab on the console.

A module of its own, not conftest.py: `from conftest import ...` would find whichever conftest module was
imported first in the run (tests/api has one too)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry_service import Tenant
from playwright.sync_api import Page

CHROMIUM = os.environ.get("FERRY_CHROMIUM", "/usr/bin/chromium")
OUTPUT = Path(os.environ.get("FERRY_TEST_OUTPUT") or Path(__file__).resolve().parent.parent / "output")
# Desktop and phone widths the pages must work at.
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@dataclass
class ConsolePage:
    """A browser tab on the console, and helpers tests share. `errors` collects what the page's scripts threw
    and what the browser refused (a Content-Security-Policy violation is logged as a console error)."""

    page: Page
    base: str
    shots: Path
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.on("console", lambda msg: self.errors.append(f"console: {msg.text}")
                     if msg.type == "error" and not _expected_error(msg.text) else None)

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


def _expected_error(text: str) -> bool:
    # Answers the tests provoke on purpose (a refused action, another project's task) are logged by the browser
    # as failed loads; they are not script errors.
    return text.startswith("Failed to load resource")
