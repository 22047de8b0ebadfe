"""Tenant resolution: the one place that decides which schema a request runs in."""

from __future__ import annotations

import re

from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from core.observability import organization_var
from core.overload import own_connection_closed

from .api_keys import api_key_authenticate, bearer_token
from .audit.services import client_ip
from .models import Domain, Organization
from .selectors import membership_at

ORG_PATH = re.compile(r"^/o/(?P<slug>[-a-zA-Z0-9_]+)/")
API_PATH = re.compile(r"^/(v1|api)/")


def api_key_organization(request: HttpRequest) -> Organization | None:
    """`Authorization: Bearer <key>` on /v1/ and /api/: the key's organization, from the key cache.

    Sets `request.api_key` (a `KeyAuth`, or None when no valid key was sent). The organization
    is built from the cached grant, without a query: it carries its id, slug and schema only. A key
    not cached yet is looked up only if the caller's address is under its unauthenticated limit.
    """
    token = bearer_token(request)
    auth = api_key_authenticate(token, address=client_ip(request) or "unknown",
                                user_agent=request.headers.get("User-Agent", ""),
                                request_id=str(getattr(request, "id", "") or "")) if token else None
    request.api_key = auth
    if auth is None:
        return None
    return Organization(pk=auth.organization_id, schema_name=auth.schema_name, slug=auth.slug)


def not_found(request: HttpRequest) -> HttpResponse:
    # Same answer whether the organization is unknown or the user is not a member.
    return render(request, "404.html", status=404)


@own_connection_closed
def not_found_handler(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return not_found(request)


class TenantMiddleware:
    """Sets `request.tenant` (and `request.membership` on /o/ pages) and the schema; always restores `public`.

    1. `/o/<slug>/...`: that organization, for its members only; 404 for anyone else.
    2. `Authorization: Bearer` on `/v1/` and `/api/`: the key's organization.
    3. A custom `Domain` matching the host.
    4. Otherwise `public`.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # `request.tenant` is set only when an organization is resolved: django-tenants'
        # admin templates read a missing attribute as "public".
        tenant = None
        match = ORG_PATH.match(request.path_info)
        if match:
            membership = membership_at(user=request.user, slug=match["slug"])
            if membership is None:
                return not_found(request)
            tenant, request.membership = membership.organization, membership
        elif API_PATH.match(request.path_info):
            tenant = api_key_organization(request)
        else:
            host = request.get_host().split(":", 1)[0].lower()
            domain = Domain.objects.select_related("tenant").filter(domain=host).first()
            if domain is not None and domain.tenant.schema_name != "public":
                tenant = domain.tenant
        try:
            if tenant is not None:
                request.tenant = tenant
                connection.set_tenant(tenant)
                organization_var.set(tenant.slug)
            return self.get_response(request)
        finally:
            connection.set_schema_to_public()
