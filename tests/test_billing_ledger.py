"""The credit ledger: exact, append-only, idempotent, never negative — also under concurrency."""

from __future__ import annotations

import io
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connections
from django.template.defaultfilters import floatformat
from django_tenants.utils import schema_context

from billing.ledger import (
    IdempotencyConflict,
    InsufficientCredits,
    credit_adjust,
    credit_debit,
    credit_grant,
    credit_refund,
    credit_release,
    credit_reserve,
    credit_settle,
)
from billing.models import BillingAccount, CreditEntry, CreditReservation, Plan
from billing.selectors import entitlements_for, ledger_sum
from billing.services import credits_grant_monthly, plans_seed
from tenants.audit.models import AuditEvent
from tenants.audit.services import Actor
from tenants.services import organization_create

from .orgs import organization_drop


def balance(org) -> Decimal:
    return BillingAccount.objects.get(pk=org.pk).credits


@pytest.fixture
def org(tenant_world, db):
    """A fresh organization (rolled back with the test), holding its first monthly grant."""
    return organization_create(user=tenant_world["a"]["owner"], name=f"Ledger {uuid.uuid4().hex[:6]}",
                               actor=Actor.system("tests"))


@pytest.mark.django_db
def test_new_organization_starts_on_free_with_its_monthly_grant(org):
    account = BillingAccount.objects.get(pk=org.pk)
    assert account.plan.code == "free"
    assert account.credits == account.plan.monthly_credits == Decimal("100")
    entry = CreditEntry.objects.get(organization=org)
    assert (entry.kind, entry.amount, entry.balance_after) == ("grant", Decimal("100"), Decimal("100"))


@pytest.mark.django_db
def test_monthly_grant_happens_once_per_period_however_often_it_runs(org):
    for _ in range(3):
        credits_grant_monthly(org, period="2031-01")
    assert CreditEntry.objects.filter(organization=org, idempotency_key__endswith=":2031-01").count() == 1
    assert balance(org) == Decimal("200")
    call_command("grant_credits", "--org", org.slug, "--credits", "5", "--key", "ops-1", stdout=io.StringIO())
    call_command("grant_credits", "--org", org.slug, "--credits", "5", "--key", "ops-1", stdout=io.StringIO())
    assert balance(org) == Decimal("205")


@pytest.mark.django_db
def test_debit_never_goes_negative_and_writes_nothing_when_refused(org):
    credit_debit(organization=org, amount=Decimal("99.5"), key="d1")
    with pytest.raises(InsufficientCredits) as refused:
        credit_debit(organization=org, amount=Decimal("0.500001"), key="d2")
    assert refused.value.balance == Decimal("0.5")
    assert not CreditEntry.objects.filter(idempotency_key="d2").exists()
    credit_debit(organization=org, amount=Decimal("0.5"), key="d3")
    assert balance(org) == Decimal("0") == ledger_sum(organization=org)


@pytest.mark.django_db
def test_retried_key_is_a_no_op_and_a_reused_key_for_something_else_is_refused(org):
    first = credit_debit(organization=org, amount=Decimal("10"), key="req-1")
    again = credit_debit(organization=org, amount=Decimal("10"), key="req-1")
    assert first.created and not again.created and again.entry.pk == first.entry.pk
    assert balance(org) == Decimal("90")
    with pytest.raises(IdempotencyConflict):
        credit_debit(organization=org, amount=Decimal("11"), key="req-1")


@pytest.mark.django_db
def test_reserve_then_settle_charges_the_actual_and_releases_the_rest(org):
    hold = credit_reserve(organization=org, amount=Decimal("30"), key="gen-1")
    assert balance(org) == Decimal("70")
    with pytest.raises(ValueError):
        credit_settle(reservation=hold, actual=Decimal("31"))
    credit_settle(reservation=hold, actual=Decimal("12.25"))
    credit_settle(reservation=hold, actual=Decimal("12.25"))  # retry: no-op
    assert balance(org) == Decimal("87.75") == ledger_sum(organization=org)
    kinds = list(CreditEntry.objects.filter(reservation=hold).order_by("id").values_list("kind", "amount"))
    assert kinds == [("reserve", Decimal("-30")), ("release", Decimal("30")), ("debit", Decimal("-12.25"))]


@pytest.mark.django_db
def test_release_gives_everything_back(org):
    hold = credit_reserve(organization=org, amount=Decimal("100"), key="gen-2")
    with pytest.raises(InsufficientCredits):
        credit_reserve(organization=org, amount=Decimal("1"), key="gen-3")
    credit_release(reservation=hold)
    assert balance(org) == Decimal("100")
    hold.refresh_from_db()
    assert hold.status == "released"


@pytest.mark.django_db
def test_refund_and_staff_adjustment_with_reason_are_audited(org, tenant_world):
    staff = tenant_world["a"]["owner"]
    credit_refund(organization=org, amount=Decimal("3"), key="refund-1", description="bad answer")
    credit_adjust(organization=org, amount=Decimal("-50"), reason="duplicate promo", user=staff, key="adj-1")
    with pytest.raises(ValueError):
        credit_adjust(organization=org, amount=Decimal("1"), reason=" ", user=staff, key="adj-2")
    assert balance(org) == Decimal("53") == ledger_sum(organization=org)
    with schema_context(org.schema_name):
        event = AuditEvent.objects.get(action="credits.adjusted")
    assert event.after == {"amount": "-50", "reason": "duplicate promo"}


@pytest.mark.django_db
def test_entitlements_come_from_the_plan_not_its_name(org):
    plans_seed()
    assert entitlements_for(org).api_access is False
    account = BillingAccount.objects.get(pk=org.pk)
    account.plan = Plan.objects.get(code="pro")
    account.save(update_fields=["plan"])
    pro = entitlements_for(org)
    assert pro.api_access and pro.webhooks and pro.allows_model_tier("premium")
    Plan.objects.filter(code="pro").update(name="Renamed", webhooks=False)
    assert entitlements_for(org).webhooks is False


@pytest.mark.django_db
def test_pricing_page_lists_the_plans_from_the_database(client):
    Plan.objects.filter(code="business").update(name="Business Plus")
    html = client.get("/pricing").content.decode()
    for name in ("Free", "Starter", "Pro", "Business Plus", "Enterprise"):
        assert f"<h2>{name}</h2>" in html
    client.post("/i18n/setlang/", {"language": "pt-br", "next": "/pricing"})
    portuguese = client.get("/pricing").content.decode()
    assert "créditos todo mês" in portuguese
    assert "Todos os modelos, a API e webhooks." in portuguese  # seeded description, translated


@pytest.mark.django_db
def test_billing_page_shows_plan_balance_and_movements(client_for, org_a):
    credit_grant(organization=org_a, amount=Decimal("7"), key=f"page-{uuid.uuid4()}", description="welcome gift")
    html = client_for("a", "viewer").get(f"/o/{org_a.slug}/billing/").content.decode()
    assert 'data-testid="plan">Free<' in html
    assert "welcome gift" in html
    shown = floatformat(balance(org_a), "-2").replace(",", "")  # committed usage may leave cents
    assert f'data-testid="balance">{shown}' in html.replace(",", "")


# ---------------------------------------------------------------- concurrency, real PostgreSQL

WORKERS = 32


@pytest.fixture
def committed_org(tenant_world, django_db_blocker):
    """An organization committed to the database, so that other connections see it."""
    with django_db_blocker.unblock():
        org = organization_create(user=tenant_world["b"]["owner"], name=f"Race {uuid.uuid4().hex[:6]}",
                                  actor=Actor.system("tests"))
        yield org
        organization_drop(org)


def _in_threads(django_db_blocker, jobs):
    barrier = threading.Barrier(min(WORKERS, len(jobs)))

    def run(job):
        try:
            barrier.wait(timeout=30)
            return job()
        except (InsufficientCredits, threading.BrokenBarrierError) as error:
            return error
        finally:
            connections.close_all()

    with django_db_blocker.unblock(), ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(run, jobs))


def test_racing_debits_and_reservations_never_overspend(committed_org, django_db_blocker):
    """64 debits and reservations of 5 race on a balance covering exactly N = 20; retries are no-ops."""
    org = committed_org
    n, price = 20, Decimal("5")
    with django_db_blocker.unblock():
        gap = n * price - balance(org)  # make the balance exactly N × price
        if gap > 0:
            credit_grant(organization=org, amount=gap, key=f"{org.pk}:top-up")
        elif gap < 0:
            credit_debit(organization=org, amount=-gap, key=f"{org.pk}:drain")
    jobs = []
    for i in range(64):
        key = f"{org.pk}:race:{i}"
        if i % 2:
            jobs.append(lambda key=key: credit_debit(organization=org, amount=price, key=key))
        else:
            jobs.append(lambda key=key: credit_reserve(organization=org, amount=price, key=key))
    results = _in_threads(django_db_blocker, jobs)
    succeeded = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, InsufficientCredits)]
    assert (len(succeeded), len(refused)) == (n, 64 - n)

    # The same 64 keys again, concurrently: no money moves.
    retried = _in_threads(django_db_blocker, jobs)
    assert sum(not isinstance(r, Exception) for r in retried) >= n
    with django_db_blocker.unblock():
        assert balance(org) == Decimal("0") == ledger_sum(organization=org)
        assert CreditEntry.objects.filter(organization=org, idempotency_key__contains=":race:").count() == n


def test_concurrent_holds_and_settlements_on_one_organization_never_deadlock(committed_org, django_db_blocker):
    """What concurrent API calls do: each holds, then settles, while the others do the same."""
    org = committed_org
    calls = 3 * WORKERS
    with django_db_blocker.unblock():
        credit_grant(organization=org, amount=Decimal("1000"), key=f"{org.pk}:settle-grant")
        before = balance(org)

    def call(i: int):
        hold = credit_reserve(organization=org, amount=Decimal("2"), key=f"{org.pk}:call:{i}")
        return credit_settle(reservation=hold, actual=Decimal("1.5"))

    results = _in_threads(django_db_blocker, [(lambda i=i: call(i)) for i in range(calls)])
    settled = [r for r in results if isinstance(r, CreditReservation)]
    assert len(settled) == calls and all(hold.status == "settled" for hold in settled), results
    with django_db_blocker.unblock():
        assert balance(org) == before - calls * Decimal("1.5") == ledger_sum(organization=org)


@pytest.mark.django_db
def test_staff_adjusts_credits_in_the_admin_with_a_reason_once_per_form(admin_client, org):
    page = admin_client.get(f"/admin/billing/billingaccount/{org.pk}/adjust/")
    assert page.status_code == 200
    nonce = page.context["nonce"]
    form = {"amount": "-40", "reason": "promo reversed", "nonce": nonce}
    assert admin_client.post(f"/admin/billing/billingaccount/{org.pk}/adjust/", form).status_code == 302
    admin_client.post(f"/admin/billing/billingaccount/{org.pk}/adjust/", form)  # double submit
    assert balance(org) == Decimal("60")
    too_much = admin_client.post(f"/admin/billing/billingaccount/{org.pk}/adjust/",
                                 {"amount": "-61", "reason": "x", "nonce": "other"})
    assert too_much.status_code == 200 and "The balance is only 60" in too_much.content.decode()
    no_reason = admin_client.post(f"/admin/billing/billingaccount/{org.pk}/adjust/", {"amount": "1", "nonce": "n2"})
    assert no_reason.status_code == 200
    assert balance(org) == Decimal("60") == ledger_sum(organization=org)


@pytest.mark.django_db
def test_not_enough_credits_answers_402_with_a_way_to_top_up(rf, org_a, tenant_world):
    from billing.middleware import InsufficientCreditsMiddleware

    error = InsufficientCredits(balance=Decimal("1.5"), required=Decimal("4"))

    def spend(request):
        raise error

    middleware = InsufficientCreditsMiddleware(spend)
    page_request = rf.get(f"/o/{org_a.slug}/chat/")
    page_request.user, page_request.tenant = tenant_world["a"]["member"], org_a
    page = middleware.process_exception(page_request, error)
    assert page.status_code == 402
    html = page.content.decode()
    assert "needs 4 and the balance is 1.5" in html
    assert f'href="/o/{org_a.slug}/billing/#top-up"' in html

    api_request = rf.post("/v1/chat/completions")
    api_request.user = tenant_world["a"]["member"]
    api = middleware.process_exception(api_request, error)
    assert api.status_code == 402
    assert json.loads(api.content)["error"]["code"] == "insufficient_credits"
    assert middleware.process_exception(api_request, ValueError()) is None


@pytest.mark.django_db
def test_first_movement_of_an_organization_without_an_account_creates_it(org):
    BillingAccount.objects.filter(pk=org.pk).delete()
    CreditEntry.objects.filter(organization=org).delete()
    with pytest.raises(InsufficientCredits) as refused:
        credit_debit(organization=org, amount=Decimal("1"), key="first-debit")
    assert refused.value.balance == Decimal("0")
    credit_grant(organization=org, amount=Decimal("3"), key="first-grant")
    assert BillingAccount.objects.get(pk=org.pk).plan.code == "free"
    assert balance(org) == Decimal("3") == ledger_sum(organization=org)
