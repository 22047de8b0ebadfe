"""Shapes of the organization, its members and its API keys in the API (tenants.api)."""

from __future__ import annotations

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
        fields = ["id", "name", "prefix", "scopes", "created_at", "last_used_at", "expires_at", "revoked",
                  "revoked_at"]
        read_only_fields = fields

    def get_revoked(self, key: ApiKey) -> bool:
        return key.revoked_at is not None
