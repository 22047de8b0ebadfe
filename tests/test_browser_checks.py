"""Checks in a real browser against the production-style server and a real Celery worker, both pointed at
the local fake registries: add a CNPJ, watch the live progress (the registries rate-limited at first) turn
into the report without a reload; and the same on a phone.

Chromium is Debian's, driven by Playwright (the harness of tests/test_browser.py). This module starts its own
web server and worker (tests/servers.py) because they need the fake registries' address in their environment.
The server and worker commit; `org_a_funded` gives org A credits for the test and removes what it made after.
"""

from __future__ import annotations

import re
import uuid
from decimal import Decimal

import pytest
from django_tenants.utils import schema_context

from . import test_browser as harness
from .fake_registries import PROVIDERS, RATE_LIMIT, TIMEOUT, FakeRegistries
from .orgs import checks_months, checks_months_restore
from .servers import in_thread, start_celery_worker, start_live_server
from .test_checks_pages import redis_forget

pytestmark = pytest.mark.browser

browser = harness.browser
PHONE = harness.PHONE
SLUG = "org-a"
EMAIL = "owner-a@example.com"
PASSWORD = "correct-horse-battery"
FOUND = "19131243000197"  # cnpj.ws: 404; BrasilAPI: OPEN KNOWLEDGE BRASIL
REPORT_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def registries():
    with FakeRegistries() as server:
        yield server


@pytest.fixture(scope="module")
def checks_server(test_database_url, redis_url, tmp_path_factory, registries):
    """A web server and a Celery worker that ask the fake registries, with no rate limit of our own."""
    prefix = f"checks-browser-{uuid.uuid4().hex[:12]}"
    # A queue of its own: the session's other worker (not pointed at these fakes) must not take the checks.
    env = {**registries.settings(), **{f"{provider.upper()}_RATE_LIMIT": "" for provider in PROVIDERS},
           "CHECKS_REDIS_PREFIX": prefix, "CHECKS_CONNECT_TIMEOUT": "2", "CHECKS_READ_TIMEOUT": "6",
           "CHECKS_QUEUE": prefix}
    web = start_live_server(database_url=test_database_url, redis_url=redis_url,
                            workdir=tmp_path_factory.mktemp("checks-web"), env_extra=env)
    try:
        worker = start_celery_worker(database_url=test_database_url, redis_url=redis_url,
                                     workdir=tmp_path_factory.mktemp("checks-worker"), email_dir=web.email_dir,
                                     site_url=web.url, env_extra=env, queues=prefix)
    except BaseException:
        web.process.stop()
        raise
    yield web
    worker.process.stop()
    web.process.stop()
    redis_forget(prefix)  # the servers use the test settings' Redis, as this process does


@pytest.fixture
def new_page(request, browser, checks_server, tmp_path_factory):
    """`new_page(viewport=...)`: a page on `checks_server` (see the harness's `browser_pages`)."""
    with harness.browser_pages(request, browser, checks_server.url, tmp_path_factory) as make:
        yield make


def _remove_checks(org) -> None:
    from billing.models import CreditEntry, CreditReservation, UsageEvent
    from checks.models import Check, Target

    with schema_context(org.schema_name):
        keys = list(Check.objects.filter(target__cnpj=FOUND).values_list("billing_key", flat=True))
        Target.objects.filter(cnpj=FOUND).delete()
    UsageEvent.objects.filter(organization=org, request_id__in=keys).delete()
    for key in keys:
        CreditEntry.objects.filter(organization=org, idempotency_key__startswith=key).delete()
    CreditReservation.objects.filter(key__in=keys).delete()


@pytest.fixture
def org_a_funded(tenant_world, django_db_blocker, registries):
    """Org A on Starter with 500 credits for the test; its plan, balance, checks' records and monthly checks
    count restored after."""
    from billing.models import BillingAccount, Plan

    org = tenant_world["a"]["org"]

    def fund():
        _remove_checks(org)
        account = BillingAccount.objects.get(pk=org.pk)
        BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code="starter"),
                                                       credits=Decimal("500"))
        return account.plan_id, account.credits, checks_months(org)

    def restore(saved):
        _remove_checks(org)
        BillingAccount.objects.filter(pk=org.pk).update(plan_id=saved[0], credits=saved[1])
        checks_months_restore(org, saved[2])

    with django_db_blocker.unblock():
        saved = in_thread(fund)
    registries.reset()
    yield org
    registries.reset()
    with django_db_blocker.unblock():
        in_thread(lambda: restore(saved))


def sign_in(page) -> None:
    harness.sign_in(page, EMAIL, PASSWORD)


def add_company(page, cnpj: str, *, label: str = "", refresh: bool = False) -> None:
    page.goto(f"/o/{SLUG}/checks/")
    form = page.get_by_test_id("add-form")
    form.get_by_label("CNPJ").fill(cnpj)
    if label:
        form.get_by_label("Label").fill(label)
    if refresh:
        form.get_by_label("Refresh (bypass the cache)").check()
    with page.expect_navigation(url=re.compile(rf"/o/{SLUG}/checks/targets/\d+/$")):
        form.get_by_role("button", name="Check company").click()


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_a_rate_limited_check_becomes_a_report_without_a_reload(new_page, org_a_funded, registries):
    from playwright.sync_api import expect

    for provider in PROVIDERS:
        registries.fail(provider, RATE_LIMIT, retry_after=3)
    page = new_page()
    sign_in(page)
    add_company(page, "19.131.243/0001-97", label="Browser supplier")
    page.evaluate("window.__sameDocument = true")
    target_url = page.url

    progress = page.get_by_test_id("check-progress")
    expect(progress.get_by_test_id("throttled")).to_contain_text("Waiting for the registries' rate limit")
    expect(progress.locator("tr[data-outcome=rate_limited]")).to_have_count(len(PROVIDERS))

    expect(page.get_by_test_id("latest-company")).to_have_text("OPEN KNOWLEDGE BRASIL", timeout=REPORT_TIMEOUT_MS)
    expect(progress).to_have_attribute("data-status", "succeeded")
    expect(progress).not_to_have_attribute("hx-trigger", re.compile("."))
    expect(progress.locator("tr[data-outcome=found]")).to_have_count(1)
    expect(page.get_by_test_id("target-badges").locator("[data-status=succeeded]")).to_be_visible()
    expect(page.get_by_test_id("history").locator("[data-testid=history-row]")).to_have_count(1)
    assert page.evaluate("window.__sameDocument === true") and page.url == target_url  # no reload happened

    with page.expect_navigation():
        page.get_by_test_id("full-report").click()
    expect(page.get_by_test_id("report-name")).to_have_text("OPEN KNOWLEDGE BRASIL")
    expect(page.get_by_test_id("partner-document")).to_have_text("***112108**")
    expect(page.locator("[data-testid=signals] [data-code=QSA_UNICO]")).to_contain_text("Single partner")
    expect(page.get_by_test_id("provider")).to_have_text("BrasilAPI")


def test_on_a_phone_the_progress_and_the_report_fit_the_screen(new_page, org_a_funded, registries):
    from playwright.sync_api import expect

    registries.fail("cnpjws", TIMEOUT, hang=2)  # cnpj.ws hangs, then BrasilAPI answers
    page = new_page(viewport=PHONE)
    sign_in(page)
    page.goto(f"/o/{SLUG}/checks/")
    assert no_horizontal_scroll(page)
    add_company(page, FOUND, refresh=True)
    page.evaluate("window.__sameDocument = true")

    progress = page.get_by_test_id("check-progress")
    expect(progress).to_have_attribute("data-status", re.compile("pending|running"))
    assert no_horizontal_scroll(page)
    expect(page.get_by_test_id("latest-company")).to_have_text("OPEN KNOWLEDGE BRASIL", timeout=REPORT_TIMEOUT_MS)
    expect(progress).to_have_attribute("data-status", "succeeded")
    assert page.evaluate("window.__sameDocument === true")
    assert no_horizontal_scroll(page)

    with page.expect_navigation():
        page.get_by_test_id("full-report").click()
    expect(page.get_by_test_id("partner-document")).to_be_visible()
    assert no_horizontal_scroll(page)
    box = page.get_by_test_id("partners").bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
