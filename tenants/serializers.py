"""Shapes of the organization, its members and its API keys in the API (tenants.api)."""

from __future__ import annotations

from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from .models import ApiKey, Membership, Role


class OrganizationSerializer(serializers.Serializer):
    name = serializers.CharField()
    slug = serializers.SlugField()
    plan = serializers.CharField(help_text="The plan's code, e.g. 'free' or 'starter'.")


class MemberSerializer(serializers.ModelSerializer):
    email = serializers.EmailField(source="user.email")
    name = serializers.CharField(source="user.name")
    role = serializers.ChoiceField(choices=Role.choices)

    class Meta:
        model = Membership
        fields = ["id", "email", "name", "role", "created_at"]
        read_only_fields = fields


class ApiKeySerializer(serializers.ModelSerializer):
    """Metadata only: the key itself was shown once, and only its hash is stored (never sent)."""

    prefix = serializers.CharField(source="display_prefix")
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ApiKey.Scope.choices))
    revoked = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "scopes", "principal", "created_at", "last_used_at", "expires_at",
                  "revoked", "revoked_at"]
        read_only_fields = fields

    def get_revoked(self, key: ApiKey) -> bool:
        return key.revoked_at is not None


class ApiKeyCreatedSerializer(ApiKeySerializer):
    """A new key's metadata and the key itself, which is never shown again."""

    key = serializers.SerializerMethodField(help_text=_("The key (`prm_…`): store it now, it is shown only once."))

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields

    def get_key(self, key: ApiKey) -> str:
        return self.context["raw"]  # NewKey.raw: never stored, so the caller hands it over


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, help_text=_("What uses it, e.g. “CRM sync”."))
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=ApiKey.Scope.choices), min_length=1, max_length=len(ApiKey.Scope),
        help_text=_("`read` reads everything; `chat` reads and writes the creator's threads (and calls /v1); "
                    "`checks` runs CNPJ checks."))
    expires_at = serializers.DateTimeField(required=False, allow_null=True,
                                           help_text=_("When it stops working; omit or null for never."))

    def validate_expires_at(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError(_("Must be in the future."))
        return value
