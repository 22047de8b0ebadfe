"""The organization, its members and its API keys over the API (/api/v1/...). Read-only.

API keys need the `read` scope. Session users: any role reads the organization; members and
API keys (metadata only, never the key or its hash) need an admin.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from billing.selectors import billing_account_get
from config.api import OrgAPIView

from .models import ApiKey, Organization, Role
from .selectors import member_list
from .serializers import ApiKeySerializer, MemberSerializer, OrganizationSerializer

TAG = "Organization"


@extend_schema(tags=[TAG])
class OrganizationView(OrgAPIView):
    """The organization: name, slug, plan. Key scope `read`; any role."""

    serializer_class = OrganizationSerializer

    @extend_schema(operation_id="organization_retrieve", summary="The organization and its plan")
    def get(self, request: Request) -> Response:
        # With an API key `request.tenant` carries only id, slug and schema: load the name.
        organization = Organization.objects.get(pk=request.tenant.pk)
        plan = billing_account_get(organization=organization).plan
        return Response(OrganizationSerializer({"name": organization.name, "slug": organization.slug,
                                                "plan": plan.code}).data)


@extend_schema(tags=[TAG])
class MemberListView(OrgAPIView):
    """Members with their roles. Key scope `read`; admins and owners."""

    serializer_class = MemberSerializer
    read_role = Role.ADMIN

    @extend_schema(operation_id="members_list", responses=MemberSerializer(many=True),
                   summary="Members and their roles, newest first")
    def get(self, request: Request) -> Response:
        return self.page(member_list(organization=request.tenant), MemberSerializer)


@extend_schema(tags=[TAG])
class ApiKeyListView(OrgAPIView):
    """API key metadata (never the key or its hash). Key scope `read`; admins and owners."""

    serializer_class = ApiKeySerializer
    read_role = Role.ADMIN

    @extend_schema(operation_id="api_keys_list", responses=ApiKeySerializer(many=True),
                   summary="API keys (metadata only), newest first")
    def get(self, request: Request) -> Response:
        return self.page(ApiKey.objects.filter(organization_id=request.tenant.pk), ApiKeySerializer)
