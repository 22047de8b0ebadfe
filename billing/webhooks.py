"""Stripe webhooks, after dj-stripe has verified the signature and re-fetched the object.

dj-stripe's own receivers run first (its app is ready before ours) and store the current
Session/Subscription/Invoice from the API. Ours then derive state from what is stored, so
the event payload's age and the delivery order do not matter. dj-stripe runs all receivers
in one transaction and records the Event only if they all succeed: a failed receiver leaves
its `WebhookEventTrigger` with `processed=False` and the traceback, Stripe redelivers the
event, and `manage.py billing_webhook_retry` processes stored failures.
"""

from __future__ import annotations

import logging
from traceback import format_exc

from django.db import transaction
from django.db.models import QuerySet
from djstripe.models import Event, Session, Subscription, WebhookEventTrigger
from djstripe.settings import djstripe_settings
from djstripe.signals import WEBHOOK_SIGNALS
from djstripe.utils import get_id_from_stripe_data

from .stripe import (
    billing_account_sync,
    checkout_topup_fulfil,
    organization_for_customer,
    subscription_refresh,
)

logger = logging.getLogger(__name__)


def _object(event: Event) -> dict:
    return event.data.get("object") or {}


def checkout_session_paid(sender, event: Event, **kwargs) -> None:
    """checkout.session.completed / async_payment_succeeded: a top-up adds credits; a subscription links up."""
    session = Session.objects.filter(id=_object(event).get("id")).first()
    if session is None:
        return
    if session.mode == "payment":
        checkout_topup_fulfil(session=session)
    elif session.mode == "subscription":
        organization = organization_for_customer(get_id_from_stripe_data(session.stripe_data.get("customer")))
        if organization is not None:
            billing_account_sync(organization=organization)


def subscription_changed(sender, event: Event, **kwargs) -> None:
    """customer.subscription.created|updated|deleted: the plan follows the subscription."""
    subscription = Subscription.objects.select_related("customer").filter(id=_object(event).get("id")).first()
    organization = organization_for_customer(subscription.customer.id) if subscription else None
    if organization is None:
        logger.warning("stripe event %s: no organization for subscription %s", event.id, _object(event).get("id"))
        return
    billing_account_sync(organization=organization)


def invoice_settled(sender, event: Event, **kwargs) -> None:
    """invoice.paid / invoice.payment_failed: re-fetch the invoice's subscription, then follow it."""
    invoice = _object(event)
    subscription_id = get_id_from_stripe_data(invoice.get("subscription")) or (
        ((invoice.get("parent") or {}).get("subscription_details") or {}).get("subscription"))
    organization = organization_for_customer(get_id_from_stripe_data(invoice.get("customer")))
    if not subscription_id or organization is None:
        return
    subscription_refresh(subscription_id=subscription_id)
    billing_account_sync(organization=organization)


RECEIVERS = {
    "checkout.session.completed": checkout_session_paid,
    "checkout.session.async_payment_succeeded": checkout_session_paid,
    "customer.subscription.created": subscription_changed,
    "customer.subscription.updated": subscription_changed,
    "customer.subscription.deleted": subscription_changed,
    "invoice.paid": invoice_settled,
    "invoice.payment_failed": invoice_settled,
}


def webhook_receivers_connect() -> None:
    for event_type, receiver in RECEIVERS.items():
        WEBHOOK_SIGNALS[event_type].connect(receiver, sender=Event, dispatch_uid=f"billing:{event_type}")


def webhook_failed_list() -> QuerySet[WebhookEventTrigger]:
    """Verified deliveries whose processing failed (never the unverified ones: those are not trusted)."""
    return WebhookEventTrigger.objects.filter(valid=True, processed=False).order_by("created", "id")


def webhook_trigger_retry(*, trigger: WebhookEventTrigger) -> bool:
    """Process a stored delivery again. Safe to repeat: an event already processed is not processed twice."""
    if not trigger.valid:
        return False
    if trigger.processed:
        return True
    account = trigger.stripe_trigger_account
    api_key = (account.default_api_key if account else None) or djstripe_settings.STRIPE_SECRET_KEY
    try:
        with transaction.atomic():
            trigger.process(save=False, api_key=api_key)
    except Exception as error:  # recorded on the trigger, as dj-stripe does on delivery
        max_length = WebhookEventTrigger._meta.get_field("exception").max_length
        trigger.exception, trigger.traceback, trigger.processed = str(error)[:max_length], format_exc(), False
        trigger.save(update_fields=["exception", "traceback", "processed", "updated"])
        logger.warning("stripe webhook trigger %s failed again: %s", trigger.pk, error)
        return False
    trigger.save(update_fields=["event", "processed", "exception", "traceback", "updated"])
    return True
