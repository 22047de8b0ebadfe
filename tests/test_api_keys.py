"""Organization API keys: shown once, stored hashed, scoped, expiring, revocable, cached."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tenants.api_keys import api_key_authenticate, api_key_create, api_key_revoke
from tenants.audit.services import Actor
from tenants.middleware import TenantMiddleware
from tenants.models import ApiKey

from .reauth import reauthenticate

pytestmark = pytest.mark.django_db


def test_admin_creates_a_key_that_is_shown_once_and_stored_as_a_hash(client_for, org_a):
    client = client_for("a", "admin")
    reauthenticate(client)
    response = client.post(f"/o/{org_a.slug}/settings/api-keys/",
                           {"name": "CRM sync", "scopes": ["chat", "read"], "expires_in_days": "30"})
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    raw = response.context["new_key"].raw
    assert raw.startswith("prm_") and raw in response.content.decode()
    key = ApiKey.objects.get(organization=org_a, name="CRM sync")
    assert key.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in str(ApiKey.objects.filter(pk=key.pk).values().first())
    assert key.scopes == ["chat", "read"] and key.expires_at > timezone.now() + timedelta(days=29)
    listing = client.get(f"/o/{org_a.slug}/settings/api-keys/").content.decode()
    assert raw not in listing and key.display_prefix in listing
    assert 'data-testid="no-api-access"' in listing  # org A is on Free, which has no API access


def test_members_cannot_see_or_create_keys(client_for, org_a):
    client = client_for("a", "member")
    assert client.get(f"/o/{org_a.slug}/settings/api-keys/").status_code == 403
    assert client.post(f"/o/{org_a.slug}/settings/api-keys/", {"name": "x", "scopes": ["chat"]}).status_code == 403


def test_authentication_checks_hash_expiry_and_revocation(org_a):
    new = api_key_create(organization=org_a, name="k", scopes=["chat"], actor=Actor.system())
    auth = api_key_authenticate(new.raw)
    assert (auth.organization_id, auth.schema_name, auth.scopes) == (org_a.pk, org_a.schema_name, {"chat"})
    assert api_key_authenticate(new.raw[:-1] + ("A" if new.raw[-1] != "A" else "B")) is None
    assert api_key_authenticate("prm_short") is None and api_key_authenticate("") is None
    expired = api_key_create(organization=org_a, name="old", scopes=["chat"], actor=Actor.system(),
                             expires_at=timezone.now() - timedelta(seconds=1))
    assert api_key_authenticate(expired.raw) is None


def test_revoked_key_stops_at_once_even_when_cached(client_for, org_a, django_capture_on_commit_callbacks):
    new = api_key_create(organization=org_a, name="k", scopes=["chat"], actor=Actor.system())
    assert api_key_authenticate(new.raw) is not None  # now cached
    with django_capture_on_commit_callbacks(execute=True):
        client_for("a", "owner").post(f"/o/{org_a.slug}/settings/api-keys/{new.key.pk}/revoke/")
    assert ApiKey.objects.get(pk=new.key.pk).revoked_at is not None
    assert api_key_authenticate(new.raw) is None


def test_cached_lookup_needs_no_query_and_last_used_is_throttled(org_a):
    new = api_key_create(organization=org_a, name="k", scopes=["chat"], actor=Actor.system())
    api_key_authenticate(new.raw)  # caches the row and records the use
    assert ApiKey.objects.get(pk=new.key.pk).last_used_at is not None
    with CaptureQueriesContext(connection) as queries:
        for _ in range(5):
            assert api_key_authenticate(new.raw) is not None
    assert len(queries) == 0


def test_middleware_resolves_the_key_organization_on_api_paths(org_a):
    new = api_key_create(organization=org_a, name="k", scopes=["read"], actor=Actor.system())
    seen = {}

    def view(request):
        seen.update(tenant=request.tenant.pk, schema=connection.schema_name, key=request.api_key.key_id)
        from django.http import HttpResponse

        return HttpResponse("ok")

    request = RequestFactory().get("/api/v1/anything", HTTP_AUTHORIZATION=f"Bearer {new.raw}")
    from django.contrib.auth.models import AnonymousUser

    request.user = AnonymousUser()
    TenantMiddleware(view)(request)
    assert seen == {"tenant": org_a.pk, "schema": org_a.schema_name, "key": new.key.pk}
    assert connection.schema_name == "public"


def test_create_api_key_command_prints_the_key_last(org_a):
    out = StringIO()
    call_command("create_api_key", "--org", org_a.slug, "--name", "ops", stdout=out)
    raw = out.getvalue().strip().splitlines()[-1]
    auth = api_key_authenticate(raw)
    assert auth is not None and auth.scopes == {"chat", "checks", "read"}


def test_keys_of_one_organization_are_invisible_to_another(client_for, org_a, org_b):
    key = api_key_create(organization=org_b, name="b-key", scopes=["chat"], actor=Actor.system()).key
    client = client_for("a", "owner")
    assert "b-key" not in client.get(f"/o/{org_a.slug}/settings/api-keys/").content.decode()
    assert client.post(f"/o/{org_a.slug}/settings/api-keys/{key.pk}/revoke/").status_code == 404
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None
    api_key_revoke(key=key, actor=Actor.system())

