"""Billing actions through Stripe: plan changes and top-ups via Checkout, the Customer Portal.

Changes are POST-only and for owners and admins; Stripe sends the user back to the
success/cancel pages, but only signed webhooks change plans or credits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import stripe
from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from tenants.guards import org_member_required

from .models import Plan
from .selectors import plan_list_public
from .services import FREE_PLAN
from .stripe import (
    BillingChangeRefused,
    UnknownStripePrice,
    billing_target_for,
    checkout_topup_create,
    invoice_list,
    plan_change_start,
    portal_session_create,
)

logger = logging.getLogger(__name__)


def _absolute(request: HttpRequest, name: str) -> str:
    return request.build_absolute_uri(reverse(name, args=[request.tenant.slug]))


def _to_stripe(request: HttpRequest, start: Callable[[], str]) -> HttpResponse:
    """Redirect to the Stripe page `start` creates, or back to billing with the reason it could not."""
    try:
        return HttpResponseRedirect(start(), status=303)
    except BillingChangeRefused as refused:
        messages.error(request, str(refused))
    except stripe.StripeError:
        logger.exception("stripe call failed for %s", request.tenant.slug)
        messages.error(request, _("We could not reach Stripe. Nothing was charged; please try again in a moment."))
    return redirect("billing_home", request.tenant.slug)


def _checkout_urls(request: HttpRequest) -> dict:
    # Stripe replaces {CHECKOUT_SESSION_ID}; it must not be URL-encoded.
    return {"success_url": _absolute(request, "billing_checkout_success") + "?session_id={CHECKOUT_SESSION_ID}",
            "cancel_url": _absolute(request, "billing_checkout_cancelled")}


@org_member_required(role="admin")
@require_POST
def billing_plan_change(request: HttpRequest) -> HttpResponse:
    plan = plan_list_public().filter(code=request.POST.get("plan", "")).first()
    if plan is None:
        messages.error(request, _("Choose one of the plans."))
        return redirect("billing_home", request.tenant.slug)
    return _to_stripe(request, lambda: plan_change_start(
        organization=request.tenant, plan=plan, user=request.user, return_url=_absolute(request, "billing_home"),
        **_checkout_urls(request)))


@org_member_required(role="admin")
@require_POST
def billing_topup(request: HttpRequest) -> HttpResponse:
    try:
        credits = int(request.POST.get("credits", ""))
    except ValueError:
        messages.error(request, _("Enter how many credits to buy, as a whole number."))
        return redirect("billing_home", request.tenant.slug)
    return _to_stripe(request, lambda: checkout_topup_create(
        organization=request.tenant, credits=credits, user=request.user, **_checkout_urls(request)))


@org_member_required(role="admin")
@require_POST
def billing_portal(request: HttpRequest) -> HttpResponse:
    return _to_stripe(request, lambda: portal_session_create(
        organization=request.tenant, return_url=_absolute(request, "billing_home")))


@org_member_required
@require_GET
def billing_checkout_success(request: HttpRequest) -> HttpResponse:
    messages.success(request, _("Thank you! Stripe is confirming your payment; your plan and credits update "
                                "within a minute."))
    return redirect("billing_home", request.tenant.slug)


@org_member_required
@require_GET
def billing_checkout_cancelled(request: HttpRequest) -> HttpResponse:
    messages.info(request, _("Checkout cancelled. Nothing was charged."))
    return redirect("billing_home", request.tenant.slug)


def _grace_until(organization):
    try:
        return billing_target_for(organization=organization).grace_until
    except UnknownStripePrice:
        return None


@dataclass(frozen=True)
class PlanCard:
    """A plan as the billing page shows it: whether it is the current one and the one action it offers.

    `action` is "upgrade" or "switch" (a POST to billing_plan_change), "contact" (a plan not sold online),
    or "" (the current plan, or a member who may not change it).
    """

    plan: Plan
    current: bool
    action: str


def plan_cards(plans, *, current: Plan | None, can_manage: bool) -> list[PlanCard]:
    cards = []
    for plan in plans:
        is_current = current is not None and plan.pk == current.pk
        if is_current or not can_manage:
            action = ""
        elif not plan.stripe_price_id and plan.code != FREE_PLAN:
            action = "contact"
        elif (plan.sort_order, plan.monthly_price_cents) > (current.sort_order, current.monthly_price_cents):
            action = "upgrade"
        else:
            action = "switch"
        cards.append(PlanCard(plan=plan, current=is_current, action=action))
    return cards


def billing_panel_context(request: HttpRequest, account) -> dict:
    """The plan cards, top-up and portal forms and the invoices, for the billing page."""
    organization = request.tenant
    can_manage = request.membership.has_role("admin")
    return {
        "plan_cards": plan_cards(plan_list_public(), current=account.plan, can_manage=can_manage),
        "sales_email": settings.BILLING_SALES_EMAIL,
        "can_manage": can_manage,
        "grace_until": _grace_until(organization) if account.status == account.Status.PAST_DUE else None,
        "invoices": invoice_list(organization=organization),
        "topup": {"min": settings.BILLING_TOPUP_MIN_CREDITS, "max": settings.BILLING_TOPUP_MAX_CREDITS,
                  "initial": max(settings.BILLING_TOPUP_MIN_CREDITS, 5000),
                  "per_usd": settings.BILLING_CREDITS_PER_USD},
    }
