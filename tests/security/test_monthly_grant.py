"""Item 12: the monthly grant survives a plan change within the month (seeding, beat, Stripe, admin)."""

from __future__ import annotations

import io
import logging
from decimal import Decimal

import pytest
from django.core.management import call_command
from django_tenants.utils import schema_context

from billing.models import BillingAccount, CreditEntry, Plan
from billing.services import credits_grant_monthly, grant_period
from billing.tasks import credits_grant_monthly_all
from tenants.audit.models import AuditEvent
from tenants.models import Organization

from ..test_billing_stripe import deliver, endpoint, prices, stripe_client, subscribe  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db

PRO_MINUS_FREE = Decimal("10000") - Decimal("100")
BUSINESS_MINUS_PRO = Decimal("50000") - Decimal("10000")


def balance(org) -> Decimal:
    return BillingAccount.objects.get(pk=org.pk).credits


def grants(org, period: str | None = None) -> list[tuple[str, Decimal]]:
    period = period or grant_period()
    return sorted(CreditEntry.objects.filter(organization=org, kind=CreditEntry.Kind.GRANT,
                                             idempotency_key__contains=f":{org.pk}:{period}")
                  .values_list("idempotency_key", "amount"))


def plan_set(org, code: str) -> None:
    """A plan change made outside Stripe (a script, a staff UPDATE), as `make run`'s users did."""
    BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code=code))


def seed_demo() -> Organization:
    call_command("seed_demo", stdout=io.StringIO())
    return Organization.objects.get(slug="demo")


def test_seed_demo_and_the_beat_survive_a_mid_month_upgrade_and_downgrade():
    demo = seed_demo()
    period = grant_period()
    assert balance(demo) == Decimal("10000"), "the demo starts on Pro, with Pro's credits for the month"

    plan_set(demo, "business")
    demo = seed_demo()  # raised IdempotencyConflict before the fix
    assert balance(demo) == Decimal("50000"), "the upgrade tops the month up to Business's credits"
    assert credits_grant_monthly_all.delay().get() >= 0
    demo = seed_demo()
    demo = seed_demo()
    assert balance(demo) == Decimal("50000")
    assert grants(demo) == [(f"grant-upgrade:{demo.pk}:{period}:business", BUSINESS_MINUS_PRO),
                            (f"grant-upgrade:{demo.pk}:{period}:pro", PRO_MINUS_FREE),
                            (f"grant:{demo.pk}:{period}", Decimal("100"))]

    plan_set(demo, "free")
    demo = seed_demo()
    assert credits_grant_monthly_all.delay().get() >= 0
    assert balance(demo) == Decimal("50000"), "a downgrade grants nothing more"
    plan_set(demo, "business")
    assert credits_grant_monthly(demo) is None, "Business's credits were already granted this month"
    assert balance(demo) == Decimal("50000")

    with schema_context(demo.schema_name):
        [event] = AuditEvent.objects.filter(action="credits.upgrade_granted", after__plan="business")
    assert (event.after["plan"], event.after["period"]) == ("business", period)
    assert (Decimal(event.after["credits"]), Decimal(event.after["granted_before"])) == (BUSINESS_MINUS_PRO, 10000)


def test_stripe_upgrade_grants_the_difference_once_and_the_downgrade_nothing(
        client_for, org_a, fake, prices, endpoint, stripe_client):  # noqa: F811
    credits_grant_monthly(org_a)  # this month's Free grant, as the beat gives it
    before = balance(org_a)

    subscription = subscribe(client_for, fake, endpoint, stripe_client, org_a, "pro")
    assert balance(org_a) == before + PRO_MINUS_FREE, "the upgrade is granted at once, not at the next beat"
    replay = fake.event("customer.subscription.updated", fake.get("subscription", subscription))
    assert deliver(stripe_client, endpoint, replay).status_code == 200
    assert credits_grant_monthly_all.delay().get() >= 0
    assert balance(org_a) == before + PRO_MINUS_FREE

    assert deliver(stripe_client, endpoint, fake.subscription_cancel(subscription)).status_code == 200
    assert BillingAccount.objects.get(pk=org_a.pk).plan.code == "free"
    assert balance(org_a) == before + PRO_MINUS_FREE, "a downgrade takes nothing back and grants nothing"

    subscribe(client_for, fake, endpoint, stripe_client, org_a, "business")
    assert balance(org_a) == before + Decimal("50000") - Decimal("100"), "Business tops up to its own 50,000"
    assert [amount for _key, amount in grants(org_a)] == [Decimal("40000"), PRO_MINUS_FREE, Decimal("100")]


def test_staff_plan_change_in_the_admin_grants_the_difference_at_once(admin_client, org_b):
    credits_grant_monthly(org_b)
    before = balance(org_b)
    account = BillingAccount.objects.get(pk=org_b.pk)
    response = admin_client.post(f"/admin/billing/billingaccount/{org_b.pk}/change/",
                                 {"plan": Plan.objects.get(code="pro").pk, "status": account.status,
                                  "stripe_customer_id": account.stripe_customer_id})
    assert response.status_code == 302, response.content.decode()[:2000]
    assert balance(org_b) == before + PRO_MINUS_FREE


def test_the_beat_goes_on_past_an_organization_whose_grant_fails(org_a, org_b, caplog):
    # Organization A's balance cannot take another credit (the column would overflow): its grant fails.
    BillingAccount.objects.filter(pk=org_a.pk).update(credits=Decimal("99999999999999"))
    period = "2031-07"

    with caplog.at_level(logging.ERROR, logger="billing.tasks"):
        granted = credits_grant_monthly_all.delay(period=period).get()

    assert grants(org_a, period) == []
    assert grants(org_b, period) == [(f"grant:{org_b.pk}:{period}", Decimal("100"))]
    everyone_else = (Organization.objects.exclude(schema_name="public").exclude(pk=org_a.pk)
                     .exclude(billing__plan__monthly_credits__lte=0).count())
    assert granted == everyone_else
    assert any(org_a.slug in record.getMessage() for record in caplog.records)
    assert credits_grant_monthly_all.delay(period=period).get() == 0, "a second run grants nothing"
