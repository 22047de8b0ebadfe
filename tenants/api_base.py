"""The DRF API's base: who is calling, for which organization, with which rights; pagination.

Every organization-scoped API view subclasses `OrgAPIView` (a test walks the URL patterns to
check it). Two ways in:

- `Authorization: Bearer prm_…` (an organization API key). The tenant middleware already
  resolved the key's organization and set its schema; `X-Organization` is optional and must
  name that same organization (else 404). A key's rights are its scopes: `read` allows safe
  methods on every endpoint, `chat` allows reading and writing threads and messages, `checks`
  reading and writing checks, targets, reports and alerts.
- A browser session (DRF's SessionAuthentication, so unsafe methods need the CSRF token). A
  session has no organization of its own: the caller names it with `X-Organization: <slug>`;
  a slug that does not exist and one the user is not a member of both answer 404. Rights are
  the member's role: viewers read only, members write, some endpoints (API keys, members)
  need an admin. When the organization requires MFA and the user has no second factor, the
  call answers 403 with `"code": "mfa_required"` (keys are not affected).

Calls with a key count against the plan's requests per minute, per key and per organization
(billing.ratelimits, shared with /v1): over the limit they get 429 with `Retry-After`, and
every key-authenticated answer carries `x-ratelimit-{limit,remaining,reset}-requests`. Session
calls are the web UI's and are not counted against the plan.

A key acts as a principal (`ApiKey.principal`, tenants.api_keys):

- A `member` key acts as the person who created it, and only while that person is an active
  admin or owner of the organization (the role the keys page needs). It then sees and writes
  exactly that member's threads: whoever creates a key with the `chat` scope delegates their
  own conversations to it. Once the creator leaves, is removed, is demoted below admin or is
  deactivated, the key answers 401 (those changes also revoke it, tenants.services).
- A `service` key (`manage.py create_api_key`) acts as the organization itself
  (`ServicePrincipal`): no person, no threads of its own and none of anyone else's. Views
  that work on a person's data set `service_keys = False` and answer it 403; checks it
  requests have no requesting user.

Minting a key with a session needs a recent re-authentication (allauth's reauthenticate
flow): otherwise 403 with `code: reauthentication_required` and the page to do it.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

from django.db import connection
from django.utils.translation import gettext as _
from drf_spectacular.openapi import AutoSchema
from rest_framework import exceptions, status
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from accounts.mfa import organization_mfa_missing
from accounts.models import User
from accounts.reauthentication import reauthentication_url, recently_reauthenticated
from billing.ratelimits import Limit, ip_limited, rate_limit_take
from billing.selectors import Entitlements, entitlements_for
from core.observability import organization_var
from core.pagination import CheckedCursorPagination
from tenants.api_keys import KeyAuth, bearer_token, may_hold_keys
from tenants.audit.services import client_ip
from tenants.guards import role_refusal
from tenants.models import Membership, Organization, Role
from tenants.selectors import membership_at

ORGANIZATION_HEADER = "X-Organization"


class ServicePrincipal:
    """Whom a service key acts as: the organization, not a person. Authenticated for DRF's checks, but
    with no primary key, so nothing can be looked up or stored as its (see `acting_user`)."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = is_superuser = False
    pk = id = None

    def __init__(self, key_id: int) -> None:
        self.key_id = key_id

    def __str__(self) -> str:
        return f"service key {self.key_id}"


def api_key_principal(auth: KeyAuth) -> User | ServicePrincipal | None:
    """Whom a key acts as: its creator while an active admin or owner, a `ServicePrincipal` for a
    service key, None (refused) otherwise."""
    if auth.is_service:
        return ServicePrincipal(auth.key_id)
    membership = (Membership.objects.select_related("user")
                  .filter(organization_id=auth.organization_id, user_id=auth.user_id).first())
    return membership.user if may_hold_keys(membership) else None


def acting_user(request: Request) -> User | None:
    """The person behind a call (None for a service key), for services that record who asked."""
    return None if isinstance(request.user, ServicePrincipal) else request.user


INVALID_KEY = "Invalid, expired or revoked API key."


class ApiKeyAuthentication(BaseAuthentication):
    """The key the tenant middleware resolved (`request.api_key`); a Bearer token that is not a valid key is 401."""

    def authenticate(self, request: Request):
        auth: KeyAuth | None = getattr(request._request, "api_key", None)
        if auth is None:
            if bearer_token(request._request):
                address_limit(request)
                raise exceptions.AuthenticationFailed(INVALID_KEY)
            return None
        user = api_key_principal(auth)
        if user is None:  # its creator left, was removed, demoted or deactivated: the same answer as a bad key
            raise exceptions.AuthenticationFailed(INVALID_KEY)
        return user, auth

    def authenticate_header(self, request: Request) -> str:
        # Makes unauthenticated calls 401 (with WWW-Authenticate) rather than 403.
        return 'Bearer realm="api"'


def address_limit(request: Request) -> None:
    """Calls without a valid key or session are limited per client address: guessing keys goes nowhere fast."""
    wait = ip_limited(client_ip(request._request) or "unknown")
    if wait is not None:
        raise RateLimited(wait, _("Too many unauthenticated requests. Try again in %(seconds)s s.") % {
            "seconds": wait})


class ReauthenticationNeeded(exceptions.APIException):
    """403 `{"detail", "code": "reauthentication_required", "reauthenticate_url"}`: confirm who you are first."""

    status_code = status.HTTP_403_FORBIDDEN
    default_code = "reauthentication_required"

    def __init__(self, url: str) -> None:
        super().__init__({"detail": _("Confirm your password (or second factor) first: creating an API key needs "
                                      "a recent sign-in. Do it at reauthenticate_url, then send this again."),
                          "code": self.default_code, "reauthenticate_url": url})


def reauthentication_check(request: Request) -> None:
    """A session call that mints a secret needs allauth's recent re-authentication (keys never get here)."""
    if not recently_reauthenticated(request._request):
        raise ReauthenticationNeeded(reauthentication_url(request._request))


def key_entitlements(request: Request) -> Entitlements:
    """The plan entitlements of a key's organization, read once per request."""
    if not hasattr(request, "_key_entitlements"):
        request._key_entitlements = entitlements_for(request._request.tenant)
    return request._key_entitlements


class RateLimited(exceptions.APIException):
    """429 with `{"detail", "code": "rate_limit_exceeded"}`; DRF's handler adds `Retry-After` from `wait`."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "rate_limit_exceeded"

    def __init__(self, wait: int, detail: str) -> None:
        self.wait = wait
        super().__init__({"detail": detail, "code": self.default_code})

    @classmethod
    def plan(cls, limit: Limit) -> RateLimited:
        what = _("tokens") if limit.exceeded == "tokens" else _("requests")
        return cls(limit.retry_after, _("Rate limit reached for %(what)s per minute on your plan. "
                                        "Try again in %(seconds)s s.") % {"what": what, "seconds": limit.retry_after})


class MFARequired(exceptions.PermissionDenied):
    """403 `{"detail", "code": "mfa_required"}`: the organization requires a second factor the session user lacks.

    Only sessions: API keys are not people and are not affected by the requirement.
    """

    default_code = "mfa_required"

    def __init__(self, organization: Organization) -> None:
        super().__init__({"detail": _("%(organization)s requires two-factor authentication. Activate it in your "
                                      "account settings to continue.") % {"organization": organization.name},
                          "code": self.default_code})


def rate_limit_headers(limit: Limit) -> dict[str, str]:
    """The requests trio of `Limit.headers()` (the API counts requests, not tokens)."""
    return {name: value for name, value in limit.headers().items() if name.endswith("-requests")}


PLAN_WITHOUT_API = "Your plan does not include API access. Upgrade on the billing page to use API keys."


class OrgAccess(BasePermission):
    """Keys by scope, session users by role, as the view declares (see `OrgAPIView`)."""

    def has_permission(self, request: Request, view: OrgAPIView) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        if not hasattr(view, request.method.lower()):
            return True  # the view answers 405: a method it lacks needs no right
        safe = request.method in SAFE_METHODS
        if isinstance(request.auth, KeyAuth):
            if not key_entitlements(request).api_access:
                self.message = PLAN_WITHOUT_API
                return False
            if request.auth.is_service and not view.service_keys:
                self.message = _("Service keys act as the organization and own no threads: use a key created "
                                 "by an admin or owner (Settings → API keys) for this call.")
                return False
            scopes = view.key_read_scopes if safe else view.key_write_scopes
            if not scopes & request.auth.scopes:
                needed = ", ".join(sorted(scopes)) or "none: keys cannot do this"
                self.message = f"This API key lacks the scope for this call ({needed})."
                return False
            return True
        role = view.read_role if safe else view.write_role
        if not request.membership.has_role(role):
            self.message = role_refusal(request.membership, role)  # the same words as the pages' 403
            return False
        return True


class CursorPage(CheckedCursorPagination):
    """Newest first; `?cursor=` from `next`/`previous`, `?page_size=` up to 100."""

    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 100


RATE_LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": ("integer", "The plan's requests per minute (API keys only)."),
    "x-ratelimit-remaining-requests": ("integer", "Requests left in this minute, for the key and its organization."),
    "x-ratelimit-reset-requests": ("string", "When this minute's window ends, e.g. `42s` or `1m0s`."),
}
RATE_LIMITED_RESPONSE = {
    "description": "Over the plan's requests per minute (API keys only); retry after `Retry-After` seconds.",
    "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApiError"}}},
}


class OrgAPISchema(AutoSchema):
    """Every operation may answer 429 to a key, and answers to keys carry the rate-limit headers."""

    def get_operation(self, *args, **kwargs) -> dict[str, Any] | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is not None:
            responses = operation["responses"]
            responses.setdefault("429", deepcopy(RATE_LIMITED_RESPONSE))
            for response in responses.values():
                headers = response.setdefault("headers", {})
                for name, (kind, description) in RATE_LIMIT_HEADERS.items():
                    headers.setdefault(name, {"schema": {"type": kind}, "description": description})
        return operation


class OrgAPIView(GenericAPIView):
    """Base of every organization-scoped API view: authentication, organization, rights, schema.

    Subclasses set `key_read_scopes`/`key_write_scopes` (API keys), `service_keys` and
    `read_role`/`write_role` (session members). After authentication `request.tenant` is the
    organization (with a session, a saved row; with a key, its id, slug and schema only), the
    connection uses its schema, and `request.membership` is the session user's membership (None
    for keys). `public` is restored when the view returns or raises. A key's call is counted
    against its plan's rate limit right after authentication, so refused calls count too (except
    on a plan without API access, which `OrgAccess` refuses).
    """

    authentication_classes = [ApiKeyAuthentication, SessionAuthentication]
    permission_classes = [OrgAccess]
    pagination_class = CursorPage
    schema = OrgAPISchema()
    key_read_scopes: frozenset[str] = frozenset({"read"})
    key_write_scopes: frozenset[str] = frozenset()
    service_keys: bool = True  # False where the call works on a person's data (a service key is none)
    read_role: str = Role.VIEWER
    write_role: str = Role.MEMBER

    def dispatch(self, request, *args, **kwargs):
        try:
            return super().dispatch(request, *args, **kwargs)
        finally:
            connection.set_schema_to_public()

    def perform_authentication(self, request: Request) -> None:
        super().perform_authentication(request)
        if isinstance(request.auth, KeyAuth):
            self.plan_rate_limit_take(request)
        elif request.user is None or not request.user.is_authenticated:
            address_limit(request)
        if request.user is not None and request.user.is_authenticated:
            self.organization_enter(request)

    def plan_rate_limit_take(self, request: Request) -> None:
        """Count this call for the key and its organization; 429 when either is over the plan's limit."""
        entitlements = key_entitlements(request)
        if not entitlements.api_access:
            return
        limit = rate_limit_take(organization_id=request.auth.organization_id, key_id=request.auth.key_id,
                                requests_per_minute=entitlements.requests_per_minute,
                                tokens_per_minute=entitlements.tokens_per_minute, tokens=0)
        self.headers.update(rate_limit_headers(limit))  # finalize_response puts them on every answer
        if not limit.allowed:
            raise RateLimited.plan(limit)

    def organization_enter(self, request: Request) -> None:
        slug = request.headers.get(ORGANIZATION_HEADER, "").strip()
        if isinstance(request.auth, KeyAuth):
            if slug and slug != request.auth.slug:
                raise exceptions.NotFound()
            tenant, membership = request._request.tenant, None
        else:
            if not slug:
                raise exceptions.ValidationError(
                    {"detail": f"Send the '{ORGANIZATION_HEADER}: <slug>' header to choose the organization."})
            membership = membership_at(user=request.user, slug=slug)
            if membership is None:
                raise exceptions.NotFound()  # the same answer whether it does not exist or is not theirs
            tenant = membership.organization
            if organization_mfa_missing(request._request, tenant, membership=membership):
                raise MFARequired(tenant)
        request._request.tenant = tenant
        request._request.membership = membership
        connection.set_tenant(tenant)
        organization_var.set(tenant.slug)

    def query_params(self, serializer_class) -> dict:
        """The query string validated by `serializer_class` (400 with field errors otherwise)."""
        serializer = serializer_class(data=self.request.query_params)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def body(self, serializer_class) -> dict:
        """The request body validated by `serializer_class` (400 with field errors otherwise)."""
        serializer = serializer_class(data=self.request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def page(self, queryset, serializer_class):
        """One cursor page of `queryset`, serialized."""
        rows = self.paginate_queryset(queryset)
        return self.get_paginated_response(serializer_class(rows, many=True).data)
