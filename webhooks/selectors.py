"""Reads for webhook endpoints and their deliveries, in the current organization's schema."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from .events import EVENT_TYPES, OPT_IN
from .models import WebhookAttempt, WebhookDelivery, WebhookEndpoint


def endpoint_list() -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.order_by("-created_at", "-id")


def delivery_list(*, endpoint: WebhookEndpoint, status: str = "") -> QuerySet[WebhookDelivery]:
    """The endpoint's deliveries, newest first, each with its message and tries (the last one is shown)."""
    deliveries = (WebhookDelivery.objects.filter(endpoint=endpoint).select_related("message")
                  .prefetch_related(Prefetch("tries", queryset=WebhookAttempt.objects.order_by("number"))))
    if status:
        deliveries = deliveries.filter(status=status)
    return deliveries


def event_type_list() -> list[dict]:
    return [{"type": name, "description": str(description), "opt_in": name in OPT_IN}
            for name, description in EVENT_TYPES.items()]
