"""Settings → Webhooks (/o/<slug>/settings/webhooks/): endpoints, their delivery log, test events.

Admins and owners only; on a plan without webhooks the page says so and changes are refused.
A new endpoint's signing secret (and a rotated one) is shown once, in the answer to the POST.
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST

from billing.models import BillingAccount
from billing.selectors import entitlements_for
from billing.services import credits_low_threshold_set
from tenants.audit.services import Actor
from tenants.guards import org_member_required
from tenants.models import Role

from .events import EVENT_TYPES
from .forms import CreditsLowForm, WebhookEndpointForm
from .models import WebhookDelivery, WebhookEndpoint
from .selectors import delivery_list, endpoint_list
from .services import (
    webhook_deliveries_replay_failed,
    webhook_delivery_replay,
    webhook_endpoint_create,
    webhook_endpoint_delete,
    webhook_endpoint_secret_rotate,
    webhook_endpoint_test,
    webhook_endpoint_update,
)

DELIVERIES_SHOWN = 50
ACTIONS = frozenset({"test", "rotate", "enable", "disable", "delete", "replay-failed"})
REPLAY_HOURS = {"1": 1, "24": 24, "168": 168, "720": 720}


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"  # the page may hold a secret
    return response


def _plan_check(request: HttpRequest) -> None:
    if not entitlements_for(request.tenant).webhooks:
        raise PermissionDenied(_("Your plan does not include webhooks."))


@org_member_required(role=Role.ADMIN)
def webhooks_settings(request: HttpRequest) -> HttpResponse:
    allowed = entitlements_for(request.tenant).webhooks
    form = WebhookEndpointForm(request.POST or None)
    new_secret = None
    if request.method == "POST":
        _plan_check(request)
        if form.is_valid():
            try:
                new = webhook_endpoint_create(organization=request.tenant, actor=Actor.from_request(request),
                                              url=form.cleaned_data["url"],
                                              description=form.cleaned_data["description"],
                                              event_types=form.cleaned_data["event_types"],
                                              include_message_text=form.cleaned_data["include_message_text"])
            except ValidationError as error:
                form.add_error("url", error)
            else:
                new_secret = new.secret
                form = WebhookEndpointForm()
    context = {"allowed": allowed, "form": form, "endpoints": endpoint_list(), "new_secret": new_secret,
               "event_types": EVENT_TYPES, "credits_low_form": _credits_low_form(request)}
    return _no_store(render(request, "webhooks/settings.html", context))


def _credits_low_form(request: HttpRequest, data=None) -> CreditsLowForm:
    threshold = BillingAccount.objects.filter(pk=request.tenant.pk).values_list("credits_low_threshold",
                                                                                 flat=True).first()
    return CreditsLowForm(data, initial={"threshold": threshold})


@org_member_required(role=Role.ADMIN)
@require_POST
def webhooks_credits_low(request: HttpRequest) -> HttpResponse:
    """Set the balance under which `credits.low` is sent (stored on the billing account)."""
    _plan_check(request)
    form = _credits_low_form(request, request.POST)
    if not form.is_valid():
        context = {"allowed": True, "form": WebhookEndpointForm(), "endpoints": endpoint_list(),
                   "event_types": EVENT_TYPES, "credits_low_form": form}
        return _no_store(render(request, "webhooks/settings.html", context, status=400))
    credits_low_threshold_set(organization=request.tenant, threshold=form.cleaned_data["threshold"],
                              actor=Actor.from_request(request))
    messages.success(request, _("Saved."))
    return redirect("webhooks_settings", request.tenant.slug)


@org_member_required(role=Role.ADMIN)
def webhook_endpoint_detail(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    endpoint = get_object_or_404(WebhookEndpoint, pk=endpoint_id)
    status = request.GET.get("status", "")
    deliveries = delivery_list(endpoint=endpoint, status=status)[:DELIVERIES_SHOWN]
    context = {"endpoint": endpoint, "deliveries": deliveries, "status": status,
               "allowed": entitlements_for(request.tenant).webhooks}
    return _no_store(render(request, "webhooks/endpoint.html", context))


@org_member_required(role=Role.ADMIN)
@require_POST
def webhook_endpoint_action(request: HttpRequest, endpoint_id: int, action: str) -> HttpResponse:
    """test, rotate, enable, disable or delete an endpoint."""
    if action not in ACTIONS:
        raise Http404
    _plan_check(request)
    endpoint = get_object_or_404(WebhookEndpoint, pk=endpoint_id)
    actor = Actor.from_request(request)
    if action == "test":
        webhook_endpoint_test(organization=request.tenant, endpoint=endpoint, actor=actor)
        messages.success(request, _("A test event is on its way."))
    elif action == "rotate":
        secret = webhook_endpoint_secret_rotate(organization=request.tenant, actor=actor, endpoint=endpoint)
        context = {"endpoint": endpoint, "new_secret": secret, "allowed": True,
                   "deliveries": delivery_list(endpoint=endpoint)[:DELIVERIES_SHOWN]}
        return _no_store(render(request, "webhooks/endpoint.html", context))
    elif action in ("enable", "disable"):
        webhook_endpoint_update(organization=request.tenant, actor=actor, endpoint=endpoint, url=endpoint.url,
                                description=endpoint.description, event_types=endpoint.event_types,
                                enabled=action == "enable")
    elif action == "replay-failed":
        hours = REPLAY_HOURS.get(request.POST.get("hours", ""), 24)
        try:
            count = webhook_deliveries_replay_failed(organization=request.tenant, endpoint=endpoint, actor=actor,
                                                     since=timezone.now() - timedelta(hours=hours))
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
        else:
            messages.success(request, ngettext("%(count)s delivery is being sent again.",
                                               "%(count)s deliveries are being sent again.", count) % {"count": count})
    elif action == "delete":
        webhook_endpoint_delete(organization=request.tenant, actor=actor, endpoint=endpoint)
        messages.success(request, _("Endpoint deleted."))
        return redirect("webhooks_settings", request.tenant.slug)
    return redirect("webhook_endpoint", request.tenant.slug, endpoint.pk)


@org_member_required(role=Role.ADMIN)
@require_POST
def webhook_delivery_replay_view(request: HttpRequest, endpoint_id: int, delivery_id: int) -> HttpResponse:
    _plan_check(request)
    delivery = get_object_or_404(WebhookDelivery.objects.select_related("endpoint"), pk=delivery_id,
                                 endpoint_id=endpoint_id)
    try:
        webhook_delivery_replay(organization=request.tenant, delivery=delivery,
                                actor=Actor.from_request(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, _("The event is being sent again."))
    return redirect("webhook_endpoint", request.tenant.slug, endpoint_id)
