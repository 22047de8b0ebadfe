"""The organization, its members and its API keys over the API (/api/v1/...).

API keys need the `read` scope. Session users: any role reads the organization; members and
API keys (metadata only, never the key or its hash) need an admin. Creating and revoking keys
takes a session of an admin or owner: a key can never mint or revoke keys (403), so a leaked
key cannot make itself permanent. Minting also needs a recent re-authentication (allauth's
reauthenticate flow; otherwise 403 with `code: reauthentication_required`).
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from billing.selectors import billing_account_get
from tenants.api_base import OrgAPIView, reauthentication_check

from .api_keys import api_key_create, api_key_revoke
from .audit.services import Actor
from .models import ApiKey, Organization, Role
from .selectors import member_list
from .serializers import (
    ApiKeyCreatedSerializer,
    ApiKeyCreateSerializer,
    ApiKeySerializer,
    MemberSerializer,
    OrganizationSerializer,
)

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
    """API key metadata (never the key or its hash). Key scope `read`; admins and owners.

    POST creates a key (sessions of admins and owners only): the response holds the key itself,
    once. A `chat` key acts as the member who creates it (see tenants.api_base).
    """

    serializer_class = ApiKeySerializer
    read_role = Role.ADMIN
    write_role = Role.ADMIN

    @extend_schema(operation_id="api_keys_list", responses=ApiKeySerializer(many=True),
                   summary="API keys (metadata only), newest first")
    def get(self, request: Request) -> Response:
        return self.page(ApiKey.objects.filter(organization_id=request.tenant.pk), ApiKeySerializer)

    @extend_schema(operation_id="api_keys_create", request=ApiKeyCreateSerializer,
                   responses={201: OpenApiResponse(ApiKeyCreatedSerializer, description=(
                       "The new key's metadata and, in `key`, the key itself: shown this once, never again.")),
                              403: OpenApiResponse(description=(
                                  "Not an admin, a key, or no recent re-authentication "
                                  "(`code: reauthentication_required`, with `reauthenticate_url`)."))},
                   summary="Create an API key (session of an admin or owner, recently re-authenticated)")
    def post(self, request: Request) -> Response:
        data = self.body(ApiKeyCreateSerializer)
        reauthentication_check(request)
        new = api_key_create(organization=request.tenant, name=data["name"], scopes=data["scopes"],
                             expires_at=data.get("expires_at"), user=request.user, actor=Actor.from_request(request))
        response = Response(ApiKeyCreatedSerializer(new.key, context={"raw": new.raw}).data,
                            status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"  # the body holds a secret
        return response


@extend_schema(tags=[TAG])
class ApiKeyRevokeView(OrgAPIView):
    """Revoke a key: it stops working at once. Sessions of admins and owners only."""

    serializer_class = ApiKeySerializer
    read_role = write_role = Role.ADMIN

    @extend_schema(operation_id="api_keys_revoke", request=None, responses=ApiKeySerializer,
                   summary="Revoke an API key (session of an admin or owner only; revoking twice changes nothing)")
    def post(self, request: Request, key_id: int) -> Response:
        key = ApiKey.objects.filter(organization_id=request.tenant.pk, pk=key_id).first()
        if key is None:
            raise NotFound()
        return Response(ApiKeySerializer(api_key_revoke(key=key, actor=Actor.from_request(request))).data)
