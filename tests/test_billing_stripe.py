"""Stripe end to end: our views and webhooks, dj-stripe and the official SDK against a local fake Stripe."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from decimal import Decimal

import pytest
import stripe
from django.contrib.humanize.templatetags.humanize import intcomma
from django.core import mail
from django.core.management import call_command
from django.template.defaultfilters import floatformat
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_tenants.utils import schema_context
from djstripe.models import Event, WebhookEventTrigger

from billing.models import BillingAccount, CreditEntry, Plan
from billing.selectors import billing_account_get
from billing.services import plans_seed
from billing.stripe import stripe_customer_ensure, webhook_endpoint_register
from billing.tasks import billing_dunning_run
from tenants.audit.models import AuditEvent

from .fake_stripe import API_VERSION, sign

pytestmark = pytest.mark.django_db


@pytest.fixture
def prices(fake):
    """Starter, Pro and Business sold through Stripe prices, as staff configure them in the admin."""
    plans_seed()
    for code, cents in (("starter", 1900), ("pro", 4900), ("business", 19900)):
        fake.price_add(f"price_{code}", unit_amount=cents, name=code.title())
        Plan.objects.filter(code=code).update(stripe_price_id=f"price_{code}")


@pytest.fixture
def endpoint(fake):
    return webhook_endpoint_register(base_url="http://testserver")


@pytest.fixture
def stripe_client():
    """Stripe's side of the webhook: no session, and a 500 is an answer, not an exception."""
    return Client(raise_request_exception=False)


def deliver(client: Client, endpoint, event: dict, *, secret: str | None = None, payload: str | None = None):
    body = json.dumps(event)
    path = reverse("djstripe:djstripe_webhook_by_uuid", kwargs={"uuid": endpoint.djstripe_uuid})
    return client.post(path, payload or body, content_type="application/json",
                       HTTP_STRIPE_SIGNATURE=sign(body, secret or endpoint.secret))


def url(name: str, org) -> str:
    return reverse(name, args=[org.slug])


def account(org) -> BillingAccount:
    return billing_account_get(organization=org)


def state(org) -> tuple[str, str]:
    current = account(org)
    return current.plan.code, current.status


def checkout_session_id(response) -> str:
    assert response.status_code == 303, response.status_code
    assert response["Location"].startswith("https://checkout.stripe.com/c/pay/cs_test_")
    return response["Location"].rsplit("/", 1)[-1]


def subscribe(client_for, fake, endpoint, stripe_client, org, plan: str) -> str:
    """The owner picks `plan`, pays at Checkout, Stripe's events arrive; returns the subscription id."""
    owner = client_for(org.slug.removeprefix("org-"), "owner")
    session_id = checkout_session_id(owner.post(url("billing_plan_change", org), {"plan": plan}))
    for event in fake.checkout_complete(session_id):
        assert deliver(stripe_client, endpoint, event).status_code == 200
    return fake.get("checkout.session", session_id)["subscription"]


def test_owner_upgrade_goes_to_checkout_with_the_plan_price(client_for, org_a, fake, prices):
    response = client_for("a", "owner").post(url("billing_plan_change", org_a), {"plan": "pro"})

    session_id = checkout_session_id(response)
    [customer_call] = fake.calls_to("POST", "/v1/customers")
    assert customer_call.params["email"] == "owner-a@example.com"
    assert customer_call.params["metadata"]["djstripe_subscriber"] == str(org_a.pk)
    [checkout] = fake.calls_to("POST", "/v1/checkout/sessions")
    assert checkout.params["mode"] == "subscription"
    assert checkout.params["line_items"] == [{"price": "price_pro", "quantity": "1"}]
    assert checkout.params["success_url"].endswith(
        f"/o/{org_a.slug}/billing/checkout/success/?session_id={{CHECKOUT_SESSION_ID}}")
    assert checkout.params["cancel_url"].endswith(f"/o/{org_a.slug}/billing/checkout/cancelled/")
    assert fake.get("checkout.session", session_id)["customer"] == account(org_a).stripe_customer_id
    assert {call.headers["stripe-version"] for call in fake.calls} == {API_VERSION}
    assert all(call.headers["authorization"].startswith("Bearer sk_test_") for call in fake.calls)
    assert state(org_a) == ("free", "active"), "nothing changes before Stripe confirms the payment"

    client_for("a", "admin").post(url("billing_plan_change", org_a), {"plan": "starter"})
    assert len(fake.calls_to("POST", "/v1/customers")) == 1, "the organization stays one Stripe customer"


@pytest.mark.parametrize("role", ["member", "viewer"])
def test_members_without_admin_role_get_403_and_stripe_is_not_called(client_for, org_a, fake, prices, role):
    client = client_for("a", role)
    for name, data in (("billing_plan_change", {"plan": "pro"}), ("billing_topup", {"credits": "1000"}),
                       ("billing_portal", {})):
        assert client.post(url(name, org_a), data).status_code == 403, name
    assert fake.calls == []


def test_another_organizations_member_gets_404_and_stripe_is_not_called(client_for, org_a, fake, prices):
    client = client_for("b", "owner")
    for name in ("billing_plan_change", "billing_topup", "billing_portal", "billing_home",
                 "billing_checkout_success", "billing_checkout_cancelled"):
        assert client.post(url(name, org_a), {"plan": "pro", "credits": "1000"}).status_code == 404, name
        assert client.get(url(name, org_a)).status_code == 404, name
    assert fake.calls == []


def test_paid_top_up_adds_credits_exactly_once(client_for, org_a, fake, endpoint, stripe_client):
    before = account(org_a).credits
    response = client_for("a", "admin").post(url("billing_topup", org_a), {"credits": "1500"})
    session_id = checkout_session_id(response)
    [checkout] = fake.calls_to("POST", "/v1/checkout/sessions")
    assert checkout.params["mode"] == "payment"
    assert checkout.params["line_items"][0]["price_data"]["unit_amount"] == "1500"  # 100 credits per US$ 1

    [completed] = fake.checkout_complete(session_id)
    assert deliver(stripe_client, endpoint, completed).status_code == 200
    assert deliver(stripe_client, endpoint, completed).status_code == 200  # Stripe delivers twice
    # A second event about the same payment must not pay out again either.
    again = fake.event("checkout.session.async_payment_succeeded", fake.get("checkout.session", session_id))
    assert deliver(stripe_client, endpoint, again).status_code == 200

    assert account(org_a).credits == before + Decimal("1500")
    [purchase] = CreditEntry.objects.filter(organization=org_a, kind=CreditEntry.Kind.PURCHASE)
    assert (purchase.amount, purchase.idempotency_key) == (Decimal("1500"), f"stripe:checkout:{session_id}")
    assert Event.objects.filter(id=completed["id"]).count() == 1
    assert WebhookEventTrigger.objects.filter(webhook_endpoint=endpoint, processed=True).count() == 3
    with schema_context(org_a.schema_name):
        assert AuditEvent.objects.filter(action="credits.purchased").count() == 1
    page = client_for("a", "member").get(url("billing_home", org_a)).content.decode()
    assert f'data-testid="balance">{intcomma(floatformat(before + 1500, "-2"))}<' in page
    assert "Stripe Checkout top-up" in page


def test_top_up_outside_the_limits_is_refused_before_stripe(client_for, org_a, fake):
    client = client_for("a", "owner")
    for credits in ("10", "abc", "99999999"):
        response = client.post(url("billing_topup", org_a), {"credits": credits}, follow=True)
        assert response.redirect_chain[0][0] == url("billing_home", org_a)
        assert "credits" in response.content.decode()
    assert fake.calls_to("POST", "/v1/checkout/sessions") == []


def test_bad_signature_gets_400_and_changes_nothing(client_for, org_a, fake, endpoint, stripe_client):
    before = account(org_a).credits
    session_id = checkout_session_id(client_for("a", "owner").post(url("billing_topup", org_a), {"credits": "800"}))
    [completed] = fake.checkout_complete(session_id)

    assert deliver(stripe_client, endpoint, completed, secret="whsec_not_the_secret").status_code == 400
    forged = json.dumps(completed).replace('"credits": "800"', '"credits": "80000"')
    assert deliver(stripe_client, endpoint, completed, payload=forged).status_code == 400
    url_ = reverse("djstripe:djstripe_webhook_by_uuid", kwargs={"uuid": endpoint.djstripe_uuid})
    assert stripe_client.post(url_, json.dumps(completed), content_type="application/json").status_code == 400

    assert account(org_a).credits == before
    assert not CreditEntry.objects.filter(organization=org_a, kind=CreditEntry.Kind.PURCHASE).exists()
    assert not Event.objects.filter(id=completed["id"]).exists()
    assert set(WebhookEventTrigger.objects.filter(webhook_endpoint=endpoint).values_list("valid", flat=True)) == {False}


def test_subscription_events_in_any_order_end_in_the_same_state(client_for, org_a, org_b, fake, prices, endpoint,
                                                               stripe_client):
    # Organization A: every event delivered as it happens.
    sub_a = subscribe(client_for, fake, endpoint, stripe_client, org_a, "pro")
    assert state(org_a) == ("pro", "active")
    assert deliver(stripe_client, endpoint, fake.subscription_price_change(sub_a, "price_business")).status_code == 200
    assert state(org_a) == ("business", "active")
    late_a = fake.event("customer.subscription.updated", fake.get("subscription", sub_a))
    for event in (late_a, fake.subscription_cancel(sub_a)):
        assert deliver(stripe_client, endpoint, event).status_code == 200
    assert state(org_a) == ("free", "canceled")

    # Organization B: the same history, delivered out of order (updated before created,
    # deleted before a stale updated) and with replays.
    owner_b = client_for("b", "owner")
    session_id = checkout_session_id(owner_b.post(url("billing_plan_change", org_b), {"plan": "pro"}))
    created, paid, completed = fake.checkout_complete(session_id)
    sub_b = fake.get("checkout.session", session_id)["subscription"]
    upgraded = fake.subscription_price_change(sub_b, "price_business")
    for event in (upgraded, completed, created, paid, created):
        assert deliver(stripe_client, endpoint, event).status_code == 200
    assert state(org_b) == ("business", "active")
    stale = fake.event("customer.subscription.updated", fake.get("subscription", sub_b))
    deleted = fake.subscription_cancel(sub_b)
    for event in (deleted, stale, upgraded):
        assert deliver(stripe_client, endpoint, event).status_code == 200
    assert state(org_b) == state(org_a) == ("free", "canceled")

    with schema_context(org_b.schema_name):
        changes = list(AuditEvent.objects.filter(action="billing.plan_changed").order_by("id")
                       .values_list("before__plan", "after__plan"))
    assert changes == [("free", "business"), ("business", "free")]


def test_plan_change_with_a_subscription_goes_to_the_portal_not_a_second_checkout(
        client_for, org_a, fake, prices, endpoint, stripe_client):
    sub = subscribe(client_for, fake, endpoint, stripe_client, org_a, "pro")
    owner = client_for("a", "owner")

    response = owner.post(url("billing_plan_change", org_a), {"plan": "business"})
    assert response.status_code == 303 and response["Location"].startswith("https://billing.stripe.com/p/session/")
    flow = fake.calls_to("POST", "/v1/billing_portal/sessions")[-1].params["flow_data"]
    assert flow["type"] == "subscription_update_confirm"
    assert flow["subscription_update_confirm"]["subscription"] == sub
    assert flow["subscription_update_confirm"]["items"][0]["price"] == "price_business"

    owner.post(url("billing_plan_change", org_a), {"plan": "free"})
    flow = fake.calls_to("POST", "/v1/billing_portal/sessions")[-1].params["flow_data"]
    assert flow == {"type": "subscription_cancel", "subscription_cancel": {"subscription": sub}}

    same = owner.post(url("billing_plan_change", org_a), {"plan": "pro"}, follow=True)
    assert "already on this plan" in same.content.decode()
    assert len(fake.calls_to("POST", "/v1/checkout/sessions")) == 1


def test_portal_button_opens_the_customer_portal(client_for, org_a, fake):
    response = client_for("a", "owner").post(url("billing_portal", org_a))
    assert response.status_code == 303 and response["Location"].startswith("https://billing.stripe.com/p/session/")
    [call] = fake.calls_to("POST", "/v1/billing_portal/sessions")
    assert call.params["customer"] == account(org_a).stripe_customer_id
    assert call.params["return_url"] == f"http://testserver/o/{org_a.slug}/billing/"


def test_failed_payment_keeps_the_plan_during_grace_then_dunning_drops_to_free(
        client_for, org_a, fake, prices, endpoint, stripe_client, settings, django_capture_on_commit_callbacks):
    settings.BILLING_GRACE_DAYS = 7
    sub = subscribe(client_for, fake, endpoint, stripe_client, org_a, "pro")
    failed, past_due = fake.renewal_fail(sub)
    for event in (failed, past_due):
        assert deliver(stripe_client, endpoint, event).status_code == 200
    assert state(org_a) == ("pro", "past_due")
    panel = client_for("a", "owner").get(url("billing_home", org_a)).content.decode()
    assert "Your last payment failed" in panel

    now = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        assert billing_dunning_run.delay(now=(now + timedelta(days=6)).isoformat()).get() == 0
    assert state(org_a) == ("pro", "past_due")
    assert mail.outbox == []

    with django_capture_on_commit_callbacks(execute=True):
        assert billing_dunning_run.delay(now=(now + timedelta(days=8)).isoformat()).get() == 1
        assert billing_dunning_run.delay(now=(now + timedelta(days=9)).isoformat()).get() == 0
    assert state(org_a) == ("free", "past_due")
    [email] = mail.outbox
    assert email.to == ["owner-a@example.com"]
    assert "Free plan" in email.subject and f"/o/{org_a.slug}/billing/" in email.body
    with schema_context(org_a.schema_name):
        [downgrade] = AuditEvent.objects.filter(action="billing.downgraded")
    assert (downgrade.before, downgrade.after) == ({"plan": "pro", "status": "past_due"},
                                                   {"plan": "free", "status": "past_due"})
    assert fake.calls_to("GET", f"/v1/subscriptions/{sub}"), "dunning re-reads the subscription before acting"

    # Paying the open invoice brings the plan back.
    for event in fake.invoice_pay(failed["data"]["object"]["id"]):
        assert deliver(stripe_client, endpoint, event).status_code == 200
    assert state(org_a) == ("pro", "active")


def test_a_failing_webhook_is_stored_and_a_retry_processes_it(org_a, fake, prices, endpoint, stripe_client):
    # A subscription on a price no plan is mapped to yet: our handler refuses it.
    fake.price_add("price_team", unit_amount=9900, name="Team")
    customer = stripe_customer_ensure(organization=org_a)
    subscription = fake._subscription_create(customer=customer.id, price=fake.get("price", "price_team"), metadata={})
    created = fake.event("customer.subscription.created", subscription)

    assert deliver(stripe_client, endpoint, created).status_code == 500
    trigger = WebhookEventTrigger.objects.get(webhook_endpoint=endpoint, valid=True)
    assert not trigger.processed and "price_team" in trigger.exception and trigger.traceback
    assert not Event.objects.filter(id=created["id"]).exists()
    assert state(org_a) == ("free", "active")

    out = io.StringIO()
    with pytest.raises(Exception, match="still fail"):
        call_command("billing_webhook_retry", stdout=out)
    Plan.objects.filter(code="business").update(stripe_price_id="price_team")
    call_command("billing_webhook_retry", stdout=out)

    trigger.refresh_from_db()
    assert trigger.processed and trigger.exception == ""
    assert Event.objects.filter(id=created["id"]).exists()
    assert state(org_a) == ("business", "active")
    call_command("billing_webhook_retry", stdout=out)
    assert out.getvalue().splitlines()[-1] == "0 processed, 0 still failing."


def test_cancelled_checkout_returns_to_billing_with_a_message(client_for, org_a):
    response = client_for("a", "owner").get(url("billing_checkout_cancelled", org_a), follow=True)
    assert response.redirect_chain == [(url("billing_home", org_a), 302)]
    assert "Checkout cancelled" in response.content.decode()
    success = client_for("a", "owner").get(url("billing_checkout_success", org_a) + "?session_id=cs_x", follow=True)
    assert "Stripe is confirming your payment" in success.content.decode()


def test_billing_page_shows_the_actions_and_invoices(client_for, org_a, fake, prices, endpoint, stripe_client):
    subscribe(client_for, fake, endpoint, stripe_client, org_a, "pro")
    owner_panel = client_for("a", "owner").get(url("billing_home", org_a)).content.decode()
    assert 'name="plan" value="business"' in owner_panel and 'name="credits"' in owner_panel
    assert url("billing_portal", org_a) in owner_panel
    assert "FAKE-0001" in owner_panel and "USD 49.00" in owner_panel and "Paid" in owner_panel

    member_panel = client_for("a", "member").get(url("billing_home", org_a)).content.decode()
    assert "Only owners and admins" in member_panel and 'name="credits"' not in member_panel
    assert "FAKE-0001" in member_panel


def test_fake_answers_meter_events_with_an_idempotent_identifier(fake):
    params = {"event_name": "prumo_credits", "payload": {"stripe_customer_id": "cus_x", "value": "12"},
              "identifier": "usage-2031-01-01-1"}
    api = {"api_key": "sk_test_" + "0" * 24, "stripe_version": API_VERSION}
    event = stripe.billing.MeterEvent.create(**params, **api)
    assert event.identifier == "usage-2031-01-01-1"
    with pytest.raises(stripe.InvalidRequestError):
        stripe.billing.MeterEvent.create(**params, **api)
    assert [call.params["payload"]["value"] for call in fake.calls_to("POST", "/v1/billing/meter_events")] == ["12"] * 2
