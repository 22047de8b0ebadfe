"""A new visitor, in a real browser against the production-style server: sign up, verify the
email with the emailed code, create an organization, land on its dashboard.

Chromium is Debian's (/usr/bin/chromium), driven by Playwright's sync API. Everything the
visitor creates is committed by the server; the `visitors` fixture removes it afterwards.
"""

from __future__ import annotations

import re
import uuid
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.utils import translation
from django.utils.text import slugify

from .servers import body_text, in_thread

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
PASSWORD = "a-long-Passphrase-for-tests-42"
PHONE = {"width": 375, "height": 740}
TIMEOUT_MS = 15_000
# allauth's codes look like `ABCD-EFGH`, alone on their line.
CODE_LINE = re.compile(r"^\s*([A-Z0-9]{2,}(?:-[A-Z0-9]{2,})+|[A-Z0-9]{6,})\s*$", re.MULTILINE)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser():
    """One Chromium for this module; stopped before other modules run (see `in_thread`)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package to run browser tests")
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


@contextmanager
def browser_pages(request, browser, base_url: str, tmp_path_factory):
    """Yields `make(locale=..., viewport=..., **context options)`: a page in a fresh context on `base_url`.

    On failure each page's screenshot is saved; at the end, any Content Security Policy violation a page
    logged fails the test, unless the page was made with `csp_reports_expected=True` (a test that feeds
    hostile HTML to the browser on purpose).
    """
    contexts, console_errors = [], []

    def make(*, locale: str = "en-US", viewport: dict | None = None, csp_reports_expected: bool = False,
             **options):
        context = browser.new_context(base_url=base_url, locale=locale,
                                      viewport=viewport or {"width": 1280, "height": 900}, **options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        if not csp_reports_expected:
            page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
        return page

    yield make
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        shots = tmp_path_factory.mktemp("screenshots")
        for n, context in enumerate(contexts):
            for m, page in enumerate(context.pages):
                path = shots / f"{request.node.name}-{n}-{m}.png".replace("/", "_")
                try:
                    page.screenshot(path=str(path), full_page=True)
                    print(f"screenshot of {page.url}: {path}")
                except Exception as exc:  # a crashed page must not hide the real failure
                    print(f"no screenshot of {page.url}: {exc!r}")
    for context in contexts:
        context.close()
    assert [error for error in console_errors if "Content Security Policy" in error] == []


@pytest.fixture
def new_page(request, browser, live_server_process, tmp_path_factory):
    """`new_page(locale=..., viewport=..., color_scheme=...)`: a page on the live server (see `browser_pages`)."""
    with browser_pages(request, browser, live_server_process.url, tmp_path_factory) as make:
        yield make


def sign_in(page, email: str, password: str) -> None:
    """Sign in through the login form (the page stays on wherever the login redirects)."""
    page.goto("/accounts/login/")
    form = page.locator("main form").filter(has=page.locator("input[name=password]"))
    form.locator("input[name=login]").fill(email)
    form.locator("input[name=password]").fill(password)
    with page.expect_navigation():
        form.locator("button[type=submit]").first.click()
    assert urlsplit(page.url).path != "/accounts/login/", f"not signed in: {page.url}"


@pytest.fixture
def visitors(django_db_blocker):
    """Emails of the visitors a test signs up; their users and organizations are removed after."""
    emails: list[str] = []
    yield emails
    if emails:
        with django_db_blocker.unblock():
            in_thread(lambda: remove_visitors(emails))


def remove_visitors(emails: list[str]) -> None:
    from django.db import connection, transaction

    from accounts.models import User
    from tenants.models import Organization

    for user in User.objects.filter(email__in=[e.lower() for e in emails]):
        with transaction.atomic():
            for org in Organization.objects.filter(memberships__user=user).distinct():
                if org.schema_name in ("public", ""):
                    continue
                with connection.cursor() as cursor:
                    cursor.execute(f'DROP SCHEMA IF EXISTS "{org.schema_name}" CASCADE')
                org.delete()
            user.delete()


# ---------------------------------------------------------------- steps


def verification_code(server, email: str) -> str:
    message = server.wait_for_email(email, predicate=lambda m: CODE_LINE.search(body_text(m)) is not None)
    return CODE_LINE.search(body_text(message)).group(1)


def switch_language(page, code: str) -> None:
    """Pick a language in the footer select: it submits itself and reloads the page."""
    with page.expect_navigation():
        page.select_option("#language-select", code)
    assert page.locator("html").get_attribute("lang") == code


def sign_up(page, server, email: str) -> None:
    page.goto("/accounts/signup/")
    form = page.locator("main form").filter(has=page.locator("input[name=password1]"))
    form.locator("input[name=email]").fill(email)
    form.locator("input[name=password1]").fill(PASSWORD)
    form.locator("input[name=password2]").fill(PASSWORD)
    with page.expect_navigation():
        form.locator("button[type=submit]").first.click()
    code_input = page.locator("input[name=code]")
    code_input.wait_for()
    code_input.fill(verification_code(server, email))
    with page.expect_navigation():
        page.locator("form").filter(has=code_input).locator("button[type=submit]").first.click()
    assert page.locator("input[name=code]").count() == 0, f"code not accepted at {page.url}"


def create_organization(page, server, name: str) -> str:
    page.goto("/orgs/new/")
    assert urlsplit(page.url).path == "/orgs/new/", f"not signed in: landed on {page.url}"
    form = page.locator("main form").filter(has=page.locator("input[name=name]"))
    form.locator("input[name=name]").fill(name)
    with page.expect_navigation(url=re.compile(r"/o/[-a-z0-9]+/$")):
        form.locator("button[type=submit]").first.click()
    slug = re.fullmatch(r"/o/([-a-z0-9]+)/", urlsplit(page.url).path).group(1)
    assert slug.startswith(slugify(name)), (slug, name)
    assert page.locator("main h1").inner_text().strip() == name
    return slug


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------- tests


def test_visitor_signs_up_and_creates_organization_in_english(new_page, live_server_process, visitors):
    page = new_page(locale="en-US")
    email = f"{unique('visitor')}@example.com"
    visitors.append(email)

    page.goto("/accounts/signup/")
    assert page.locator("html").get_attribute("lang") == "en"
    sign_up(page, live_server_process, email)
    assert page.locator("[data-testid=org-switcher]").is_visible(), f"not signed in at {page.url}"

    name = f"Acme {uuid.uuid4().hex[:8]}"
    slug = create_organization(page, live_server_process, name)
    assert page.url == f"{live_server_process.url}/o/{slug}/"
    assert page.locator("html").get_attribute("lang") == "en"


def test_visitor_signs_up_and_creates_organization_in_portuguese(new_page, live_server_process, visitors):
    with translation.override("pt-br"):
        sign_up_heading = translation.gettext("Sign Up")  # allauth's pt_BR catalog
        dashboard_link = translation.gettext("Dashboard")  # ours: locale/pt_BR
    assert sign_up_heading != "Sign Up", "allauth's pt_BR catalog is not available"
    assert dashboard_link != "Dashboard", "our pt_BR catalog is not compiled"

    page = new_page(locale="en-US")  # the browser asks for English; the visitor picks Portuguese
    email = f"{unique('visitante')}@example.com"
    visitors.append(email)

    page.goto("/accounts/signup/")
    assert page.locator("html").get_attribute("lang") == "en"
    switch_language(page, "pt-br")
    assert urlsplit(page.url).path == "/accounts/signup/"
    assert page.locator("main h1").inner_text().strip() == sign_up_heading

    sign_up(page, live_server_process, email)
    assert page.locator("html").get_attribute("lang") == "pt-br"
    assert page.locator("[data-testid=org-switcher]").is_visible(), f"not signed in at {page.url}"

    name = f"Padaria São João {uuid.uuid4().hex[:8]}"
    slug = create_organization(page, live_server_process, name)
    assert page.url == f"{live_server_process.url}/o/{slug}/"
    assert page.locator("html").get_attribute("lang") == "pt-br"
    assert page.locator("nav.orgnav a[aria-current=page]").inner_text().strip() == dashboard_link


def test_dashboard_fits_a_phone(new_page, live_server_process, visitors):
    page = new_page(locale="en-US", viewport=PHONE)
    email = f"{unique('phone')}@example.com"
    visitors.append(email)

    sign_up(page, live_server_process, email)
    create_organization(page, live_server_process, f"Pocket {uuid.uuid4().hex[:8]}")
    page.wait_for_load_state("load")
    widths = page.evaluate(
        """() => ({
            scroll: document.documentElement.scrollWidth,
            client: document.documentElement.clientWidth,
            styled: [...document.styleSheets].some((sheet) => sheet.href && sheet.cssRules.length > 0),
        })"""
    )
    assert widths["styled"], "the dashboard has no stylesheet: the check would measure an unstyled page"
    assert widths["scroll"] <= PHONE["width"], f"horizontal scroll on a phone: {widths}"
