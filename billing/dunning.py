"""Dunning: a past-due subscription keeps its plan for BILLING_GRACE_DAYS, then the plan drops to Free.

The decision itself is `billing.stripe.billing_target_for` (state and clock only); this runs it
for every past-due account, after re-fetching the subscription so a payment whose webhook we
missed never costs anyone their plan.
"""

from __future__ import annotations

import logging
from datetime import datetime

import stripe
from django.conf import settings
from django.core.mail import send_mail
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from accounts.models import User
from tenants.audit.services import Actor
from tenants.models import Organization, Role

from .models import BillingAccount
from .services import FREE_PLAN
from .stripe import UnknownStripePrice, billing_account_sync, subscription_live_for, subscription_refresh

logger = logging.getLogger(__name__)


def dunning_run(*, now: datetime | None = None) -> int:
    """Downgrade past-due accounts whose grace period is over. Returns how many changed plan."""
    now = now or timezone.now()
    changed = 0
    accounts = (BillingAccount.objects.filter(status=BillingAccount.Status.PAST_DUE)
                .exclude(plan__code=FREE_PLAN).select_related("organization"))
    for account in accounts:
        organization = account.organization
        live = subscription_live_for(organization=organization)
        try:
            if live is not None:
                subscription_refresh(subscription_id=live.id)
            after = billing_account_sync(organization=organization, now=now, actor=Actor.system("dunning"))
        except (stripe.StripeError, UnknownStripePrice):
            logger.exception("dunning: skipped %s this run", organization.slug)
            continue
        changed += after.plan_id != account.plan_id
    return changed


def downgrade_notify_owners(*, organization: Organization, previous_plan: str) -> int:
    """Email every owner, each in their language, that the organization is now on Free."""
    owners = User.objects.filter(memberships__organization=organization, memberships__role=Role.OWNER, is_active=True)
    url = settings.SITE_URL.rstrip("/") + reverse("billing_home", args=[organization.slug])
    sent = 0
    for owner in owners:
        with translation.override(owner.language):
            context = {"organization": organization.name, "plan": previous_plan, "days": settings.BILLING_GRACE_DAYS,
                       "url": url}
            subject = _("%(organization)s is now on the Free plan") % context
            body = _(
                "We could not collect the payment for %(organization)s's %(plan)s plan, and the %(days)s-day "
                "grace period has ended, so the organization is now on the Free plan.\n\n"
                "Update your payment method and pay the open invoice to get %(plan)s back:\n%(url)s\n"
            ) % context
        send_mail(subject, body, None, [owner.email])
        sent += 1
    return sent
