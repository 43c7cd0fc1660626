"""A new user's first minutes, in Debian's Chromium against Daphne."""

from __future__ import annotations

import pytest

from agentide.accounts.models import Membership, Role, User
from agentide.projects.models import Project

pytestmark = pytest.mark.browser


def test_log_in_create_a_team_add_a_member_and_create_a_project(daphne_server, browser, screenshot):
    User.objects.create_user("ada", "ada@example.test", "analytical-engine-1843")
    User.objects.create_user("grace", "grace@example.test", "cobol-1959-pass")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    page.goto(daphne_server.url + "/")
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    page.wait_for_selector("text=Please enter a correct username and password")
    page.fill("input[name=password]", "analytical-engine-1843")
    page.click("button[type=submit]")
    page.wait_for_selector("text=You are not in a team yet")
    screenshot(page, "1-empty-state")

    page.fill("input[name=name]", "Engines")
    page.click("text=Create team")
    page.wait_for_selector("h1:has-text('Engines')")
    assert Membership.objects.get(team__name="Engines", user__username="ada").role == Role.OWNER

    # Adding a member is an htmx post that swaps the members panel in place, no reload.
    page.evaluate("window.__samePage = true")
    page.fill("input[name=identifier]", "nobody")
    page.click("text=Add member")
    page.wait_for_selector("#members >> text=No such user")
    page.fill("input[name=identifier]", "grace@example.test")
    page.select_option(".add-member select[name=role]", "reviewer")
    page.click("text=Add member")
    page.wait_for_selector("#members .member[data-username=grace]")
    assert Membership.objects.get(team__name="Engines", user__username="grace").role == "reviewer"
    assert page.evaluate("window.__samePage") is True
    page.wait_for_selector("#members >> text=grace joined the team.")
    screenshot(page, "2-team")

    page.click("text=New project")
    page.fill("input[name=name]", "Difference Engine")
    page.fill("textarea[name=description]", "Tables of <b>polynomials</b>")
    page.click("button:has-text('Create project')")
    page.wait_for_selector("h1:has-text('Difference Engine')")
    # Descriptions are text, never markup.
    assert page.locator("text=Tables of <b>polynomials</b>").count() == 1
    assert Project.objects.filter(team__name="Engines", slug="difference-engine").exists()
    screenshot(page, "3-project")

    # A narrow screen still shows navigation and content.
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto(daphne_server.url + "/t/engines/")
    screenshot(page, "4-mobile")
    assert errors == []
    context.close()


def test_a_reviewer_sees_the_team_but_no_controls_to_change_it(daphne_server, browser, screenshot):
    from agentide.accounts.models import Team

    owner = User.objects.create_user("olga", "", "owner-pass-1234")
    reviewer = User.objects.create_user("rita", "", "review-pass-1234")
    team = Team.objects.create(name="Audit", slug="audit")
    Membership.objects.create(team=team, user=owner, role=Role.OWNER)
    Membership.objects.create(team=team, user=reviewer, role=Role.REVIEWER)

    context = browser.new_context()
    page = context.new_page()
    page.goto(daphne_server.url + "/accounts/login/")
    page.fill("input[name=username]", "rita")
    page.fill("input[name=password]", "review-pass-1234")
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Audit')")
    assert page.locator("text=New project").count() == 0
    assert page.locator("text=Add member").count() == 0
    assert page.locator("#members select").count() == 0
    screenshot(page, "reviewer")
    # The write endpoints refuse the reviewer even when reached directly.
    response = page.request.get(daphne_server.url + "/t/audit/projects/new/")
    assert response.status == 403
    context.close()
