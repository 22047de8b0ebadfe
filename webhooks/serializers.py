"""Shapes of webhook endpoints, deliveries and the event catalogue in the API (webhooks.api)."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from .events import EVENT_TYPES
from .models import WebhookDelivery, WebhookEndpoint

EVENT_TYPE_CHOICES = sorted(EVENT_TYPES)


class WebhookEndpointSerializer(serializers.ModelSerializer):
    """An endpoint (never its secret: that was shown once, at creation or rotation)."""

    event_types = serializers.ListField(child=serializers.ChoiceField(choices=EVENT_TYPE_CHOICES),
                                        help_text=_("The event types it receives; empty: all of them."))
    previous_secret_valid_until = serializers.DateTimeField(
        source="previous_secret_expires_at", allow_null=True,
        help_text=_("After a rotation, until when the previous secret still signs deliveries."))

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "url", "description", "event_types", "include_message_text", "enabled", "disabled_reason",
                  "previous_secret_valid_until", "created_at", "updated_at"]
        read_only_fields = fields


class WebhookEndpointCreatedSerializer(WebhookEndpointSerializer):
    secret = serializers.SerializerMethodField(
        help_text=_("The signing secret (`whsec_…`): store it now, it is shown only once."))

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]
        read_only_fields = fields

    def get_secret(self, endpoint: WebhookEndpoint) -> str:
        return self.context["secret"]


class WebhookEndpointWriteSerializer(serializers.Serializer):
    url = serializers.CharField(max_length=2000, help_text=_("Where events are POSTed: https://…"))
    description = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    event_types = serializers.ListField(child=serializers.ChoiceField(choices=EVENT_TYPE_CHOICES), required=False,
                                        default=list, help_text=_("Empty or absent: every event type except "
                                                                  "chat.answer.completed, which must be chosen."))
    include_message_text = serializers.BooleanField(
        required=False, default=False,
        help_text=_("Send the text of chat answers in chat.answer.completed (default: only their numbers)."))
    enabled = serializers.BooleanField(required=False, default=True)


class WebhookEndpointPatchSerializer(WebhookEndpointWriteSerializer):
    url = serializers.CharField(max_length=2000, required=False)
    description = serializers.CharField(max_length=200, required=False, allow_blank=True)
    event_types = serializers.ListField(child=serializers.ChoiceField(choices=EVENT_TYPE_CHOICES), required=False)
    include_message_text = serializers.BooleanField(required=False)
    enabled = serializers.BooleanField(required=False)


class WebhookSecretSerializer(serializers.Serializer):
    secret = serializers.CharField(help_text=_("The new signing secret, shown only once; the previous one keeps "
                                               "signing for 24 hours."))
    previous_secret_valid_until = serializers.DateTimeField()


class WebhookTestSerializer(serializers.Serializer):
    event_id = serializers.CharField(help_text=_("The `webhook-id` of the test event queued for this endpoint."))


class WebhookDeliverySerializer(serializers.ModelSerializer):
    """A message's delivery to the endpoint, with its last try."""

    event_id = serializers.CharField(source="message.event_id")
    type = serializers.CharField(source="message.type")
    response_status = serializers.SerializerMethodField()
    latency_ms = serializers.SerializerMethodField()
    response_body = serializers.SerializerMethodField(help_text=_("The first 2 KB of the last response."))
    error = serializers.SerializerMethodField()

    class Meta:
        model = WebhookDelivery
        fields = ["id", "event_id", "type", "status", "attempts", "next_attempt_at", "created_at", "finished_at",
                  "response_status", "latency_ms", "response_body", "error"]
        read_only_fields = fields

    def get_response_status(self, delivery: WebhookDelivery) -> int | None:
        last = delivery.last_attempt
        return last.response_status if last else None

    def get_latency_ms(self, delivery: WebhookDelivery) -> int | None:
        last = delivery.last_attempt
        return last.latency_ms if last else None

    def get_response_body(self, delivery: WebhookDelivery) -> str:
        last = delivery.last_attempt
        return last.response_body if last else ""

    def get_error(self, delivery: WebhookDelivery) -> str:
        last = delivery.last_attempt
        return last.error if last else ""


class WebhookReplayFailedSerializer(serializers.Serializer):
    since = serializers.DateTimeField(help_text=_("Deliveries created at or after this time are sent again."))


class WebhookReplayedSerializer(serializers.Serializer):
    replayed = serializers.IntegerField(help_text=_("How many deliveries were queued again."))


class EventTypeSerializer(serializers.Serializer):
    type = serializers.CharField()
    description = serializers.CharField()
    opt_in = serializers.BooleanField(help_text=_("Sent only to endpoints that choose this type by name."))
