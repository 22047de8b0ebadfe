"""The audit log page in a real browser on a 375 px phone: its filters and a row with long values and every
disclosure open fit without a sideways scroll; a row's before/after opens from the keyboard."""

from __future__ import annotations

import pytest

from . import test_browser as harness
from .servers import in_thread
from .test_browser_chat import sign_in

pytestmark = pytest.mark.browser

browser = harness.browser
new_page = harness.new_page
PHONE = harness.PHONE
LONG = "https://hooks.example.com/" + "a-very-long-path-segment/" * 6


@pytest.fixture(scope="module")
def long_event(tenant_world, django_db_blocker):
    """One committed event with long values in org A (the log is append-only: it stays)."""
    from tenants.audit.services import Actor, audit_record

    org = tenant_world["a"]["org"]
    actor = Actor(type="user", id="1", label="someone.with.a.long.address@subdomain.example.com",
                  ip_address="2001:db8:85a3::8a2e:370:7334", user_agent="Mozilla/5.0 " * 20)
    with django_db_blocker.unblock():
        in_thread(lambda: audit_record(organization=org, actor=actor, action="webhook_endpoint.updated",
                                       target_type="webhooks.webhookendpoint", target_id="42", target_label=LONG,
                                       before={"url": LONG, "event_types": []},
                                       after={"url": LONG + "v2", "event_types": ["check.completed"]}))


def test_the_audit_log_fits_a_phone_and_its_details_open(new_page, long_event):
    from playwright.sync_api import expect

    page = new_page(viewport=PHONE)
    sign_in(page)
    page.goto("/o/org-a/settings/audit/?action=webhook_endpoint.updated")
    row = page.locator("[data-testid=audit-row]").first
    expect(row).to_contain_text("Webhook endpoint updated")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    summary = row.locator("summary")
    summary.focus()
    page.keyboard.press("Enter")
    expect(row.locator("pre").first).to_be_visible()
    expect(row).to_contain_text("check.completed")
    page.evaluate("document.querySelectorAll('details').forEach((details) => { details.open = true; })")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
