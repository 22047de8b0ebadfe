"""The audit log's shapes: an event (API and JSON export alike) and the API's query string."""

from __future__ import annotations

from datetime import UTC, datetime, time

from rest_framework import serializers

from .actions import action_label, action_valid
from .models import AuditEvent
from .selectors import AuditFilters


class AuditEventSerializer(serializers.ModelSerializer):
    action_label = serializers.SerializerMethodField(help_text="The action in words, in the caller's language.")

    class Meta:
        model = AuditEvent
        fields = ["id", "created_at", "actor_type", "actor_id", "actor_label", "action", "action_label",
                  "target_type", "target_id", "target_label", "ip_address", "user_agent", "request_id",
                  "before", "after"]
        read_only_fields = fields

    def get_action_label(self, event: AuditEvent) -> str:
        labels = self.context.get("labels")  # an export's, read in the caller's language before streaming
        return labels.get(event.action, event.action) if labels is not None else action_label(event.action)


class FlexibleDateTimeField(serializers.DateTimeField):
    """An ISO 8601 date-time, or a date (its midnight in UTC)."""

    def to_internal_value(self, value):
        if isinstance(value, str) and len(value) == 10:
            try:
                day = datetime.fromisoformat(value).date()
            except ValueError:
                self.fail("invalid", format="YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss][+HH:MM]")
            return datetime.combine(day, time.min, tzinfo=UTC)
        return super().to_internal_value(value)


class AuditQuerySerializer(serializers.Serializer):
    actor = serializers.CharField(required=False, allow_blank=True, max_length=255,
                                  help_text="An actor id (user or key id), or part of an actor's label (an email).")
    actor_type = serializers.ChoiceField(choices=AuditEvent.ActorType.choices, required=False, allow_blank=True)
    action = serializers.CharField(required=False, allow_blank=True, max_length=100,
                                   help_text="An action name (e.g. `api_key.created`), or a group (`api_key.*`).")
    target_type = serializers.CharField(required=False, allow_blank=True, max_length=100,
                                        help_text="e.g. `tenants.apikey`, `webhooks.webhookendpoint`.")
    target_id = serializers.CharField(required=False, allow_blank=True, max_length=64)
    since = FlexibleDateTimeField(required=False, help_text="Events at or after this time (a date: its midnight, UTC).")
    until = FlexibleDateTimeField(required=False, help_text="Events before this time (a date: its midnight, UTC).")

    def validate_action(self, value: str) -> str:
        if value and not action_valid(value):
            raise serializers.ValidationError(f"Unknown action '{value}'. See the action names in the API docs.")
        return value

    def validate(self, data: dict) -> dict:
        if data.get("since") and data.get("until") and data["since"] >= data["until"]:
            raise serializers.ValidationError({"until": "Must be after `since`."})
        return data

    @staticmethod
    def filters(data: dict) -> AuditFilters:
        return AuditFilters(actor=data.get("actor", "").strip(), actor_type=data.get("actor_type", ""),
                            action=data.get("action", ""), target_type=data.get("target_type", "").strip(),
                            target_id=data.get("target_id", "").strip(), since=data.get("since"),
                            until=data.get("until"))
