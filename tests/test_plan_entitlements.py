"""Plans enforce what they sell (issue 14, item 8).

Every entitlement of `billing.selectors.Entitlements` (what code gates on, copied from `Plan`) has a gate
check in GATES, run on every plan in the database with that plan's own value: a request at the limit is
refused, one under it passes. Adding an entitlement (or a Plan field that is neither an entitlement nor
catalogue text) without a gate here fails `test_every_entitlement_has_a_gate`; the /pricing card may only
show fields that are gated (`test_the_pricing_card_sells_only_gated_entitlements`).
"""

from __future__ import annotations

import dataclasses
import random
import re
import uuid
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone
from django_tenants.utils import schema_context

from billing.ledger import credit_grant
from billing.models import BillingAccount, CreditEntry, MeterReport, Plan
from billing.ratelimits import rate_limit_keys, send_limited, slot_acquire, slot_key, slot_release
from billing.selectors import Entitlements
from billing.services import credits_grant_monthly
from billing.tasks import meter_reports_run
from billing.usage import usage_cost, usage_record
from chat import generation
from chat.catalog.models import Tier
from chat.catalog.selectors import model_options
from chat.models import Message, Thread
from chat.snapshot import org_config_bump, org_config_forget
from checks import cnpj as cnpj_id
from checks.models import Check, ChecksMonth
from checks.services import check_run, month_of
from core.redis_clients import redis_client
from tenants.api_keys import api_key_create
from tenants.audit.services import Actor
from tenants.models import Invitation, Role, invitation_token_hash
from tenants.services import organization_create

from .fake_llm import Answer, FakeOpenAI
from .orgs import organization_drop
from .security.inprocess_v1 import openai_at, post
from .test_chat import providers  # noqa: F401 (a fixture, asked for by name)

MB = 1024 * 1024
DEMO = "demo/prumo-demo"
CHEAP = "openai/gpt-4.1-mini"
TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "billing"
# Plan fields that describe the plan in the catalogue, not what it allows.
CATALOGUE_FIELDS = {"id", "code", "name", "description", "monthly_price_cents", "currency", "stripe_price_id",
                    "is_public", "sort_order"}
# What the pricing card may show besides entitlements: its name, price and description.
CARD_DISPLAY = {"code", "name", "description", "monthly_price_cents", "monthly_price", "currency"}
# Uploads this large are sent for real; a plan allowing more is shown to take a file over every smaller limit.
UPLOAD_SENT_MAX_MB = 20


def entitlement_names() -> set[str]:
    return {field.name for field in dataclasses.fields(Entitlements)} - {"plan_code"}


def plans() -> list[Plan]:
    plans = list(Plan.objects.order_by("sort_order", "pk"))
    assert len(plans) >= 5, "the seeded plans"
    return plans


def plan_use(org, plan: Plan) -> None:
    BillingAccount.objects.filter(pk=org.pk).update(plan=plan)
    org_config_forget()  # this process's snapshot of the organization read the previous plan


def sends_forget() -> None:
    keys = list(redis_client().scan_iter(match="rl:send:*", count=500))
    if keys:
        redis_client().delete(*keys)


def rate_counters_reset(org) -> None:
    redis_client().delete(*rate_limit_keys(org.pk, 0), "rl:ip:127.0.0.1")


def fund(org, credits: str = "1000000") -> None:
    credit_grant(organization=org, amount=Decimal(credits), key=f"tests:{uuid.uuid4().hex}")


def new_cnpj() -> str:
    return cnpj_id.generate(rng=random.Random(uuid.uuid4().int))


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


# ---------------------------------------------------------------- the gates, one per entitlement


def seats_gate_check(request) -> None:
    """Invitations on the members page: members + pending invitations up to the plan's seats, then refused."""
    request.getfixturevalue("db")
    owner = request.getfixturevalue("tenant_world")["a"]["owner"]
    org = organization_create(user=owner, name=f"Seats {uuid.uuid4().hex[:6]}", actor=Actor.system("tests"))
    client = signed_in(owner)
    for plan in plans():
        plan_use(org, plan)
        Invitation.objects.filter(organization=org).delete()
        # All but one seat taken: the owner and pending invitations (sent over an hour ago: the hourly limit
        # of invitations is not what this is about). Unlimited: 150 pending, more than any plan's seats.
        waiting = 150 if plan.seats is None else plan.seats - 2
        Invitation.objects.bulk_create([
            Invitation(organization=org, email=f"waiting-{n}@example.com", role=Role.MEMBER, invited_by=owner,
                       token_hash=invitation_token_hash(uuid.uuid4().hex),
                       expires_at=timezone.now() + timedelta(days=7))
            for n in range(waiting)])
        Invitation.objects.filter(organization=org).update(created_at=timezone.now() - timedelta(hours=2))
        url = f"/o/{org.slug}/settings/members/"
        assert client.post(url, {"email": "last-seat@example.com", "role": "member"}).status_code == 302, plan.code
        refused = client.post(url, {"email": "one-too-many@example.com", "role": "member"})
        if plan.seats is None:
            assert refused.status_code == 302, plan.code
        else:
            assert refused.status_code == 400, plan.code
            assert f"uses all {plan.seats} seats of its plan" in refused.content.decode()
            assert not Invitation.objects.filter(organization=org, email="one-too-many@example.com").exists()


def webhooks_gate_check(request) -> None:
    """The webhooks API: 403 `plan_without_webhooks` on a plan without them, the endpoints listed on one with."""
    request.getfixturevalue("db")
    org_a = request.getfixturevalue("org_a")
    client = request.getfixturevalue("client_for")("a", "admin")
    for plan in plans():
        plan_use(org_a, plan)
        rate_counters_reset(org_a)
        response = client.get("/api/v1/webhooks/", HTTP_X_ORGANIZATION=org_a.slug)
        page = client.post(f"/o/{org_a.slug}/settings/webhooks/", {"url": ""})  # the page's form: nothing valid
        if plan.webhooks:
            assert response.status_code == 200, plan.code
            assert page.status_code == 200, plan.code
        else:
            assert response.status_code == 403 and response.json()["code"] == "plan_without_webhooks", plan.code
            assert page.status_code == 403, plan.code


def _read_key(org_a, tenant_world) -> str:
    return api_key_create(organization=org_a, name=f"gate {uuid.uuid4().hex[:4]}", scopes=["read"],
                          actor=Actor.system(), user=tenant_world["a"]["admin"]).raw


def api_access_gate_check(request) -> None:
    """An API key works only on a plan with API access; otherwise 403 saying so."""
    request.getfixturevalue("db")
    org_a, world = request.getfixturevalue("org_a"), request.getfixturevalue("tenant_world")
    key = _read_key(org_a, world)
    for plan in plans():
        plan_use(org_a, plan)
        rate_counters_reset(org_a)
        response = Client().get("/api/v1/billing/balance/", HTTP_AUTHORIZATION=f"Bearer {key}")
        if plan.api_access:
            assert response.status_code == 200, plan.code
        else:
            assert response.status_code == 403 and "does not include API access" in response.json()["detail"]


def requests_per_minute_gate_check(request) -> None:
    """The API: the plan's requests a minute pass (the window filled to one short of it), the next is 429."""
    request.getfixturevalue("db")
    org_a, world = request.getfixturevalue("org_a"), request.getfixturevalue("tenant_world")
    key = _read_key(org_a, world)
    for plan in plans():
        plan_use(org_a, plan)
        rate_counters_reset(org_a)
        call = lambda: Client().get("/api/v1/billing/balance/", HTTP_AUTHORIZATION=f"Bearer {key}")  # noqa: E731
        if not plan.api_access:
            assert call().status_code == 403, plan.code  # no API, so no requests to count
            continue
        redis_client().set(rate_limit_keys(org_a.pk, 0)[1], plan.requests_per_minute - 1, ex=60)
        last = call()
        assert last.status_code == 200, plan.code
        assert last["x-ratelimit-limit-requests"] == str(plan.requests_per_minute)
        assert last["x-ratelimit-remaining-requests"] == "0"
        over = call()
        assert over.status_code == 429 and over.json()["code"] == "rate_limit_exceeded", plan.code


def tokens_per_minute_gate_check(request) -> None:
    """/v1 (the OpenAI-compatible gateway): a call whose tokens fit in what is left of the plan's tokens a
    minute is answered, one that does not is 429 of type `tokens`. A committed organization: the gateway
    reads on its own connections."""
    blocker = request.getfixturevalue("django_db_blocker")
    settings, monkeypatch = request.getfixturevalue("settings"), request.getfixturevalue("monkeypatch")
    upstream = FakeOpenAI(Answer(["Fits"], input_tokens=5, output_tokens=1)).start()
    body = {"model": CHEAP, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    with blocker.unblock():
        owner = request.getfixturevalue("tenant_world")["a"]["owner"]
        org = organization_create(user=owner, name=f"Tokens {uuid.uuid4().hex[:6]}", actor=Actor.system("tests"))
        fund(org)
        key = api_key_create(organization=org, name="tokens", scopes=["chat"], actor=Actor.system()).raw
        openai_at(settings, upstream.url, monkeypatch)
    try:
        with blocker.unblock():  # the gateway's own reads (snapshots) run on this thread's connections too
            for plan in plans():
                BillingAccount.objects.filter(pk=org.pk).update(plan=plan)
                org_config_bump()
                rate_counters_reset(org)
                if not plan.api_access:
                    refused = post(key, body)
                    assert refused.status_code == 403, plan.code
                    assert refused.json()["error"]["code"] == "plan_without_api_access"
                    continue
                tokens_key = rate_limit_keys(org.pk, 0)[3]
                redis_client().set(tokens_key, plan.tokens_per_minute - 1000, ex=60)
                answered = post(key, body)
                assert answered.status_code == 200, (plan.code, answered.text)
                assert answered.headers["x-ratelimit-limit-tokens"] == str(plan.tokens_per_minute)
                redis_client().set(tokens_key, plan.tokens_per_minute - 10, ex=60)
                over = post(key, body)
                assert over.status_code == 429, (plan.code, over.text)
                assert over.json()["error"]["type"] == "tokens"
    finally:
        upstream.stop()
        rate_counters_reset(org)
        with blocker.unblock():
            organization_drop(org)


def model_tiers_gate_check(request) -> None:
    """Chat: a model of a tier the plan allows starts a conversation; any other tier is refused."""
    request.getfixturevalue("db")
    request.getfixturevalue("providers")
    funded = request.getfixturevalue("funded")
    org_a = funded[0]
    fund(org_a)
    client = request.getfixturevalue("client_for")("a", "member")
    # One usable model (provider configured, priced) of each tier; every tier must have one.
    by_tier = {}
    for option in model_options(entitlements=None, own_keys={}):
        by_tier.setdefault(option.model.tier, option.id)
    assert set(by_tier) >= set(Tier.values), by_tier
    for plan in plans():
        plan_use(org_a, plan)
        sends_forget()
        for tier, model_id in sorted(by_tier.items()):
            response = client.post(f"/o/{org_a.slug}/chat/new/", {"content": f"on {plan.code}", "model": model_id})
            if tier in plan.model_tiers:
                assert response.status_code == 302, (plan.code, tier, response.content.decode()[:500])
            else:
                assert response.status_code == 400, (plan.code, tier)
                assert "This model is not available on your plan" in response.content.decode()


def monthly_credits_gate_check(request) -> None:
    """The monthly grant is the plan's credits, once a period."""
    request.getfixturevalue("db")
    org_a = request.getfixturevalue("org_a")
    for n, plan in enumerate(plans()):
        plan_use(org_a, plan)
        period = f"2099-{n + 1:02d}"  # a period of its own for each plan: a first grant, not an upgrade
        movement = credits_grant_monthly(org_a, period=period)
        grants = CreditEntry.objects.filter(organization=org_a, idempotency_key=f"grant:{org_a.pk}:{period}")
        if plan.monthly_credits:
            assert movement is not None and movement.entry.amount == plan.monthly_credits, plan.code
            assert grants.count() == 1
        else:
            assert movement is None and not grants.exists(), plan.code
        assert credits_grant_monthly(org_a, period=period) is None  # once


def checks_per_month_gate_check(request) -> None:
    """The checks page: the month's last check of the plan is requested, the next is 402 `quota_exceeded`."""
    request.getfixturevalue("db")
    request.getfixturevalue("registries")
    org_a = request.getfixturevalue("funded")[0]
    fund(org_a)
    client = request.getfixturevalue("client_for")("a", "member")
    url = f"/o/{org_a.slug}/checks/targets/new/"
    for plan in plans():
        plan_use(org_a, plan)
        limit = plan.checks_per_month
        with schema_context(org_a.schema_name):
            ChecksMonth.objects.all().delete()
            ChecksMonth.objects.create(month=month_of(), requested=1_000_000 if limit is None else limit - 1,
                                       quota=limit)
        assert client.post(url, {"cnpj": new_cnpj(), "schedule": "none"}).status_code == 302, plan.code
        over = client.post(url, {"cnpj": new_cnpj(), "schedule": "none"})
        if limit is None:
            assert over.status_code == 302, plan.code
        else:
            assert over.status_code == 402, plan.code
            assert 'data-code="quota_exceeded"' in over.content.decode()
            assert f"{limit:,}".replace(",", "") in over.content.decode().replace(",", "")


def max_upload_mb_gate_check(request) -> None:
    """Chat attachments: a file of the plan's size limit is taken, one byte more is refused. Plans allowing more
    than UPLOAD_SENT_MAX_MB take a file one byte over that (over every smaller plan's limit)."""
    request.getfixturevalue("db")
    request.getfixturevalue("settings").CHAT_DEMO_DELAY = 0
    org_a = request.getfixturevalue("funded")[0]
    fund(org_a)
    client = request.getfixturevalue("client_for")("a", "member")
    url = f"/o/{org_a.slug}/chat/new/"

    def send(size: int):
        upload = SimpleUploadedFile("notes.txt", b"a" * size, content_type="text/plain")
        return client.post(url, {"content": "read this", "model": DEMO, "files": [upload]})

    for plan in plans():
        plan_use(org_a, plan)
        sends_forget()
        limit = plan.max_upload_mb * MB
        if plan.max_upload_mb > UPLOAD_SENT_MAX_MB:
            assert send(UPLOAD_SENT_MAX_MB * MB + 1).status_code == 302, plan.code
            continue
        assert send(limit).status_code == 302, plan.code
        refused = send(limit + 1)
        assert refused.status_code == 400, plan.code
        assert f"larger than your plan allows ({plan.max_upload_mb} MB)" in refused.content.decode()


def messages_per_minute_gate_check(request) -> None:
    """Chat: a member's sends this minute up to the plan's messages a minute, then 429."""
    request.getfixturevalue("db")
    request.getfixturevalue("settings").CHAT_DEMO_DELAY = 0
    org_a = request.getfixturevalue("funded")[0]
    fund(org_a)
    world = request.getfixturevalue("tenant_world")
    member = world["a"]["member"]
    client = request.getfixturevalue("client_for")("a", "member")
    url = f"/o/{org_a.slug}/chat/new/"
    for plan in plans():
        plan_use(org_a, plan)
        sends_forget()
        for _ in range(plan.messages_per_minute - 1):  # this minute's earlier sends
            assert send_limited(organization_id=org_a.pk, user_id=member.pk, per_minute=plan.messages_per_minute) \
                is None
        assert client.post(url, {"content": "the last one", "model": DEMO}).status_code == 302, plan.code
        over = client.post(url, {"content": "one too many", "model": DEMO})
        assert over.status_code == 429, plan.code
        assert f"faster than your plan allows ({plan.messages_per_minute} a minute)" in over.content.decode()


def concurrent_answers_gate_check(request) -> None:
    """Chat answers: with the plan's answers at once all running, a new answer waits (pending); with one free,
    it is generated."""
    request.getfixturevalue("db")
    request.getfixturevalue("settings").CHAT_DEMO_DELAY = 0
    capture = request.getfixturevalue("django_capture_on_commit_callbacks")
    org_a = request.getfixturevalue("funded")[0]
    fund(org_a)
    client = request.getfixturevalue("client_for")("a", "member")
    for plan in plans():
        plan_use(org_a, plan)
        sends_forget()
        cap = plan.concurrent_answers
        held = [slot_acquire(kind=generation.SLOT_KIND, organization_id=org_a.pk, limit=cap, lease_seconds=60)
                for _ in range(cap)]
        try:
            assert all(held), plan.code
            assert slot_acquire(kind=generation.SLOT_KIND, organization_id=org_a.pk, limit=cap,
                                lease_seconds=60) is None
            with capture(execute=True):
                assert client.post(f"/o/{org_a.slug}/chat/new/",
                                   {"content": f"busy {plan.code}", "model": DEMO}).status_code == 302
            with schema_context(org_a.schema_name):
                thread = Thread.objects.filter(messages__content=f"busy {plan.code}").get()
                answer = thread.messages.get(role=Message.Role.ASSISTANT)
                assert answer.status == Message.Status.PENDING, plan.code
                assert generation.answer_generate(answer.pk) is False
                slot_release(held.pop())  # one answer ends: one of the plan's answers at once is free
                assert generation.answer_generate(answer.pk) is True
                answer.refresh_from_db()
                assert answer.status == Message.Status.COMPLETE, plan.code
        finally:
            for slot in held:
                slot_release(slot)
            redis_client().delete(slot_key(generation.SLOT_KIND, org_a.pk))


def concurrent_checks_gate_check(request) -> None:
    """CNPJ checks: with the plan's checks at once all running, a queued check waits (pending, run later);
    with one free, it runs."""
    request.getfixturevalue("db")
    request.getfixturevalue("registries")
    org_a = request.getfixturevalue("funded")[0]
    fund(org_a)
    client = request.getfixturevalue("client_for")("a", "member")
    for plan in plans():
        plan_use(org_a, plan)
        cap = plan.concurrent_checks
        with schema_context(org_a.schema_name):
            ChecksMonth.objects.all().delete()
        assert client.post(f"/o/{org_a.slug}/checks/targets/new/",
                           {"cnpj": new_cnpj(), "schedule": "none", "refresh": "on"}).status_code == 302
        held = [slot_acquire(kind="checks", organization_id=org_a.pk, limit=cap, lease_seconds=60)
                for _ in range(cap)]
        try:
            assert all(held), plan.code
            with schema_context(org_a.schema_name):
                check = Check.objects.order_by("-pk").first()
                assert check_run(check.pk).status == Check.Status.PENDING, plan.code
                check.refresh_from_db()
                assert check.status == Check.Status.PENDING and check.run_after > timezone.now()
                slot_release(held.pop())
                assert check_run(check.pk).status in Check.FINAL, plan.code
        finally:
            for slot in held:
                slot_release(slot)
            redis_client().delete(slot_key("checks", org_a.pk))


def concurrent_jobs_gate_check(request) -> None:
    """Studio jobs: with the plan's jobs at once all running, a queued job waits (busy, no attempt counted); with one
    free, it runs. (Submitted on Pro, whose tier has the model; the cap is read when the job runs.)"""
    from studio.models import Job
    from studio.services import SLOT_KIND, job_run, job_submit

    from .fake_studio import FakeOpenAIImages

    request.getfixturevalue("db")
    settings = request.getfixturevalue("settings")
    org_a = request.getfixturevalue("org_a")
    fund(org_a)
    with FakeOpenAIImages() as images:
        settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, "openai": {"base_url": images.url, "api_key": images.key}}
        for plan in plans():
            plan_use(org_a, Plan.objects.get(code="pro"))
            with schema_context(org_a.schema_name):
                job = job_submit(organization=org_a, user=None, model_id="openai/gpt-image-1", prompt=plan.code,
                                 options={"quality": "low"})
            plan_use(org_a, plan)
            cap = plan.concurrent_jobs
            held = [slot_acquire(kind=SLOT_KIND, organization_id=org_a.pk, limit=cap, lease_seconds=60)
                    for _ in range(cap)]
            try:
                assert all(held), plan.code
                with schema_context(org_a.schema_name):
                    assert job_run(job.pk).status == "busy", plan.code
                    assert Job.objects.get(pk=job.pk).attempts == 0
                    slot_release(held.pop())
                    assert job_run(job.pk).status == Job.Status.SUCCEEDED, plan.code
            finally:
                for slot in held:
                    slot_release(slot)
                redis_client().delete(slot_key(SLOT_KIND, org_a.pk))


def metered_overage_gate_check(request) -> None:
    """Usage past the grant is reported to Stripe's meter (the fake Stripe) only on plans with metered overage."""
    request.getfixturevalue("db")
    fake = request.getfixturevalue("fake")
    org_a, world = request.getfixturevalue("org_a"), request.getfixturevalue("tenant_world")
    BillingAccount.objects.filter(pk=org_a.pk).update(stripe_customer_id="cus_gate")
    yesterday = datetime.combine(timezone.now().date() - timedelta(days=1), time(12), tzinfo=UTC)
    cost = usage_cost(kind="check", key="cnpj", units=2, at=yesterday)
    usage_record(organization=org_a, user=world["a"]["member"], kind="check", key="cnpj", units=2,
                 credits=cost.credits, price=cost.price, request_id=uuid.uuid4().hex, occurred_at=yesterday)
    for plan in plans():
        plan_use(org_a, plan)
        MeterReport.objects.filter(organization=org_a).delete()
        before = len(fake.calls_to("POST", "/v1/billing/meter_events"))
        sent = meter_reports_run()
        after = len(fake.calls_to("POST", "/v1/billing/meter_events"))
        if plan.metered_overage:
            assert (sent, after - before) == (1, 1), plan.code
        else:
            assert (sent, after - before) == (0, 0), plan.code


def audit_retention_gate_check(request) -> None:
    """Audit history: the daily purge keeps exactly the plan's days (an event a day older goes, one a day younger
    stays)."""
    from tenants.audit.models import AuditEvent
    from tenants.audit.services import audit_purge

    from .test_audit_chain import aged, bare_org

    request.getfixturevalue("db")
    world = request.getfixturevalue("tenant_world")
    for plan in plans():
        org = bare_org(world, f"retain-{plan.code}", plan.code)
        days = plan.audit_retention_days
        for age in (days + 1, days - 1):
            aged(org, age)
        assert audit_purge(organization=org).deleted == 1, plan.code
        with schema_context(org.schema_name):
            kept = list(AuditEvent.objects.filter(action="thing.done").values_list("target_label", flat=True))
        assert kept == [f"{days - 1} days old"], plan.code


GATES = {
    "seats": seats_gate_check,
    "webhooks": webhooks_gate_check,
    "api_access": api_access_gate_check,
    "requests_per_minute": requests_per_minute_gate_check,
    "tokens_per_minute": tokens_per_minute_gate_check,
    "model_tiers": model_tiers_gate_check,
    "monthly_credits": monthly_credits_gate_check,
    "checks_per_month": checks_per_month_gate_check,
    "max_upload_mb": max_upload_mb_gate_check,
    "messages_per_minute": messages_per_minute_gate_check,
    "concurrent_answers": concurrent_answers_gate_check,
    "concurrent_checks": concurrent_checks_gate_check,
    "concurrent_jobs": concurrent_jobs_gate_check,
    "metered_overage": metered_overage_gate_check,
    "audit_retention_days": audit_retention_gate_check,
}


def test_every_entitlement_has_a_gate():
    assert set(GATES) == entitlement_names()
    plan_fields = {field.name for field in Plan._meta.concrete_fields}
    assert plan_fields - CATALOGUE_FIELDS == entitlement_names(), "a Plan field that is neither catalogue text " \
                                                                  "nor an entitlement with a gate"


def test_the_pricing_card_sells_only_gated_entitlements():
    shown = set()
    for name in ("_plan_card.html", "_entitlements.html"):
        shown |= set(re.findall(r"\bplan\.(\w+)", (TEMPLATES / name).read_text()))
    assert shown - CARD_DISPLAY <= set(GATES), shown - CARD_DISPLAY - set(GATES)
    assert shown - CARD_DISPLAY, "the card shows entitlements"


@pytest.mark.parametrize("entitlement", sorted(entitlement_names()))
def test_each_entitlement_is_enforced_on_every_plan(entitlement, request, tenant_world):
    # tenant_world (committed, session-wide) is set up before any gate opens the test's transaction.
    GATES[entitlement](request)
