"""In Chromium: an operator lowers a quota in Django admin, and the member's next run is
refused with the message shown in the notebook. Real Daphne, Celery worker and Docker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agentide.accounts.models import User
from agentide.events.models import Event
from agentide.quotas import services as quotas
from agentide.quotas.models import Quota, UsageRecord
from agentide.sessions.models import Cell
from tests.support import logged_in_page, wait_until

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def destroy_sandboxes(transactional_db: None) -> Iterator[None]:
    yield
    from agentide.sandboxes import services as sandboxes
    from agentide.sessions.models import Session

    for session in Session.objects.all():
        sandboxes.destroy_sandbox(session)


def open_as(browser: Any, server: Any, user: Any, path: str) -> Any:
    # Script errors only: the refused run answers 422 on purpose, which the console logs.
    page = logged_in_page(browser, server.url, user)
    page.goto(server.url + path)
    return page


def test_an_operator_lowers_a_quota_and_the_next_run_is_refused(
    browser, daphne_server, celery_worker, personas, session, screenshot
):
    operator = User.objects.create_superuser(f"root-{uuid.uuid4().hex[:6]}",
                                             "root@example.test", "pw-root-12345")
    # Half an hour of sandbox time is already used this month.
    quotas.charge(team_id=personas.team.pk, user_id=personas.member.pk,
                  kind=UsageRecord.Kind.SANDBOX, sandbox_seconds=1800)

    notebook = open_as(browser, daphne_server, personas.member, f"/s/{session.pk}/")
    notebook.wait_for_selector("#connection[data-state=live]")
    notebook.fill("#composer-source", "echo before")
    notebook.press("#composer-source", "Control+Enter")
    wait_until(
        lambda: notebook.locator("#cells .cell").last.locator(".cell-state")
        .get_attribute("data-status") == "finished",
        timeout=90, what="the first command to finish",
    )

    admin = open_as(browser, daphne_server, operator,
                    f"/admin/accounts/team/{personas.team.pk}/change/")
    admin.fill("#id_quota-0-sandbox_hours_per_month", "0.25")
    screenshot(admin, "1-admin-lowers-sandbox-hours")
    admin.click("input[name=_continue]")
    admin.wait_for_selector("li.success")
    assert Quota.objects.get(team=personas.team).sandbox_hours_per_month is not None
    admin.wait_for_selector("progress")
    screenshot(admin, "2-admin-after-save")
    admin.goto(daphne_server.url + "/admin/accounts/team/")
    admin.wait_for_selector("#result_list progress")
    screenshot(admin, "2b-admin-team-list")

    notebook.fill("#composer-source", "echo after")
    notebook.press("#composer-source", "Control+Enter")
    notebook.wait_for_selector("#composer-errors >> text=Monthly limit reached")
    message = notebook.locator("#composer-errors").text_content() or ""
    assert "team Acme has used 0.50 of 0.25 sandbox-hours this month" in message
    assert "Ask your team's owners and admins (owner, admin)" in message
    screenshot(notebook, "3-member-refused")
    assert not Cell.objects.filter(session=session, source="echo after").exists()
    assert Event.objects.filter(session=session, type="quota.exceeded").count() == 1

    usage = open_as(browser, daphne_server, personas.owner, f"/t/{personas.team.slug}/usage/")
    usage.wait_for_selector("#daily-usage svg")
    assert usage.locator("#daily-usage svg rect[height=\"0\"]").count() < usage.locator(
        "#daily-usage svg rect").count()
    assert usage.locator(".quota-banner").count() == 1
    screenshot(usage, "4-owner-usage-page")
    assert not notebook.errors and not admin.errors and not usage.errors, (
        notebook.errors, admin.errors, usage.errors)
