"""Signing in and out of the console, its session cookie, and CSRF refusals — in headless Chromium."""

from __future__ import annotations

import re

from ferry_service import FerryService
from playwright.sync_api import expect

from conftest import PHONE, ConsolePage, PageFactory
from ferry.service.credentials import create_token


def test_sign_in_with_keys_then_sign_out(console: ConsolePage, console_service: FerryService) -> None:
    console.go("/console/tasks")
    # Not signed in: the sign-in page, which brings the user back afterwards.
    expect(console.page).to_have_url(re.compile(r"/console/signin\?next=%2Fconsole%2Ftasks$"))
    console.shot("signin")
    console.page.fill("input[name=access_key]", console_service.tenant.ak)
    console.page.fill("input[name=secret_key]", "not-the-secret")
    console.page.click("button[type=submit]")
    expect(console.page.locator(".flash.error")).to_contain_text("not valid")
    # The secret typed is never sent back into the page.
    assert "not-the-secret" not in console.page.content()
    console.shot("signin-refused")

    console.sign_in(console_service.tenant)
    cookie = next(c for c in console.page.context.cookies() if c["name"] == "ferry_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/console"
    assert cookie["expires"] > 0  # a persistent cookie that expires, not one living as long as the browser
    assert console_service.tenant.sk not in cookie["value"] and console_service.tenant.ak not in cookie["value"]
    expect(console.page.locator("h1")).to_have_text("Migration tasks")
    console.shot("tasks")
    for path, title in (("/console/groups", "Task groups"), ("/console/sync-tasks", "Sync tasks")):
        console.go(path)
        expect(console.page.locator("h1")).to_have_text(title)
        console.shot(path.rsplit("/", 1)[-1])

    console.page.click("text=Sign out")
    expect(console.page).to_have_url(re.compile(r"/console/signin$"))
    # The old cookie, replayed, is refused too (signed out on the server, not only forgotten by the browser).
    console.page.context.add_cookies([cookie])  # type: ignore[list-item]
    console.go("/console/tasks")
    expect(console.page).to_have_url(re.compile(r"/console/signin"))


def test_sign_in_with_a_token_at_phone_width(new_page: PageFactory, console_service: FerryService) -> None:
    console = new_page(PHONE)
    token = create_token(console_service.service.engine, console_service.tenant.project_id, 3600, None)
    console.go("/console/signin")
    console.page.fill("input[name=token]", token.token)
    console.page.click("button[type=submit]")
    expect(console.page).to_have_url(re.compile(r"/console/tasks$"))
    # At 390 px nothing is wider than the screen.
    width = console.page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
    console.shot("tasks-phone")


def test_a_request_without_the_csrf_token_is_refused(console: ConsolePage, console_service: FerryService) -> None:
    console.sign_in(console_service.tenant)
    # The browser's own cookie, a form post without the token: refused, and the session stays.
    answer = console.page.request.post(console_service.url + "/console/signout", form={"x": "1"})
    assert answer.status == 403 and "security token" in answer.text()
    answer = console.page.request.post(console_service.url + "/console/signout",
                                       form={"csrf_token": "0" * 64})
    assert answer.status == 403
    console.go("/console/tasks")
    expect(console.page.locator("h1")).to_have_text("Migration tasks")
    # A form of another site's page carrying the right token is refused on its Origin.
    token = console.page.locator("input[name=csrf_token]").first.get_attribute("value")
    answer = console.page.request.post(console_service.url + "/console/signout", form={"csrf_token": token or ""},
                                       headers={"Origin": "http://evil.example"})
    assert answer.status == 403
    console.page.set_content(answer.text())
    console.shot("csrf-refused")
    # The sign-in form has its own token: a post without it is refused before any key is looked at.
    anonymous = console.page.context.browser.new_context()  # type: ignore[union-attr]
    try:
        answer = anonymous.request.post(console_service.url + "/console/signin", form={
            "access_key": console_service.tenant.ak, "secret_key": console_service.tenant.sk})
        assert answer.status == 403 and not any(c["name"] == "ferry_session" for c in anonymous.cookies())
    finally:
        anonymous.close()
