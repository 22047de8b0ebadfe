"""Stripe through dj-stripe: the Organization is the Stripe customer.

Writes that start in our pages (customer, Checkout, Customer Portal) and the one function
that decides an organization's plan from its Stripe subscriptions, `billing_account_sync`.
That decision reads only the subscriptions' current state (as dj-stripe re-fetched it from
the API) and the clock, never the order events arrived in, so replays and out-of-order
deliveries end in the same state.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import stripe
from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, gettext_noop
from djstripe.models import Customer, Invoice, Session, Subscription, WebhookEndpoint
from djstripe.settings import djstripe_settings
from djstripe.utils import get_id_from_stripe_data

from accounts.models import User
from core.events import event_emit
from tenants.audit.services import Actor, audit_record
from tenants.models import Organization

from .ledger import Movement, credit_purchase
from .models import BillingAccount, Plan
from .services import FREE_PLAN, billing_account_ensure, credits_grant_monthly

logger = logging.getLogger(__name__)

# Subscriptions that still decide the plan. `incomplete` never started; `canceled`,
# `incomplete_expired` and `paused` no longer give anything.
LIVE_STATUSES = ("active", "trialing", "past_due", "unpaid")
WEBHOOK_EVENTS = [
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_failed",
]


class BillingChangeRefused(Exception):
    """A change the organization cannot make; the message is for the user."""


class UnknownStripePrice(Exception):
    """A subscription's prices match no Plan's `stripe_price_id`: staff must map it, then retry the webhook."""


def stripe_request_options() -> dict:
    """Key and pinned API version for direct stripe SDK calls."""
    return {"api_key": djstripe_settings.STRIPE_SECRET_KEY, "stripe_version": djstripe_settings.STRIPE_API_VERSION}


# Customer, Checkout, Portal


def stripe_customer_ensure(*, organization: Organization) -> Customer:
    """The organization's Stripe customer (created once, idempotently), its id kept on the billing account."""
    billing_account_ensure(organization)
    customer, _created = Customer.get_or_create(
        subscriber=organization, livemode=settings.STRIPE_LIVE_MODE, api_key=djstripe_settings.STRIPE_SECRET_KEY,
        metadata={"organization_slug": organization.slug}, description=organization.name,
    )
    BillingAccount.objects.filter(pk=organization.pk).exclude(stripe_customer_id=customer.id).update(
        stripe_customer_id=customer.id, updated_at=timezone.now())
    return customer


def subscription_live_for(*, organization: Organization) -> Subscription | None:
    """The subscription that decides the plan: the newest one still live."""
    return (Subscription.objects.filter(customer__subscriber=organization, stripe_data__status__in=LIVE_STATUSES)
            .order_by("-created", "-djstripe_id").first())


def _subscription_items(subscription: Subscription) -> list[dict]:
    return list((subscription.stripe_data.get("items") or {}).get("data") or [])


def subscription_plan(subscription: Subscription) -> Plan:
    """The Plan whose Stripe price is on the subscription (other items, such as metered ones, are ignored)."""
    price_ids = [get_id_from_stripe_data(item.get("price")) for item in _subscription_items(subscription)]
    plan = Plan.objects.filter(stripe_price_id__in=[p for p in price_ids if p]).first()
    if plan is None:
        raise UnknownStripePrice(f"subscription {subscription.id}: no plan has price {', '.join(map(str, price_ids))}")
    return plan


def checkout_subscription_create(*, organization: Organization, plan: Plan, user: User, success_url: str,
                                 cancel_url: str) -> str:
    """A Checkout Session (subscription mode) for `plan`; returns the URL to send the user to."""
    if not plan.stripe_price_id:
        raise BillingChangeRefused(_("This plan cannot be bought online. Please contact us."))
    customer = stripe_customer_ensure(organization=organization)
    metadata = {"organization_id": str(organization.pk), "purpose": "subscription", "plan": plan.code}
    session = stripe.checkout.Session.create(
        mode="subscription", customer=customer.id, line_items=[{"price": plan.stripe_price_id, "quantity": 1}],
        success_url=success_url, cancel_url=cancel_url, client_reference_id=str(organization.pk),
        metadata={**metadata, "user_id": str(user.pk)}, subscription_data={"metadata": metadata},
        **stripe_request_options(),
    )
    return session.url


def topup_price_cents(credits: int) -> int:
    """What `credits` cost, in cents of BILLING_CURRENCY (rounded up to a whole cent)."""
    return math.ceil(credits * 100 / settings.BILLING_CREDITS_PER_USD)


def checkout_topup_create(*, organization: Organization, credits: int, user: User, success_url: str,
                          cancel_url: str) -> str:
    """A Checkout Session (payment mode) buying `credits`; the webhook adds them once paid."""
    low, high = settings.BILLING_TOPUP_MIN_CREDITS, settings.BILLING_TOPUP_MAX_CREDITS
    if not low <= credits <= high:
        raise BillingChangeRefused(
            _("Choose between %(low)s and %(high)s credits.") % {"low": f"{low:,}", "high": f"{high:,}"})
    customer = stripe_customer_ensure(organization=organization)
    cents = topup_price_cents(credits)
    metadata = {"organization_id": str(organization.pk), "purpose": "topup", "credits": str(credits),
                "amount_cents": str(cents), "currency": settings.BILLING_CURRENCY}
    session = stripe.checkout.Session.create(
        mode="payment", customer=customer.id,
        line_items=[{"quantity": 1, "price_data": {
            "currency": settings.BILLING_CURRENCY, "unit_amount": cents,
            "product_data": {"name": f"{credits:,} Prumo credits"},
        }}],
        success_url=success_url, cancel_url=cancel_url, client_reference_id=str(organization.pk),
        metadata={**metadata, "user_id": str(user.pk)}, payment_intent_data={"metadata": metadata},
        **stripe_request_options(),
    )
    return session.url


def portal_session_create(*, organization: Organization, return_url: str, flow_data: dict | None = None) -> str:
    """A Customer Portal session (payment methods, invoices, cancellation); returns its URL."""
    customer = stripe_customer_ensure(organization=organization)
    params = {"customer": customer.id, "return_url": return_url}
    if flow_data:
        params["flow_data"] = flow_data
    return stripe.billing_portal.Session.create(**params, **stripe_request_options()).url


def plan_change_start(*, organization: Organization, plan: Plan, user: User, success_url: str, cancel_url: str,
                      return_url: str) -> str:
    """Where to send the user to move to `plan`.

    Without a live subscription: Checkout. With one: the Customer Portal's confirmation page
    for the new price (or for cancelling, to go to Free), so Stripe prorates and the
    organization never holds two subscriptions.
    """
    live = subscription_live_for(organization=organization)
    if live is None:
        if plan.code == FREE_PLAN:
            raise BillingChangeRefused(_("You are already on the Free plan."))
        return checkout_subscription_create(organization=organization, plan=plan, user=user,
                                            success_url=success_url, cancel_url=cancel_url)
    current = subscription_plan(live)
    if plan.pk == current.pk:
        raise BillingChangeRefused(_("You are already on this plan."))
    if plan.code == FREE_PLAN:
        flow = {"type": "subscription_cancel", "subscription_cancel": {"subscription": live.id}}
    elif not plan.stripe_price_id:
        raise BillingChangeRefused(_("This plan cannot be bought online. Please contact us."))
    else:
        item = next(item for item in _subscription_items(live)
                    if get_id_from_stripe_data(item["price"]) == current.stripe_price_id)
        flow = {"type": "subscription_update_confirm", "subscription_update_confirm": {
            "subscription": live.id, "items": [{"id": item["id"], "price": plan.stripe_price_id, "quantity": 1}]}}
    return portal_session_create(organization=organization, return_url=return_url, flow_data=flow)


# Webhook endpoint


def webhook_endpoint_register(*, base_url: str) -> WebhookEndpoint:
    """Create the webhook endpoint on Stripe (pinned API version) and keep its signing secret.

    Stripe reveals the secret only in this answer. dj-stripe's admin does the same for public
    URLs; `manage.py stripe_listen` for local development with the Stripe CLI.
    """
    endpoint = WebhookEndpoint()
    path = reverse("djstripe:djstripe_webhook_by_uuid", kwargs={"uuid": endpoint.djstripe_uuid})
    data = WebhookEndpoint._api_create(
        url=base_url.rstrip("/") + path, api_version=djstripe_settings.STRIPE_API_VERSION,
        enabled_events=WEBHOOK_EVENTS, metadata={"djstripe_uuid": str(endpoint.djstripe_uuid)},
        api_key=djstripe_settings.STRIPE_SECRET_KEY,
    )
    return WebhookEndpoint.sync_from_stripe_data(data, api_key=djstripe_settings.STRIPE_SECRET_KEY)


# Plan and status from the subscriptions


@dataclass(frozen=True)
class BillingTarget:
    """What an organization's plan and status should be, given its subscriptions and the time."""

    plan: Plan
    status: str
    grace_until: datetime | None = None


def _past_due_since(subscription: Subscription) -> datetime:
    # The unpaid period started at the renewal that failed; newer API versions keep it on the items.
    data = subscription.stripe_data
    stamp = data.get("current_period_start") or next(
        (item["current_period_start"] for item in _subscription_items(subscription)
         if item.get("current_period_start")), None) or data.get("created")
    return datetime.fromtimestamp(int(stamp), tz=UTC)


def billing_target_for(*, organization: Organization, now: datetime | None = None) -> BillingTarget:
    now = now or timezone.now()
    free = Plan.objects.get(code=FREE_PLAN)
    live = subscription_live_for(organization=organization)
    if live is None:
        ended = Subscription.objects.filter(customer__subscriber=organization, stripe_data__status="canceled")
        return BillingTarget(plan=free, status=BillingAccount.Status.CANCELED if ended.exists()
                             else BillingAccount.Status.ACTIVE)
    plan = subscription_plan(live)
    status = live.stripe_data.get("status")
    if status in ("active", "trialing"):
        return BillingTarget(plan=plan, status=BillingAccount.Status.ACTIVE)
    grace_until = _past_due_since(live) + timedelta(days=settings.BILLING_GRACE_DAYS)
    if status == "past_due" and now < grace_until:
        return BillingTarget(plan=plan, status=BillingAccount.Status.PAST_DUE, grace_until=grace_until)
    # Grace over, or `unpaid` (Stripe stopped retrying): the plan goes until someone pays.
    return BillingTarget(plan=free, status=BillingAccount.Status.PAST_DUE, grace_until=grace_until)


def billing_account_sync(*, organization: Organization, now: datetime | None = None,
                         actor: Actor | None = None) -> BillingAccount:
    """Bring the billing account to `billing_target_for`; audits (and notifies) only real changes."""
    from .tasks import billing_downgrade_notify

    billing_account_ensure(organization)
    with transaction.atomic():
        account = BillingAccount.objects.select_for_update(of=("self",)).select_related("plan").get(pk=organization.pk)
        # Decided under the row lock, so concurrent webhooks for one organization apply one after another.
        target = billing_target_for(organization=organization, now=now)
        before = {"plan": account.plan.code, "status": account.status}
        after = {"plan": target.plan.code, "status": target.status}
        if before == after:
            return account
        previous_plan = account.plan.name
        account.plan, account.status = target.plan, target.status
        account.plan_note = account.plan_note if before["plan"] == after["plan"] else ""
        account.save(update_fields=["plan", "status", "plan_note", "updated_at"])
        downgraded = (before["plan"] != FREE_PLAN and after["plan"] == FREE_PLAN
                      and BillingAccount.Status.PAST_DUE in (before["status"], after["status"]))
        action = ("billing.downgraded" if downgraded
                  else "billing.plan_changed" if before["plan"] != after["plan"] else "billing.status_changed")
        audit_record(organization=organization, actor=actor or Actor.system("stripe"), action=action,
                     target=account, before=before, after=after)
        subscription_event_emit(organization=organization, before=before, after=after, source="stripe",
                                grace_until=target.grace_until)
        if before["plan"] != after["plan"]:
            credits_grant_monthly(organization)  # an upgrade gets the difference now; a downgrade nothing
        if downgraded:
            organization_id = organization.pk
            transaction.on_commit(lambda: billing_downgrade_notify.delay(organization_id, previous_plan))
    logger.info("billing %s: %s -> %s", organization.slug, before, after)
    return account


def subscription_event_emit(*, organization: Organization, before: dict, after: dict, source: str,
                            grace_until: datetime | None = None) -> None:
    """`subscription.updated` for integrators, in the change's transaction: the plan and status, before and after."""
    event_emit(organization=organization, type="subscription.updated", data={
        "plan": after["plan"], "status": after["status"], "previous_plan": before["plan"],
        "previous_status": before["status"], "source": source,
        "grace_until": grace_until.isoformat() if grace_until else None,
    })


# The note of a plan set by hand unless one is given; seeded notes are in the translation catalog.
OPERATOR_NOTE = gettext_noop("Assigned by an operator")


class PlanDecidedByStripe(Exception):
    """The organization has a live subscription: its plan changes in Stripe (the billing page), not by hand."""


def plan_assign(*, organization: Organization, plan: Plan, actor: Actor, note: str = "") -> BillingAccount:
    """Put an organization on a plan no subscription decides: an operator's choice, or the development demo.

    Audited like a Stripe change; an upgrade gets the difference of this month's credits at once. The
    note says why (shown on the billing page). A later subscription change in Stripe decides again.
    """
    billing_account_ensure(organization)
    with transaction.atomic():
        account = BillingAccount.objects.select_for_update(of=("self",)).select_related("plan").get(pk=organization.pk)
        if subscription_live_for(organization=organization) is not None:
            raise PlanDecidedByStripe(organization.slug)
        before = {"plan": account.plan.code, "status": account.status, "note": account.plan_note}
        after = {"plan": plan.code, "status": BillingAccount.Status.ACTIVE.value, "note": note}
        if before == after:
            return account
        account.plan, account.status, account.plan_note = plan, BillingAccount.Status.ACTIVE, note
        account.save(update_fields=["plan", "status", "plan_note", "updated_at"])
        audit_record(organization=organization, actor=actor, action="billing.plan_assigned", target=account,
                     before=before, after=after)
        if (before["plan"], before["status"]) != (after["plan"], after["status"]):
            subscription_event_emit(organization=organization, before=before, after=after, source="operator")
        if before["plan"] != after["plan"]:
            credits_grant_monthly(organization)
    logger.info("billing %s: %s -> %s by %s", organization.slug, before, after, actor.label or actor.type)
    return account


def subscription_refresh(*, subscription_id: str) -> Subscription:
    """Re-fetch a subscription from Stripe and store it (dj-stripe does not refresh related objects)."""
    data = stripe.Subscription.retrieve(subscription_id, **stripe_request_options())
    return Subscription.sync_from_stripe_data(data, api_key=djstripe_settings.STRIPE_SECRET_KEY)


def organization_for_customer(customer_id: str | None) -> Organization | None:
    customer = Customer.objects.select_related("subscriber").filter(id=customer_id).first() if customer_id else None
    return customer.subscriber if customer else None


def _topup_paid_as_quoted(session: Session, credits: Decimal) -> bool:
    """Whether Stripe collected the price we quoted for `credits` (a discount or another currency is not it)."""
    metadata = session.metadata or {}
    expected_cents = int(metadata.get("amount_cents") or topup_price_cents(int(credits)))
    expected_currency = (metadata.get("currency") or settings.BILLING_CURRENCY).lower()
    return session.amount_total == expected_cents and (session.currency or "").lower() == expected_currency


def checkout_topup_fulfil(*, session: Session) -> Movement | None:
    """Add the credits a paid top-up Checkout bought, once: the session id is the idempotency key.

    Only when the session's `amount_total` and currency are the quoted price of those credits;
    otherwise nothing is credited, and the refusal is logged and audited for staff to settle.
    """
    metadata = session.metadata or {}
    if metadata.get("purpose") != "topup" or session.payment_status != "paid":
        return None
    organization = organization_for_customer(get_id_from_stripe_data(session.stripe_data.get("customer")))
    if organization is None or str(organization.pk) != metadata.get("organization_id"):
        raise ValueError(f"checkout session {session.id}: customer and organization do not match")
    credits = Decimal(metadata["credits"])
    if not _topup_paid_as_quoted(session, credits):
        logger.error("checkout session %s: paid %s %s, not the price of %s credits; nothing credited",
                     session.id, session.amount_total, session.currency, credits)
        audit_record(organization=organization, actor=Actor.system("stripe"), action="credits.purchase_refused",
                     target_type="djstripe.session", target_id=session.id, target_label=session.id,
                     after={"credits": str(credits), "amount_total": session.amount_total,
                            "currency": session.currency, "expected_cents": metadata.get("amount_cents")})
        return None
    with transaction.atomic():
        movement = credit_purchase(
            organization=organization, amount=credits, key=f"stripe:checkout:{session.id}",
            description="Stripe Checkout top-up",
            metadata={"checkout_session": session.id, "amount_total": session.amount_total,
                      "currency": session.currency},
        )
        if movement.created:
            audit_record(organization=organization, actor=Actor.system("stripe"), action="credits.purchased",
                         target_type="djstripe.session", target_id=session.id, target_label=session.id,
                         after={"credits": str(credits), "amount_total": session.amount_total,
                                "currency": session.currency})
            event_emit(organization=organization, type="credits.purchased", data={
                "credits": str(credits), "balance": str(movement.entry.balance_after),
                "amount_total": session.amount_total, "currency": session.currency, "entry_id": movement.entry.pk})
    return movement


# Reads for the billing page


INVOICE_STATUS_LABELS = {
    "draft": gettext_lazy("Draft"),
    "open": gettext_lazy("Open"),
    "paid": gettext_lazy("Paid"),
    "uncollectible": gettext_lazy("Uncollectible"),
    "void": gettext_lazy("Void"),
}


@dataclass(frozen=True)
class InvoiceRow:
    number: str
    created: datetime | None
    amount: Decimal
    currency: str
    status: str
    url: str

    @property
    def status_label(self) -> str:
        return INVOICE_STATUS_LABELS.get(self.status, self.status)


def invoice_list(*, organization: Organization, limit: int = 12) -> list[InvoiceRow]:
    rows = []
    for invoice in Invoice.objects.filter(customer__subscriber=organization).order_by("-created")[:limit]:
        data = invoice.stripe_data
        currency = (data.get("currency") or "").lower()
        divisor = 1 if currency in djstripe_settings.ZERO_DECIMAL_CURRENCIES else 100
        rows.append(InvoiceRow(
            number=data.get("number") or invoice.id, created=invoice.created,
            amount=Decimal(data.get("total") or 0) / divisor, currency=currency.upper(),
            status=data.get("status") or "", url=data.get("hosted_invoice_url") or "",
        ))
    return rows
