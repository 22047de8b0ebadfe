"""Outbound webhooks, in each organization's schema: endpoints, the outbox (messages) and deliveries.

A `WebhookMessage` is written in the same transaction as the change it reports
(`services.webhook_event_emit`), with one `WebhookDelivery` per subscribed endpoint; each try of a
delivery is a `WebhookAttempt` (its number unique per delivery, so a task that runs twice cannot
send the same try twice).
"""

from __future__ import annotations

import secrets

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


def message_id() -> str:
    return f"msg_{secrets.token_urlsafe(18)}"


class WebhookEndpoint(models.Model):
    class DisabledReason(models.TextChoices):
        NONE = "", _("Enabled")
        MANUAL = "manual", _("Disabled by an administrator")
        GONE = "gone", _("The endpoint answered 410 Gone")
        FAILING = "failing", _("Failing for too long")
        PLAN = "plan", _("The plan does not include webhooks")

    url = models.CharField(_("URL"), max_length=2000)
    description = models.CharField(_("description"), max_length=200, blank=True)
    # Empty: every event type but the opt-in ones (events.OPT_IN); otherwise only these.
    event_types = models.JSONField(_("event types"), default=list, blank=True)
    # Whether events that carry people's messages (chat.answer.completed) include their text.
    include_message_text = models.BooleanField(_("include message text"), default=False)
    enabled = models.BooleanField(_("enabled"), default=True)
    disabled_reason = models.CharField(max_length=20, choices=DisabledReason.choices, blank=True)
    # Signing secrets (`whsec_…`), Fernet-encrypted (webhooks.crypto); the previous one signs too until it expires.
    secret_encrypted = models.TextField()
    previous_secret_encrypted = models.TextField(blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.description or self.url

    def subscribes_to(self, event_type: str) -> bool:
        from .events import OPT_IN

        if event_type in OPT_IN:
            return event_type in self.event_types
        return not self.event_types or event_type in self.event_types


class WebhookMessage(models.Model):
    """An event, as sent: `payload` is `{type, timestamp, data}`; `event_id` is the `webhook-id` of every try."""

    event_id = models.CharField(max_length=40, unique=True, default=message_id)
    type = models.CharField(max_length=100, db_index=True)
    timestamp = models.DateTimeField(default=timezone.now, db_index=True)
    payload = models.JSONField()

    class Meta:
        ordering = ["-timestamp", "-id"]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class WebhookDelivery(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")  # every try used up (the dead letters), or the endpoint is gone
        CANCELLED = "cancelled", _("Cancelled")  # the endpoint was disabled before it got through

    FINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})

    message = models.ForeignKey(WebhookMessage, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)  # tries claimed so far
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["message", "endpoint"], name="webhook_delivery_once")]
        indexes = [models.Index(fields=["endpoint", "-created_at"], name="webhook_delivery_endpoint_idx")]

    def __str__(self) -> str:
        return f"{self.message_id} → {self.endpoint_id} ({self.status})"

    @property
    def last_attempt(self) -> WebhookAttempt | None:
        """The latest try (from `tries` prefetched in order, as selectors.delivery_list does)."""
        tries = list(self.tries.all())
        return tries[-1] if tries else None


class WebhookAttempt(models.Model):
    class Status(models.TextChoices):
        SENDING = "sending", _("Sending")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="tries")
    number = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.SENDING)
    started_at = models.DateTimeField(default=timezone.now)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True)  # the first 2 KB
    error = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="webhook_attempt_once")]

    def __str__(self) -> str:
        return f"{self.delivery_id} #{self.number} {self.status}"
