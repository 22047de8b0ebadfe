"""Tenant isolation: members only under /o/<slug>/, 404 for everyone else, schema always reset."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test import Client

from tenants.audit.models import AuditEvent
from tenants.middleware import ORG_PATH, TenantMiddleware

from .urlwalk import routes

pytestmark = pytest.mark.django_db


def _org_patterns():
    """(route, callback, default args, name) for every URL pattern under /o/<org_slug>/."""
    return [(r.route, r.callback, r.default_args, r.name) for r in routes("o/<slug:org_slug>/")]


def test_every_org_view_carries_the_membership_guard():
    patterns = _org_patterns()
    assert len(patterns) >= 8, "the /o/<slug>/ tree should not be empty"
    unguarded = [route for route, callback, _args, _name in patterns
                 if not getattr(callback, "org_member_required", False)]
    assert unguarded == []


def _org_urls(slug: str) -> list[str]:
    urls = []
    for route, _callback, _args, _name in _org_patterns():
        path = "/" + route.replace("<slug:org_slug>", slug)
        path = re.sub(r"<int:\w+>", "1", path)
        path = re.sub(r"<str:\w+>", "x", path)
        urls.append(path)
    return urls


def test_member_of_another_organization_gets_404_everywhere(client_for, org_b):
    client = client_for("a", "owner")
    for url in _org_urls(org_b.slug):
        for method in ("get", "post"):
            response = getattr(client, method)(url)
            assert response.status_code == 404, (method, url, response.status_code)
            assert org_b.name.encode() not in response.content


def test_unknown_organization_and_foreign_one_answer_the_same(client_for, org_b):
    client = client_for("a", "owner")
    foreign = client.get(f"/o/{org_b.slug}/")
    unknown = client.get("/o/no-such-org-anywhere/")
    assert foreign.status_code == unknown.status_code == 404

    def normalized(response, slug: str) -> str:
        # Only the echoed path and the per-request CSRF tokens may differ.
        html = response.content.decode().replace(f"/o/{slug}/", "/o/<slug>/")
        return re.sub(r'(csrfmiddlewaretoken" value="|X-CSRFToken": ")[^"]+', r"\1", html)

    assert normalized(foreign, org_b.slug) == normalized(unknown, "no-such-org-anywhere")


def test_anonymous_gets_404_everywhere_with_a_sign_in_link(org_a):
    client = Client()
    for url in _org_urls(org_a.slug):
        for method in ("get", "post"):
            response = getattr(client, method)(url)
            assert response.status_code == 404, (method, url, response.status_code)
            assert org_a.name.encode() not in response.content
    assert b"/accounts/login/?next=/o/" in client.get(f"/o/{org_a.slug}/").content


def test_member_sees_their_organization_in_its_schema(client_for, org_a):
    response = client_for("a", "viewer").get(f"/o/{org_a.slug}/")
    assert response.status_code == 200
    assert response.context["request"].tenant == org_a
    # Activity comes from org A's schema: its creation event is there.
    assert "organization.created" in response.content.decode()


def test_schema_is_public_again_after_each_request(client_for, org_a):
    client = client_for("a", "owner")
    for url in (f"/o/{org_a.slug}/", f"/o/{org_a.slug}/settings/members/", "/o/missing/"):
        client.get(url)
        assert connection.schema_name == "public"


def test_schema_is_reset_even_when_the_view_raises(rf, tenant_world, org_a):
    seen = []

    def explode(request):
        seen.append(connection.schema_name)
        raise RuntimeError("view failed")

    request = rf.get(f"/o/{org_a.slug}/")
    request.user = tenant_world["a"]["owner"]
    with pytest.raises(RuntimeError):
        TenantMiddleware(explode)(request)
    assert seen == [org_a.schema_name]
    assert connection.schema_name == "public"


def test_audit_events_stay_in_their_own_schema(org_a, org_b):
    from django_tenants.utils import schema_context

    with schema_context(org_a.schema_name):
        a_ids = set(AuditEvent.objects.values_list("target_id", flat=True))
    with schema_context(org_b.schema_name):
        b_ids = set(AuditEvent.objects.values_list("target_id", flat=True))
    assert str(org_a.pk) in a_ids and str(org_a.pk) not in b_ids
    assert str(org_b.pk) in b_ids and str(org_b.pk) not in a_ids


def test_org_path_pattern_matches_only_the_prefix():
    assert ORG_PATH.match("/o/acme/").group("slug") == "acme"
    assert ORG_PATH.match("/orgs/") is None
    assert ORG_PATH.match("/o/") is None


def test_custom_domain_resolves_to_its_organization(rf, org_a, settings):
    from tenants.models import Domain

    settings.ALLOWED_HOSTS = ["acme.example.com", "plain.example.com"]
    Domain.objects.create(domain="acme.example.com", tenant=org_a, is_primary=True)
    seen = {}

    def capture(request):
        seen[request.get_host()] = (getattr(request, "tenant", None), connection.schema_name)
        from django.http import HttpResponse

        return HttpResponse()

    TenantMiddleware(capture)(rf.get("/", HTTP_HOST="acme.example.com"))
    TenantMiddleware(capture)(rf.get("/", HTTP_HOST="plain.example.com"))
    assert seen["acme.example.com"] == (org_a, org_a.schema_name)
    assert seen["plain.example.com"] == (None, "public")
    assert connection.schema_name == "public"


def test_org_pages_resolve_the_same_under_asgi(tenant_world, org_a, org_b):
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    async def fetch():
        client = AsyncClient()
        await client.aforce_login(tenant_world["a"]["member"])
        own = await client.get(f"/o/{org_a.slug}/")
        foreign = await client.get(f"/o/{org_b.slug}/")
        return own, foreign

    own, foreign = async_to_sync(fetch)()
    assert own.status_code == 200 and f"<h1>{org_a.name}</h1>" in own.content.decode()
    assert foreign.status_code == 404
