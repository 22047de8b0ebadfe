"""Fair sharing between organizations (issue 11, item 8).

- One organization's 300-row batch does not hold up another's interactive check: with a real
  web server and Celery worker against the fake registries (tight rate limits, every provider
  busy), B's check is done after a handful of A's checks, while A's batch still has most to go.
- A batch feeds the `checks` queue a slice at a time (the plan's `concurrent_checks`), and
  background lookups yield the registries' windows to an interactive one that waits.
- A check over its organization's cap of checks at once waits (pending, `run_after`), then runs.
- Answers over the plan's cap of answers at once wait their turn: with a real worker (four
  threads), never more than the cap stream at once, and all end complete.
- A member over the plan's chat messages a minute gets 429 with the reason; another member does not;
  in a browser, the thread page shows the reason under the composer.
"""

from __future__ import annotations

import random
import time
import uuid
from decimal import Decimal

import pytest
import requests
from django.utils import timezone
from django_tenants.utils import schema_context

from billing.models import BillingAccount, CreditEntry, CreditReservation, Plan, UsageEvent
from billing.ratelimits import slot_acquire, slot_key, slot_release
from chat.models import Message
from checks import cnpj as cnpj_id
from checks.models import Batch, Check, Report, Target
from checks.registries.limits import rate_limit_acquire, redis_key
from core.redis_clients import redis_client

from .. import test_browser as harness
from ..fake_registries import PROVIDERS, RATE_LIMIT, FakeRegistries
from ..orgs import checks_months, checks_months_restore
from ..servers import in_thread, start_celery_worker, start_live_server
from ..test_celery_worker import csrf_token, sign_in
from ..test_chat_streaming import DEMO, Chat, expected_answer, signed_in, threads_remove  # noqa: F401 (a fixture)
from ..test_checks_bulk import upload

db = pytest.mark.django_db
# test_browser.py's fixtures (one Chromium, screenshots on failure), for the last test of this module.
browser = harness.browser
new_page = harness.new_page
PASSWORD = "correct-horse-battery"
FOUND = "19131243000197"  # cnpj.ws: 404; BrasilAPI and minha-receita: a company
CAP = 4  # the test plan's answers and checks at once
BATCH_ROWS = 300
# Every provider one request a second: A's batch takes minutes, and every window is contested.
TIGHT_LIMITS = dict.fromkeys(PROVIDERS, "1/1")


def _cnpjs(count: int) -> list[str]:
    rng = random.Random(uuid.uuid4().int)
    found: dict[str, None] = {}
    while len(found) < count:
        found[cnpj_id.generate(rng=rng)] = None
    return list(found)


# ---------------------------------------------------------------- in-process (the test's transaction)


@db
def test_a_member_over_the_plans_messages_a_minute_gets_429_and_another_member_does_not(funded, client_for):
    org_a, _ = funded
    Plan.objects.filter(code="starter").update(messages_per_minute=3)
    member, admin = client_for("a", "member"), client_for("a", "admin")
    url = f"/o/{org_a.slug}/chat/new/"
    for n in range(3):
        response = member.post(url, {"content": f"question {n}", "model": DEMO})
        assert response.status_code == 302, response.content[:500]
    refused = member.post(url, {"content": "one too many", "model": DEMO})
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert "faster than your plan allows (3 a minute)" in refused.content.decode()
    assert "one too many" in refused.content.decode()  # the composer keeps the text for the retry
    htmx = member.post(url, {"content": "again", "model": DEMO}, HTTP_HX_REQUEST="true")
    assert htmx.status_code == 429 and 'data-testid="composer-error"' in htmx.content.decode()
    assert admin.post(url, {"content": "mine", "model": DEMO}).status_code == 302  # counted per member
    with schema_context(org_a.schema_name):
        from chat.models import Thread

        assert Thread.objects.filter(messages__content="one too many").count() == 0


@db
def test_a_check_over_the_organizations_cap_waits_pending_then_runs(registries, funded):
    from checks.services import check_request, check_run, target_add

    org_a, _ = funded
    Plan.objects.filter(code="starter").update(concurrent_checks=1)
    held = slot_acquire(kind="checks", organization_id=org_a.pk, limit=1, lease_seconds=60)  # a check running
    assert held is not None
    try:
        with schema_context(org_a.schema_name):
            check = check_request(organization=org_a, target=target_add(cnpj=FOUND))
            outcome = check_run(check.pk)
            check.refresh_from_db()
            assert (outcome.status, check.status) == (Check.Status.PENDING, Check.Status.PENDING)
            assert outcome.retry_in and check.run_after > timezone.now()
            assert registries.count("brasilapi") == registries.count("cnpjws") == 0  # nobody was asked
    finally:
        slot_release(held)
    # A worker that died holding the slot stops renewing it: once its lease ended, the slot is free.
    redis_client().zadd(slot_key("checks", org_a.pk), {"dead-worker": time.time() * 1000 - 1})
    with schema_context(org_a.schema_name):
        assert check_run(check.pk).status == Check.Status.SUCCEEDED
        assert Report.objects.filter(check_run=check).exists()
    assert redis_client().zcard(slot_key("checks", org_a.pk)) == 0  # released in `finally`


@db
def test_a_batch_feeds_the_queue_a_slice_at_a_time(registries, funded, django_capture_on_commit_callbacks):
    from checks.bulk import batch_create
    from checks.services import check_run

    org_a, _ = funded
    Plan.objects.filter(code="starter").update(concurrent_checks=2)
    for provider in PROVIDERS:  # every registry busy: the fed checks go back to pending with run_after
        registries.fail(provider, RATE_LIMIT, retry_after=60, times=1)
    rows = _cnpjs(5)
    with schema_context(org_a.schema_name):
        with django_capture_on_commit_callbacks(execute=True):
            batch = batch_create(organization=org_a, uploaded_file=upload("\n".join(rows)), user=None)
        checks = Check.objects.filter(batch=batch)
        assert checks.count() == 5 and set(checks.values_list("status", flat=True)) == {Check.Status.PENDING}
        fed = list(checks.filter(run_after__isnull=False).order_by("pk"))
        assert len(fed) == 2  # two queued (and throttled); three wait to be fed, not in the queue
        assert checks.filter(run_after__isnull=True).count() == 3
        assert len({r.cnpj for r in registries.requests if r.cnpj}) <= 2  # only the fed ones asked anyone
        for provider in PROVIDERS:  # the registries are free again, the cooldowns over
            redis_client().delete(redis_key(provider, "cooldown"))
        Check.objects.filter(pk=fed[0].pk).update(run_after=timezone.now())
        with django_capture_on_commit_callbacks(execute=True):  # the retry runs; its end feeds the next
            assert check_run(fed[0].pk).status == Check.Status.NOT_FOUND
        # Each end fed the next: the three that waited ran one after another; the other fed one still waits.
        assert checks.filter(status=Check.Status.NOT_FOUND).count() == 4
        assert list(checks.exclude(status=Check.Status.NOT_FOUND)) == [fed[1]]


@db
def test_background_lookups_yield_the_registry_window_to_a_waiting_interactive_one(registries, settings):
    settings.CHECKS_RATE_LIMITS = {**settings.CHECKS_RATE_LIMITS, "cnpjws": "1/60"}
    window = redis_key("cnpjws", "rl", "1-60000")
    assert rate_limit_acquire("cnpjws", background=True) == 0.0  # a batch's lookup takes the window
    assert rate_limit_acquire("cnpjws", waiter="b-check") > 0  # B's interactive check must wait: it queues
    redis_client().delete(window)  # the window passes
    assert rate_limit_acquire("cnpjws", background=True) > 0  # the batch does not take it: B waits
    assert rate_limit_acquire("cnpjws", waiter="b-check") == 0.0  # B gets it, and leaves the waiting set
    redis_client().delete(window)
    assert rate_limit_acquire("cnpjws", background=True) == 0.0  # nobody waits: the batch goes on


# ---------------------------------------------------------------- real processes (committed data)


@pytest.fixture
def fair_plan(tenant_world, django_db_blocker):
    """Orgs A and B on a plan of their own (CAP answers and checks at once, no monthly check quota, 5,000
    credits), committed; afterwards the accounts are restored and what the test's work wrote is removed."""
    orgs = [tenant_world[key]["org"] for key in ("a", "b")]

    def setup():
        plan, _created = Plan.objects.update_or_create(code="fairness-test", defaults={
            "name": "Fairness test", "is_public": False, "model_tiers": ["basic", "standard", "premium"],
            "requests_per_minute": 1000, "tokens_per_minute": 1_000_000, "checks_per_month": None,
            "max_upload_mb": 20, "api_access": True, "audit_retention_days": 30, "concurrent_answers": CAP // 2,
            "concurrent_checks": CAP, "messages_per_minute": 60})
        saved = {org.pk: BillingAccount.objects.values_list("plan_id", "credits").get(pk=org.pk) for org in orgs}
        marks = {model: model.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
                 for model in (CreditEntry, CreditReservation, UsageEvent)}
        tenant_marks = {}
        for org in orgs:
            with schema_context(org.schema_name):
                tenant_marks[org.pk] = {model: model.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
                                        for model in (Report, Check, Batch, Target)}
            tenant_marks[org.pk]["months"] = checks_months(org)
        BillingAccount.objects.filter(pk__in=saved).update(plan=plan, credits=Decimal("5000"))
        return plan, saved, marks, tenant_marks

    def teardown():
        for org in orgs:
            with schema_context(org.schema_name):
                for model in (Report, Check, Batch, Target):
                    model.objects.filter(pk__gt=tenant_marks[org.pk][model]).delete()
            checks_months_restore(org, tenant_marks[org.pk]["months"])
        for model in (CreditEntry, CreditReservation, UsageEvent):
            model.objects.filter(pk__gt=marks[model], organization__in=orgs).delete()
        for pk, (plan_id, credits) in saved.items():
            BillingAccount.objects.filter(pk=pk).update(plan_id=plan_id, credits=credits)
        plan.delete()

    with django_db_blocker.unblock():
        plan, saved, marks, tenant_marks = in_thread(setup)
    yield plan
    with django_db_blocker.unblock():
        in_thread(teardown)


@pytest.fixture
def checks_servers(test_database_url, redis_url, tmp_path_factory):
    """A web server and a Celery worker (a queue of their own) against fake registries with tight limits."""
    prefix = f"checks-fair-{uuid.uuid4().hex[:12]}"
    with FakeRegistries() as fake:
        env = {**fake.settings(), **{f"{p.upper()}_RATE_LIMIT": TIGHT_LIMITS[p] for p in PROVIDERS},
               "CHECKS_REDIS_PREFIX": prefix, "CHECKS_QUEUE": prefix, "CHECKS_CONNECT_TIMEOUT": "2",
               "CHECKS_READ_TIMEOUT": "5"}
        web = start_live_server(database_url=test_database_url, redis_url=redis_url,
                                workdir=tmp_path_factory.mktemp("fair-web"), env_extra=env)
        try:
            worker = start_celery_worker(database_url=test_database_url, redis_url=redis_url,
                                         workdir=tmp_path_factory.mktemp("fair-worker"), email_dir=web.email_dir,
                                         site_url=web.url, env_extra=env, queues=prefix)
        except BaseException:
            web.process.stop()
            raise
        try:
            yield web, worker, fake
        finally:
            worker.process.stop()
            web.process.stop()
            keys = list(redis_client().scan_iter(match=f"{prefix}*", count=500))
            if keys:
                redis_client().delete(*keys)


def _post(session: requests.Session, base: str, page: str, url: str, **kwargs) -> requests.Response:
    token = csrf_token(session, f"{base}{page}")
    data = {"csrfmiddlewaretoken": token, **kwargs.pop("data", {})}
    return session.post(f"{base}{url}", data=data, headers={"Referer": f"{base}{page}"}, allow_redirects=False,
                        timeout=30, **kwargs)


def _wait(condition, *, timeout: float, what: str, log=None):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout}s" + (f"\n{log()[-6000:]}" if log else ""))
        time.sleep(0.2)


@pytest.mark.slow
def test_an_interactive_check_of_b_finishes_while_as_large_batch_runs(fair_plan, checks_servers, tenant_world,
                                                                     django_db_blocker):
    web, worker, _fake = checks_servers
    org_a, org_b = tenant_world["a"]["org"], tenant_world["b"]["org"]
    a = sign_in(web.url, "owner-a@example.com", PASSWORD)
    b = sign_in(web.url, "owner-b@example.com", PASSWORD)

    bulk = f"/o/{org_a.slug}/checks/bulk/"
    response = _post(a, web.url, bulk, bulk, files={"file": ("fair.csv", "\n".join(_cnpjs(BATCH_ROWS)).encode())})
    assert response.status_code == 302, response.text[:2000]
    batch_id = int(response.headers["Location"].rstrip("/").rsplit("/", 1)[1])

    def a_counts() -> dict[str, int]:
        with django_db_blocker.unblock(), schema_context(org_a.schema_name):
            checks = Check.objects.filter(batch_id=batch_id)
            return {"created": checks.count(), "done": checks.filter(status__in=Check.FINAL).count()}
    # A's batch is at work: every check requested, the first ones done (the registries' windows all in use).
    _wait(lambda: a_counts()["created"] == BATCH_ROWS and a_counts()["done"] >= 3, timeout=180,
          what="A's batch under way", log=worker.process.log)
    before = a_counts()["done"]
    with django_db_blocker.unblock(), schema_context(org_b.schema_name):
        b_mark = Check.objects.order_by("-pk").values_list("pk", flat=True).first() or 0

    home = f"/o/{org_b.slug}/checks/"
    response = _post(b, web.url, home, f"/o/{org_b.slug}/checks/targets/new/",
                     data={"cnpj": FOUND, "label": "B asks", "schedule": "none"})
    assert response.status_code == 302, response.text[:2000]

    def b_check():
        with django_db_blocker.unblock(), schema_context(org_b.schema_name):
            check = Check.objects.filter(target__cnpj=FOUND, pk__gt=b_mark).first()
            return check if check is not None and check.is_final else None

    done = _wait(b_check, timeout=90, what="B's interactive check", log=worker.process.log)
    with django_db_blocker.unblock():
        with schema_context(org_b.schema_name):
            assert done.status == Check.Status.SUCCEEDED and Report.objects.filter(check_run=done).exists()
        with schema_context(org_a.schema_name):
            batch = Batch.objects.get(pk=batch_id)
            a_checks = Check.objects.filter(batch=batch)
            a_done_by_then = a_checks.filter(status__in=Check.FINAL, finished_at__lte=done.finished_at).count()
            a_left = a_checks.exclude(status__in=Check.FINAL).count()
    assert batch.status == Batch.Status.RUNNING and a_left > BATCH_ROWS // 2  # A's batch is far from done
    # B waited behind a handful of A's checks (its slice), not behind the batch.
    assert a_done_by_then - before <= 3 * CAP, (before, a_done_by_then)
    response = _post(a, web.url, f"{bulk}{batch.pk}/", f"{bulk}{batch.pk}/cancel/")
    assert response.status_code == 302


@pytest.fixture
def chat(live_server_process, celery_worker_process, tenant_world, signed_in, django_db_blocker):  # noqa: F811
    """owner-a asking the demo model through the session's live server and worker (tests.test_chat_streaming)."""
    helper = Chat(live_server_process, signed_in, tenant_world["a"]["org"], tenant_world["a"]["owner"],
                  django_db_blocker)
    yield helper
    helper.close()


@pytest.mark.slow
def test_answers_over_the_plans_cap_wait_their_turn_and_all_complete(fair_plan, chat):
    cap = fair_plan.concurrent_answers
    asked = [chat.ask() for _ in range(cap + 3)]  # more than the cap, and more than the worker's 4 threads
    ids = [one.answer_id for one in asked]
    peak = waiting_seen = 0
    deadline = time.monotonic() + 120
    while True:
        statuses = chat.db(lambda: list(Message.objects.filter(pk__in=ids).values_list("status", flat=True)))
        streaming = statuses.count(Message.Status.STREAMING)
        peak = max(peak, streaming)
        if streaming == cap and Message.Status.PENDING in statuses:
            waiting_seen += 1
        if not any(status in Message.ACTIVE for status in statuses):
            break
        assert time.monotonic() < deadline, f"answers still running: {statuses}"
        time.sleep(0.05)
    assert peak == cap  # the cap was reached, never passed
    assert waiting_seen  # while the cap was full, the others waited (pending), neither failed nor refused
    for one in asked:
        answer = chat.message(one.answer_id)
        assert answer.status == Message.Status.COMPLETE and answer.content == expected_answer(one.question)


@pytest.mark.browser
def test_the_thread_page_shows_why_a_send_over_the_limit_was_refused(fair_plan, new_page, celery_worker_process,
                                                                   tenant_world, django_db_blocker):
    """Last in this module: Playwright's event loop stays in the main thread until the module ends."""
    from playwright.sync_api import expect

    from ..test_browser_chat import ask
    from ..test_browser_chat import sign_in as browser_sign_in

    with django_db_blocker.unblock():
        in_thread(lambda: Plan.objects.filter(pk=fair_plan.pk).update(messages_per_minute=1))
    threads: list[int] = []
    try:
        page = new_page()
        browser_sign_in(page)
        ask(page, threads, f"The one message this minute {uuid.uuid4().hex[:8]}")
        page.locator("#composer-input").fill("And one more")
        page.locator("#composer-input").press("Enter")  # htmx: 429, swapped in by chat.js
        error = page.get_by_test_id("composer-error")
        expect(error).to_contain_text("faster than your plan allows (1 a minute)")
        expect(page.locator("#composer-input")).to_have_value("And one more")
    finally:
        with django_db_blocker.unblock():
            in_thread(lambda: threads_remove(tenant_world["a"]["org"], threads))
