"""The catalogue of event types an endpoint can subscribe to (those emitted today)."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _

EVENT_TYPES = {
    "check.completed": _("A CNPJ check finished with an answer (the company found, or confirmed absent)."),
    "check.failed": _("A CNPJ check failed: the registries could not be reached."),
    "alert.created": _("A monitored company changed (status, partners, address, risk level…): an alert was raised."),
    "member.added": _("Someone joined the organization (accepted an invitation)."),
    "member.removed": _("A member left or was removed from the organization."),
    "api_key.created": _("An API key was created."),
    "api_key.revoked": _("An API key was revoked."),
    "webhook.test": _("A test event, sent on request to one endpoint."),
}
