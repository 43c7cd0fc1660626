"""The team page's API keys section in Chromium: create (the secret shown once), revoke."""

from __future__ import annotations

from typing import Any

import pytest

from agentide.api.models import ApiKey
from tests.support import logged_in_page

pytestmark = pytest.mark.browser


def test_an_owner_creates_and_revokes_a_key_in_the_team_page(
    browser: Any, daphne_server: Any, personas: Any, project: Any, screenshot: Any
) -> None:
    page = logged_in_page(browser, daphne_server.url, personas.owner)
    page.goto(f"{daphne_server.url}/t/acme/")
    page.fill("#api-keys input[name=name]", "nightly <build>")
    page.click("#api-keys button[type=submit]")
    secret_box = page.locator("[data-testid=api-secret]")
    secret_box.wait_for()
    secret = secret_box.input_value()
    screenshot(page, "1-created")
    key = ApiKey.objects.get()
    assert secret.startswith(f"aide-{key.prefix}-")
    assert page.locator(".api-key[data-key-name='nightly <build>']").count() == 1

    page.reload()
    page.locator(".api-key").first.wait_for()
    assert secret not in page.content()
    assert page.locator("[data-testid=api-secret]").count() == 0

    page.on("dialog", lambda dialog: dialog.accept())
    page.click(".api-key button:has-text('Revoke')")
    page.locator(".api-key.revoked").wait_for()
    screenshot(page, "2-revoked")
    key.refresh_from_db()
    assert key.revoked_by == personas.owner
    assert page.errors == []


def test_an_api_session_is_labelled_with_its_keys_name(
    browser: Any, daphne_server: Any, personas: Any, make_key: Any, sdk: Any, screenshot: Any
) -> None:
    _key, secret = make_key(name="nightly build")
    sdk(secret).containers.create(name="from the api")
    page = logged_in_page(browser, daphne_server.url, personas.member)
    page.goto(f"{daphne_server.url}/t/acme/p/demo/")
    badge = page.locator("#session-list .badge.api-driven")
    badge.wait_for()
    assert badge.inner_text() == "API · nightly build"
    screenshot(page, "1-session-list")
    page.click("#session-list a:has-text('from the api')")
    header_badge = page.locator(".nb-head .badge.api-driven")
    header_badge.wait_for()
    assert header_badge.inner_text() == "API · nightly build"
    screenshot(page, "2-notebook-header")
    assert page.errors == []
