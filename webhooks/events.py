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
    "batch.completed": _("A bulk check (a CSV of CNPJs) finished: every check it requested has an answer."),
    "credits.low": _("The credit balance fell below the threshold set in Settings → Webhooks (once per crossing)."),
    "credits.purchased": _("A credit top-up was paid and its credits added."),
    "subscription.updated": _("The plan or the subscription's status changed (in Stripe, or by an operator)."),
    "chat.answer.completed": _("A chat answer finished. Only to endpoints that choose it (never with “all "
                               "events”); the answer's text only to those that include message text."),
    "webhook.test": _("A test event, sent on request to one endpoint."),
}

# Sent only to endpoints that chose them by name: "all events" (an empty choice) does not include them.
OPT_IN = frozenset({"chat.answer.completed"})
