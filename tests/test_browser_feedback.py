"""Feedback in a real browser against the production-style server: a button is busy (disabled, aria-busy,
a busy label) while its request is in flight, also for htmx forms, and ready again after an error; actions
end in a toast that a person can dismiss and that leaves by itself; toasts fit a phone, in Portuguese too.

Requests are held in flight with Playwright's `page.route` (released or aborted by the test), so no
assertion depends on how long anything takes. The harness is tests/test_browser.py's.
"""

from __future__ import annotations

import json
import re

import pytest

from . import test_browser as harness
from .orgs import audit_events_remove
from .servers import in_thread

pytestmark = pytest.mark.browser

browser = harness.browser
new_page = harness.new_page
PHONE = harness.PHONE
SLUG = "org-a"
EMAIL = "owner-a@example.com"
PASSWORD = "correct-horse-battery"  # conftest's tenant_world
TOAST_LEAVES_MS = 20_000  # generous: a toast leaves after a few seconds


@pytest.fixture(autouse=True)
def audit_restored(tenant_world, django_db_blocker):
    """The server commits each action's audit event; org A's dashboard lists the latest: remove ours after."""
    from django_tenants.utils import schema_context

    from tenants.audit.models import AuditEvent

    def last_id():
        with schema_context(tenant_world["a"]["org"].schema_name):
            return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0

    def remove_after(saved):
        audit_events_remove(tenant_world["a"]["org"].schema_name, id__gt=saved)

    with django_db_blocker.unblock():
        saved = in_thread(last_id)
    yield
    with django_db_blocker.unblock():
        in_thread(lambda: remove_after(saved))


@pytest.fixture
def language_restored(tenant_world, django_db_blocker):
    """Switching language saves it on the user (it follows them everywhere): put the owner's back after."""
    from accounts.models import User

    owner = tenant_world["a"]["owner"]
    with django_db_blocker.unblock():
        saved = in_thread(lambda: User.objects.get(pk=owner.pk).language)
    yield
    with django_db_blocker.unblock():
        in_thread(lambda: User.objects.filter(pk=owner.pk).update(language=saved))


@pytest.fixture
def api_keys(tenant_world, django_db_blocker):
    """Names of API keys a test creates through the browser; the server committed them, removed after."""
    names: list[str] = []
    yield names
    from tenants.models import ApiKey

    with django_db_blocker.unblock():
        in_thread(lambda: ApiKey.objects.filter(organization=tenant_world["a"]["org"], name__in=names).delete())


def sign_in(page) -> None:
    harness.sign_in(page, EMAIL, PASSWORD)


def hold_posts(page, path: str) -> list:
    """Hold every POST to `path` in flight until the test continues or aborts it."""
    held: list = []

    def handle(route):
        if route.request.method == "POST":
            held.append(route)
        else:
            route.continue_()

    page.route(re.compile(rf"^[^?]*{re.escape(path)}(\?.*)?$"), handle)
    return held


def wait_for_held(page, held: list) -> None:
    for _ in range(200):  # waiting lets Playwright dispatch the route handler
        if held:
            return
        page.wait_for_timeout(50)
    raise AssertionError("the request never left the page")


# Reports each change of a busy button on the console: while a form's navigation is pending, Playwright's
# queries wait for it to finish, but console messages still arrive.
BUSY_REPORTER = """
new MutationObserver(() => {
  document.querySelectorAll("button[aria-busy=true]").forEach((b) => console.log("busy " + JSON.stringify(
    {disabled: b.disabled, busy: b.getAttribute("aria-busy"), text: b.textContent.trim()})));
}).observe(document.body, {subtree: true, attributes: true, childList: true, characterData: true});
"""


def test_saving_settings_shows_a_busy_button_then_a_toast_that_can_be_dismissed(new_page, tenant_world):
    from playwright.sync_api import expect

    page = new_page()
    sign_in(page)
    page.goto(f"/o/{SLUG}/settings/")
    held = hold_posts(page, f"/o/{SLUG}/settings/")
    page.evaluate(BUSY_REPORTER)
    with page.expect_console_message(lambda message: message.text.startswith("busy ")) as busy:
        page.locator("main form button[type=submit]").first.click(no_wait_after=True)
    wait_for_held(page, held)

    assert json.loads(busy.value.text.removeprefix("busy ")) == {"disabled": True, "busy": "true",
                                                                 "text": "Saving…"}

    with page.expect_navigation():
        held[0].continue_()
    toast = page.get_by_test_id("toasts").locator("[data-toast]")
    expect(toast).to_have_count(1)
    expect(toast).to_have_attribute("role", "status")
    expect(toast).to_have_attribute("aria-live", "polite")
    expect(toast).to_contain_text("Saved.")
    page.get_by_role("button", name="Dismiss").click()
    expect(toast).to_have_count(0)

    # Once more: this time the toast leaves by itself.
    page.unroute_all()
    with page.expect_navigation():
        page.locator("main form button[type=submit]").first.click()
    expect(toast).to_contain_text("Saved.")
    expect(toast).to_have_count(0, timeout=TOAST_LEAVES_MS)


def test_an_htmx_form_is_busy_while_sending_and_ready_again_after_an_error(new_page, tenant_world):
    from playwright.sync_api import expect

    page = new_page()
    sign_in(page)
    page.goto(f"/o/{SLUG}/chat/")
    held = hold_posts(page, f"/o/{SLUG}/chat/new/")
    page.locator("#composer-input").fill("Hello")
    send = page.get_by_test_id("send")
    send.click()
    wait_for_held(page, held)

    expect(send).to_be_disabled()
    expect(send).to_have_attribute("aria-busy", "true")
    expect(send).to_have_text("Sending…")

    held[0].abort()  # the network fails: nothing was sent, the person can try again
    expect(send).to_be_enabled()
    expect(send).not_to_have_attribute("aria-busy", "true")
    expect(send).to_have_text("Send")
    expect(page.locator("#composer-input")).to_have_value("Hello")


def test_creating_an_api_key_shows_a_toast_in_portuguese_that_fits_a_phone(new_page, tenant_world, api_keys,
                                                                         language_restored):
    from playwright.sync_api import expect

    page = new_page(locale="pt-BR", viewport=PHONE)
    sign_in(page)
    harness.switch_language(page, "pt-br")
    page.goto(f"/o/{SLUG}/settings/api-keys/")
    name = "Toast test key"
    api_keys.append(name)
    form = page.locator("main form").filter(has=page.locator("input[name=name]"))
    form.locator("input[name=name]").fill(name)
    with page.expect_navigation():
        form.locator("button[type=submit]").click()
    if "/reauthenticate/" in page.url:  # allauth asks for the password again first
        page.locator("input[name=password]").fill(PASSWORD)
        with page.expect_navigation():
            page.locator("main form button[type=submit]").first.click()
        form.locator("input[name=name]").fill(name)
        with page.expect_navigation():
            form.locator("button[type=submit]").click()

    toast = page.get_by_test_id("toasts").locator("[data-toast]").filter(has_text=name)
    expect(toast).to_contain_text(f"Chave “{name}” criada. Copie-a agora: ela só é mostrada desta vez.")
    box = toast.bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], "the new key widens the page"


def test_on_a_phone_the_plan_cards_stack_with_the_current_one_marked(new_page, tenant_world):
    from playwright.sync_api import expect

    page = new_page(viewport=PHONE)
    sign_in(page)
    page.goto(f"/o/{SLUG}/billing/")
    cards = page.get_by_test_id("plan-card")
    expect(cards).to_have_count(5)
    boxes = [cards.nth(n).bounding_box() for n in range(5)]
    assert len({round(box["x"]) for box in boxes}) == 1, "one column"
    assert all(box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] for box in boxes), boxes
    assert all(upper["y"] + upper["height"] <= lower["y"] for upper, lower in zip(boxes, boxes[1:], strict=False))
    current = page.locator("[data-testid=plan-card][aria-current=true]")
    expect(current).to_have_count(1)
    expect(current.get_by_test_id("current-plan")).to_be_visible()
    expect(page.locator("[data-testid=plan-card] [data-testid=plan-action]")).to_have_count(4)


def test_a_toast_waiting_for_an_htmx_answer_appears_without_a_reload(new_page, tenant_world):
    from playwright.sync_api import expect

    page = new_page()
    sign_in(page)
    page.goto(f"/o/{SLUG}/chat/")
    page.evaluate("window.__sameDocument = true")
    # Another tab saves the settings without showing the page it is sent to: its toast waits for the next answer.
    status = page.evaluate("""async (url) => {
        const token = document.querySelector("input[name=csrfmiddlewaretoken]").value;
        const body = new URLSearchParams({csrfmiddlewaretoken: token, name: "Org A"});
        return (await fetch(url, {method: "POST", body, redirect: "manual"})).type;
    }""", f"/o/{SLUG}/settings/")
    assert status == "opaqueredirect"

    search = page.locator("#thread-search")
    with page.expect_response(re.compile(rf"/o/{SLUG}/chat/threads/")):
        search.fill("x")
        search.press("Enter")
    toast = page.get_by_test_id("toasts").locator("[data-toast]")
    expect(toast).to_have_count(1)
    expect(toast).to_contain_text("Saved.")
    expect(page.get_by_test_id("toasts")).to_have_count(1)
    assert page.evaluate("window.__sameDocument === true")
    expect(toast).to_have_count(0, timeout=TOAST_LEAVES_MS)  # htmx's toasts leave by themselves too
