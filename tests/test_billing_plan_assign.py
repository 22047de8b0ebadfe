"""Plans set by hand (issue 13, item 1): `manage.py set_plan`, the admin and the demo seed, all audited."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django_tenants.utils import schema_context

from billing.models import BillingAccount, Plan
from billing.services import credits_grant_monthly
from tenants.audit.models import AuditEvent
from tenants.models import Organization

from .test_billing_stripe import deliver, endpoint, prices, stripe_client, subscribe  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db


def account(org) -> BillingAccount:
    return BillingAccount.objects.select_related("plan").get(pk=org.pk)


def plan_events(org) -> list[AuditEvent]:
    with schema_context(org.schema_name):
        return list(AuditEvent.objects.filter(action="billing.plan_assigned").order_by("id"))


def set_plan(*args: str) -> str:
    out = io.StringIO()
    call_command("set_plan", *args, stdout=out)
    return out.getvalue()


def test_set_plan_moves_the_organization_audits_it_and_grants_the_upgrade_now(org_a):
    credits_grant_monthly(org_a)
    before = account(org_a).credits

    printed = set_plan("--org", org_a.slug, "--plan", "pro", "--note", "Signed contract #42")

    after = account(org_a)
    assert (after.plan.code, after.plan_note, after.status) == ("pro", "Signed contract #42", "active")
    assert after.credits == before + Decimal("10000") - Decimal("100"), "Pro's credits for this month, at once"
    assert f"{org_a.slug} is on Pro" in printed
    [event] = plan_events(org_a)
    assert (event.actor_type, event.actor_label) == ("system", "set_plan")
    assert event.before["plan"] == "free" and event.after == {"plan": "pro", "status": "active",
                                                               "note": "Signed contract #42"}

    set_plan("--org", org_a.slug, "--plan", "pro", "--note", "Signed contract #42")
    assert len(plan_events(org_a)) == 1, "the same plan again changes nothing and audits nothing"
    set_plan("--org", org_a.slug, "--plan", "free")
    assert (account(org_a).plan.code, account(org_a).plan_note) == ("free", "Assigned by an operator")
    assert account(org_a).credits == after.credits, "a downgrade takes nothing back"


def test_set_plan_refuses_what_it_cannot_do_with_a_clear_message(org_a):
    with pytest.raises(CommandError, match="No organization with slug 'nope'"):
        set_plan("--org", "nope", "--plan", "pro")
    with pytest.raises(CommandError, match=r"No plan 'platinum'\. Plans: free, starter, pro, business, enterprise"):
        set_plan("--org", org_a.slug, "--plan", "platinum")
    assert account(org_a).plan.code == "free"


def test_a_live_stripe_subscription_decides_the_plan_not_set_plan(
        client_for, org_a, fake, prices, endpoint, stripe_client):  # noqa: F811 (fixtures)
    subscribe(client_for, fake, endpoint, stripe_client, org_a, "starter")
    assert account(org_a).plan.code == "starter"

    with pytest.raises(CommandError, match="live Stripe subscription"):
        set_plan("--org", org_a.slug, "--plan", "business")
    assert account(org_a).plan.code == "starter"
    assert plan_events(org_a) == []


def test_a_subscription_change_clears_the_operators_note(
        client_for, org_a, fake, prices, endpoint, stripe_client):  # noqa: F811 (fixtures)
    set_plan("--org", org_a.slug, "--plan", "pro", "--note", "Trial month")
    subscribe(client_for, fake, endpoint, stripe_client, org_a, "business")
    assert (account(org_a).plan.code, account(org_a).plan_note) == ("business", "")


def test_a_plan_chosen_in_the_admin_is_audited_with_the_staff_member(admin_client, admin_user, org_b):
    current = account(org_b)
    response = admin_client.post(f"/admin/billing/billingaccount/{org_b.pk}/change/",
                                 {"plan": Plan.objects.get(code="business").pk, "status": current.status,
                                  "stripe_customer_id": current.stripe_customer_id, "plan_note": ""})
    assert response.status_code == 302, response.content.decode()[:2000]
    assert (account(org_b).plan.code, account(org_b).plan_note) == ("business", "Assigned by an operator")
    [event] = plan_events(org_b)
    assert (event.actor_type, event.actor_label) == ("user", admin_user.email)


def test_the_demo_starts_on_pro_marked_as_a_demo_and_keeps_an_operators_choice(client):
    call_command("seed_demo", stdout=io.StringIO())
    demo = Organization.objects.get(slug="demo")
    assert (account(demo).plan.code, account(demo).plan_note) == ("pro", "Development demo")
    assert account(demo).credits == Decimal("10000")
    assert [(e.actor_label, e.after["plan"]) for e in plan_events(demo)] == [("seed_demo", "pro")]

    client.login(email="demo@example.com", password="prumo-demo")
    page = client.get("/o/demo/billing/").content.decode()
    assert '<span class="badge" data-testid="plan-note">Development demo</span>' in page

    set_plan("--org", "demo", "--plan", "starter")
    call_command("seed_demo", stdout=io.StringIO())
    assert account(demo).plan.code == "starter", "seeding again never undoes an operator's set_plan"
    assert account(demo).credits == Decimal("10000")
