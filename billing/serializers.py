"""Shapes of the balance, the credit ledger and usage rollups in the API (billing.api)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework import serializers

from .models import CREDIT_FIELD, CreditEntry, UsageEvent

USAGE_MAX_DAYS = 366
USAGE_DEFAULT_DAYS = 30


def credits_field(**kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(**CREDIT_FIELD, coerce_to_string=True, read_only=True, **kwargs)


class BalanceSerializer(serializers.Serializer):
    credits = credits_field(help_text="The organization's credit balance, as a decimal string.")


class CreditEntrySerializer(serializers.ModelSerializer):
    amount = credits_field(help_text="Positive: credits in; negative: credits out.")
    balance_after = credits_field()

    class Meta:
        model = CreditEntry
        fields = ["id", "kind", "amount", "balance_after", "description", "created_at"]
        read_only_fields = fields


class CreditEntryFilterSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=CreditEntry.Kind.choices, required=False)


class UsageFilterSerializer(serializers.Serializer):
    start = serializers.DateField(required=False, help_text="First day (UTC); default: 29 days before `end`.")
    end = serializers.DateField(required=False, help_text="Last day (UTC); default: today.")
    kind = serializers.ChoiceField(choices=UsageEvent.Kind.choices, required=False)

    def validate(self, attrs: dict) -> dict:
        end = attrs.setdefault("end", timezone.now().date())
        if "start" not in attrs:
            try:
                attrs["start"] = end - timedelta(days=USAGE_DEFAULT_DAYS - 1)
            except OverflowError:
                raise serializers.ValidationError({"end": "Out of range."}) from None
        start = attrs["start"]
        if start > end:
            raise serializers.ValidationError({"start": "Must not be after 'end'."})
        if (end - start).days >= USAGE_MAX_DAYS:
            raise serializers.ValidationError({"start": f"The range is at most {USAGE_MAX_DAYS} days."})
        return attrs


class UsageRowSerializer(serializers.Serializer):
    day = serializers.DateField()
    kind = serializers.ChoiceField(choices=UsageEvent.Kind.choices)
    key = serializers.CharField(help_text="The model id or check kind.")
    events = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    units = serializers.IntegerField()
    credits = credits_field()


class UsageSerializer(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()
    total_credits = credits_field()
    results = UsageRowSerializer(many=True, help_text="One row per day × kind × key, oldest day first.")
