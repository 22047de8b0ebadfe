"""Every page a member can reach, in a real browser, in English and in Portuguese: none scrolls sideways on a
375 px phone, and axe-core finds no serious or critical accessibility violation on it; focus is visible, and the
chat composer works from the keyboard alone.

Chromium is Debian's, driven by Playwright (the harness of tests/test_browser.py). The walk signs in once per
language as org A's owner, over content committed for it (a thread with messages; a monitored company with two
reports, an alert and a bulk batch), removed afterwards. axe-core is vendored for the tests only
(tests/vendor/axe-core): Playwright injects it into each page; the site never serves it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.urls import reverse
from django_tenants.utils import schema_context

from . import test_browser as harness
from .checks_reports import dbone_report
from .servers import in_thread
from .test_browser_chat import ANSWER_TIMEOUT_MS, sign_in
from .test_chat_streaming import DEMO, expected_answer, threads_remove

pytestmark = pytest.mark.browser

browser = harness.browser
new_page = harness.new_page
PHONE = harness.PHONE
DESKTOP = {"width": 1280, "height": 900}
AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
# Where pages load axe from: the browser answers it from AXE (`axe_serve`), the site does not. A script from the
# page's own origin passes the Content-Security-Policy (script-src 'self'), which refuses an inline one
# (`add_script_tag(path=...)`), so the walk keeps the policy on.
AXE_URL = "/__tests__/axe.min.js"
BLOCKING_IMPACTS = ("serious", "critical")
# Pages whose content a script draws after the load event: measured once this selector is there.
RENDERED_BY_SCRIPT = {reverse("api_docs"): "#swagger-ui .opblock"}
LANGUAGES = {"en": "en-US", "pt-br": "pt-BR"}
# A conversation's title as the sidebar lists it: long, on one line.
LONG_TITLE = "Onboarding plan for the new team members who join us in January, with checklists"
CNPJ = "05525406000101"  # DBONE's, from tests/checks_reports.py
ANSWER = """Here is a plan, with a long identifier: `prumo_customer_onboarding_checklist_for_new_organizations`.

| Step | Who | When |
| --- | --- | --- |
| Invite the team | an admin | day one |

```python
def onboarding_checklist_for_a_new_organization_with_a_very_long_name(organization_identifier):
    return organization_identifier
```
"""


# ---------------------------------------------------------------- content


def content_create(world) -> dict:
    """A thread with a question and its answer, a monitored company with two reports and an alert, and a
    finished bulk batch, committed in org A."""
    from chat.models import Message, Thread
    from checks.models import Alert, Batch, Target
    from checks.services import alert_terms, report_write

    org, owner = world["a"]["org"], world["a"]["owner"]
    with schema_context(org.schema_name):
        thread = Thread.objects.create(user=owner, model_id=DEMO, title=LONG_TITLE)
        Message.objects.create(thread=thread, role=Message.Role.USER, content="How do we onboard the team?")
        Message.objects.create(thread=thread, role=Message.Role.ASSISTANT, content=ANSWER, model_id=DEMO,
                               served_model_id=DEMO, input_tokens=12, output_tokens=80)
        target = Target.objects.create(cnpj=CNPJ, label="Juice supplier", created_by=owner)
        first = report_write(target=target, check=None, record=dbone_report(), provider="cnpjws")
        closed = {**dbone_report(), "situacao": {"code": 8, "label": "BAIXADA", "since": "2026-10-01", "motivo": None}}
        second = report_write(target=target, check=None, record=closed, provider="brasilapi")
        kinds, summary = alert_terms(previous_data=first.data, previous_level=first.risk_level, data=second.data,
                                     level=second.risk_level)
        Alert.objects.create(target=target, report=second, previous_report=first, kinds=kinds, summary=summary)
        batch = Batch.objects.create(filename="suppliers.csv", status=Batch.Status.DONE, rows=1, total=0,
                                     cnpjs=[CNPJ], created_by=owner)
    return {"thread": thread.pk, "target": target.pk, "report": second.pk, "batch": batch.pk}


def content_remove(world, made: dict) -> None:
    from checks.models import Batch, Target

    org = world["a"]["org"]
    threads_remove(org, [made["thread"]])
    with schema_context(org.schema_name):
        Target.objects.filter(pk=made["target"]).delete()
        Batch.objects.filter(pk=made["batch"]).delete()


@pytest.fixture(scope="module")
def content(tenant_world, django_db_blocker):
    with django_db_blocker.unblock():
        made = in_thread(lambda: content_create(tenant_world))
    yield made
    with django_db_blocker.unblock():
        in_thread(lambda: content_remove(tenant_world, made))


@pytest.fixture
def owner_language(tenant_world, django_db_blocker):
    """`owner_language(code)`: org A's owner reads the site in `code` (a saved language wins over the browser's);
    the saved language is put back after the test."""
    from accounts.models import User

    owner = tenant_world["a"]["owner"]

    def saved_language(code: str | None = None) -> str:
        language = User.objects.get(pk=owner.pk).language
        if code is not None:
            User.objects.filter(pk=owner.pk).update(language=code)
        return language

    def choose(code: str) -> None:
        with django_db_blocker.unblock():
            in_thread(lambda: saved_language(code))

    with django_db_blocker.unblock():
        before = in_thread(saved_language)
    yield choose
    choose(before)


@pytest.fixture
def thread_of_owner(tenant_world, django_db_blocker, celery_worker_process):
    """A committed thread of org A's owner with one exchange on the demo model; removed (with its usage) after."""
    from chat.models import Message, Thread

    org, owner = tenant_world["a"]["org"], tenant_world["a"]["owner"]

    def create() -> int:
        with schema_context(org.schema_name):
            thread = Thread.objects.create(user=owner, model_id=DEMO, title="Keyboard only")
            Message.objects.create(thread=thread, role=Message.Role.USER, content="Hello?")
            Message.objects.create(thread=thread, role=Message.Role.ASSISTANT, content="Hello!", model_id=DEMO)
            return thread.pk

    with django_db_blocker.unblock():
        thread_id = in_thread(create)
    yield thread_id
    with django_db_blocker.unblock():
        in_thread(lambda: threads_remove(org, [thread_id]))


def anonymous_urls() -> list[str]:
    return [reverse(name) for name in ("landing", "pricing", "trial", "account_login", "account_signup")]


def member_urls(made: dict) -> list[str]:
    slug = "org-a"
    target, report = {"target_id": made["target"]}, {"report_id": made["report"]}
    urls = [reverse(name) for name in ("landing", "pricing", "org_list", "org_create", "api_docs", "account_profile",
                                       "account_email", "mfa_index", "usersessions_list")]
    urls += [reverse(name, kwargs={"org_slug": slug}) for name in (
        "dashboard", "chat_home", "checks_home", "checks_bulk", "checks_alerts", "checks_settings", "billing_home",
        "billing_usage", "org_settings", "members", "provider_keys", "api_keys", "audit_log")]
    urls += [
        reverse("chat_thread", kwargs={"org_slug": slug, "thread_id": made["thread"]}),
        reverse("checks_target", kwargs={"org_slug": slug, **target}),
        reverse("checks_target_diff", kwargs={"org_slug": slug, **target}),
        reverse("checks_report", kwargs={"org_slug": slug, **report}),
        reverse("checks_report_print", kwargs={"org_slug": slug, **report}),
        reverse("checks_batch", kwargs={"org_slug": slug, "batch_id": made["batch"]}),
    ]
    return urls


# ---------------------------------------------------------------- checks of one page


def axe_serve(page) -> None:
    page.route(f"**{AXE_URL}", lambda route: route.fulfill(path=AXE, content_type="text/javascript"))


def axe_violations(page) -> list[str]:
    """axe-core's serious and critical violations on the page, one line each: id, impact, targets."""
    page.add_script_tag(url=AXE_URL)
    violations = page.evaluate("async () => (await axe.run(document)).violations")
    return [f"{violation['id']} ({violation['impact']}): {[node['target'] for node in violation['nodes']]}"
            for violation in violations if violation["impact"] in BLOCKING_IMPACTS]


def page_problems(page, url: str) -> list[str]:
    """What is wrong with `url`: a status other than 200 or a redirect, no stylesheet, a sideways scroll at 375 px
    (menus closed and open), axe's violations (at 375 px, and at 1280 px with the menus open)."""
    page.set_viewport_size(PHONE)
    response = page.goto(url)
    page.wait_for_load_state("load")
    if url in RENDERED_BY_SCRIPT:
        page.locator(RENDERED_BY_SCRIPT[url]).first.wait_for()
    if response is None or response.status != 200 or urlsplit(page.url).path != url:
        return [f"{url}: status {response.status if response else None} at {page.url}"]
    problems = []
    width, styled = page.evaluate("""() => [document.documentElement.scrollWidth,
        [...document.styleSheets].some((sheet) => sheet.href && sheet.cssRules.length > 0)]""")
    if not styled:
        problems.append(f"{url}: no stylesheet, nothing to measure")
    if width > PHONE["width"]:
        problems.append(f"{url}: {width} px wide at {PHONE['width']} px")
    problems += [f"{url} at {PHONE['width']} px: {line}" for line in axe_violations(page)]
    # Open every menu and disclosure: they fit too, and axe checks the controls they hold (rename, edit, account).
    page.evaluate("document.querySelectorAll('details').forEach((details) => { details.open = true; })")
    width = page.evaluate("document.documentElement.scrollWidth")
    if width > PHONE["width"]:
        problems.append(f"{url}: {width} px wide at {PHONE['width']} px with its menus open")
    page.set_viewport_size(DESKTOP)
    problems += [f"{url} at {DESKTOP['width']} px: {line}" for line in axe_violations(page)]
    return problems


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_page_fits_a_phone_and_has_no_serious_accessibility_violation(
        language, new_page, content, owner_language):
    owner_language(language)
    page = new_page(locale=LANGUAGES[language], viewport=PHONE)
    axe_serve(page)
    problems = []
    page.on("console", lambda message: "Content Security Policy" in message.text
            and problems.append(f"{page.url}: {message.text}"))
    for url in anonymous_urls():
        problems += page_problems(page, url)
    assert page.locator("html").get_attribute("lang") == language
    page.set_viewport_size(PHONE)
    sign_in(page)
    for url in member_urls(content):
        problems += page_problems(page, url)
    assert page.locator("html").get_attribute("lang") == language
    assert problems == [], "\n".join(problems)


def tab_until(page, selector: str, *, key: str = "Tab", limit: int = 60) -> int:
    """Press `key` until the focused element matches `selector`; how many presses it took."""
    for presses in range(1, limit + 1):
        page.keyboard.press(key)
        if page.evaluate("(selector) => document.activeElement.matches(selector)", selector):
            return presses
    focused = page.evaluate("document.activeElement.outerHTML.slice(0, 200)")
    raise AssertionError(f"{key} never reached {selector} in {limit} presses; focus is on {focused}")


def test_the_organization_menu_folds_on_a_phone_and_opens_from_the_keyboard(new_page, tenant_world):
    from playwright.sync_api import expect

    page = new_page(viewport=PHONE)
    sign_in(page)
    page.goto(reverse("dashboard", kwargs={"org_slug": "org-a"}))
    menu, links = page.locator("nav.orgnav summary"), page.locator("nav.orgnav a")
    expect(menu).to_be_visible()
    expect(links).to_have_count(5)
    for n in range(5):
        expect(links.nth(n)).to_be_hidden()

    tab_until(page, "nav.orgnav summary")
    outline = menu.evaluate("(node) => getComputedStyle(node).outlineStyle + ' ' + getComputedStyle(node).outlineWidth")
    assert outline.split()[0] != "none" and float(outline.split()[1].removesuffix("px")) >= 2, (
        f"no visible focus on the menu: outline {outline}")
    page.keyboard.press("Enter")
    for n in range(5):
        expect(links.nth(n)).to_be_visible()
    expect(page.locator("nav.orgnav a[aria-current=page]")).to_have_text("Dashboard")
    tab_until(page, "nav.orgnav a[href$='/chat/']")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.endswith("/o/org-a/chat/")

    page.set_viewport_size(DESKTOP)  # a wide screen keeps the tabs, menu closed or not
    page.reload()
    expect(menu).to_be_hidden()
    for n in range(5):
        expect(links.nth(n)).to_be_visible()
    expect(page.locator("nav.orgnav a[aria-current=page]")).to_have_text("Chat")


def test_the_chat_composer_works_from_the_keyboard_alone(new_page, thread_of_owner, tenant_world, django_db_blocker):
    from playwright.sync_api import expect

    from chat.models import Message

    page = new_page()
    sign_in(page)
    page.goto(reverse("chat_thread", kwargs={"org_slug": "org-a", "thread_id": thread_of_owner}))
    page.evaluate("document.activeElement.blur()")  # the composer has autofocus: start from the top instead
    tab_until(page, "#composer-input")
    question = f"Can I ask without a mouse? {uuid.uuid4().hex[:8]}"
    page.keyboard.type(question)
    page.keyboard.press("Enter")

    streaming = page.locator("article.msg-assistant[data-stream-url]")
    expect(streaming).to_have_count(1)
    answer_id = int(streaming.get_attribute("id").removeprefix("message-"))
    expect(page.locator("#composer-input")).to_have_value("")
    # While the answer is written, Stop is a few Shift+Tabs back from the composer, Send a few Tabs ahead.
    page.locator("#composer-input").focus()
    tab_until(page, f"#message-{answer_id} [data-stop]", key="Shift+Tab", limit=15)
    page.locator("#composer-input").focus()
    tab_until(page, "#composer [data-testid=send]", limit=6)

    answer = page.locator(f"#message-{answer_id}.status-complete")
    expect(answer).to_have_count(1, timeout=ANSWER_TIMEOUT_MS)
    expect(answer).to_contain_text(question)  # the demo model quotes the question
    org = tenant_world["a"]["org"]

    def saved() -> Message:
        with schema_context(org.schema_name):
            return Message.objects.get(pk=answer_id)

    with django_db_blocker.unblock():
        message = in_thread(saved)
    assert message.thread_id == thread_of_owner
    assert (message.status, message.content) == ("complete", expected_answer(question))
