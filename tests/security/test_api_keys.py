"""Issue 11, items 1 and 10: an API key acts only as its creator, and only while the creator may.

A key whose creator left, was removed, was demoted below admin or was deactivated answers 401 on
the API and on /v1 (OpenAI's envelope), and its row is revoked, audited, at once; a key made by
`manage.py create_api_key` is a service key that owns no person's threads. Minting a key needs a
recent re-authentication, and a request that read a key before its revocation cannot put it back
in the cache.

The scenario tests commit their own organization and people (the /v1 app reads keys on its own
connection pool, which sees committed rows only) and drop them afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from io import StringIO

import httpx
import pytest
from allauth.account.models import EmailAddress
from django.core.management import call_command
from django.test import Client
from django_tenants.utils import schema_context

from accounts.models import User
from billing.models import BillingAccount, Plan
from chat import v1
from chat.models import Thread
from chat.redis import async_client_close
from chat.services import thread_create
from checks.models import Check
from conftest import PASSWORD
from core import db_async
from core.redis_clients import redis_async_client, redis_client
from tenants.api_keys import (
    api_key_authenticate,
    api_key_create,
    api_key_revoke,
    generation_key,
    key_cache_fill,
    key_cache_fill_async,
    key_cache_read,
    key_entry_read,
    key_entry_read_async,
)
from tenants.audit.models import AuditEvent
from tenants.audit.services import Actor
from tenants.models import ApiKey, Membership, Organization, Role
from tenants.services import organization_create

from ..orgs import organization_drop
from ..reauth import reauthenticate
from ..test_api import _endpoints, bearer, call, rate_limits_reset

DEMO = "demo/prumo-demo"
COMPLETION = {"model": "openai/gpt-4.1-mini", "messages": [{"role": "user", "content": "Hello"}]}


@dataclass
class World:
    org: Organization
    owner: User
    admin: User
    owner_thread: Thread


def _person(email: str) -> User:
    user = User.objects.create_user(email, PASSWORD)
    EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
    return user


@pytest.fixture
def world(django_db_setup, django_db_blocker):
    """A committed organization on Starter (API access) with an owner, an admin and the owner's private thread."""
    with django_db_blocker.unblock():
        tag = uuid.uuid4().hex[:8]
        owner, admin = _person(f"owner-{tag}@example.com"), _person(f"admin-{tag}@example.com")
        org = organization_create(user=owner, name=f"Keys {tag}", actor=Actor.system("tests"))
        BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code="starter"))
        Membership.objects.create(user=admin, organization=org, role=Role.ADMIN)
        with schema_context(org.schema_name):
            thread = thread_create(user=owner, model_id=DEMO)
        redis_client().delete("rl:ip:127.0.0.1")
        yield World(org=org, owner=owner, admin=admin, owner_thread=thread)
        organization_drop(org)
        User.objects.filter(pk__in=[owner.pk, admin.pk]).delete()


def _signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _threads(raw: str):
    return Client().get("/api/v1/threads/", HTTP_AUTHORIZATION=f"Bearer {raw}")


def _v1(raw: str, method: str, path: str, body: dict | None = None) -> httpx.Response:
    """One call to the /v1 ASGI app in this process (its own event loop, pool and Redis client)."""

    async def call():
        transport = httpx.ASGITransport(app=v1.application, client=("192.0.2.41", 5000))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                return await client.request(method, path, json=body, headers={"Authorization": f"Bearer {raw}"})
        finally:
            await db_async.async_pool_close()
            await async_client_close()

    redis_client().delete("rl:ip:192.0.2.41")
    return asyncio.run(call())


def _admin_key(world: World) -> str:
    raw = api_key_create(organization=world.org, name="admin's key", scopes=["chat", "read"], user=world.admin,
                         actor=Actor.system("tests")).raw
    # It works, as the admin: their (empty) thread list, never the owner's thread; and on /v1.
    listed = _threads(raw)
    assert listed.status_code == 200 and listed.json()["results"] == []
    assert _v1(raw, "GET", "/v1/models").status_code == 200
    return raw


def _assert_refused_and_revoked(world: World, raw: str, reason: str) -> None:
    threads = _threads(raw)
    assert threads.status_code == 401, threads.content
    assert str(world.owner_thread.pk) not in threads.content.decode()
    completion = _v1(raw, "POST", "/v1/chat/completions", COMPLETION)
    assert completion.status_code == 401
    assert completion.json()["error"]["code"] == "invalid_api_key"
    assert completion.json()["error"]["type"] == "invalid_request_error"
    assert _v1(raw, "GET", "/v1/models").status_code == 401
    key = ApiKey.objects.get(organization=world.org, name="admin's key")
    assert key.revoked_at is not None
    with schema_context(world.org.schema_name):
        event = AuditEvent.objects.get(action="api_key.revoked", target_id=str(key.pk))
    assert event.after == {"reason": reason}


def test_leaving_revokes_the_key(world, django_db_blocker):
    with django_db_blocker.unblock():
        raw = _admin_key(world)
        response = _signed_in(world.admin).post(f"/o/{world.org.slug}/settings/members/leave/")
        assert response.status_code == 302 and not Membership.objects.filter(user=world.admin).exists()
        _assert_refused_and_revoked(world, raw, "membership.left")


def test_removal_revokes_the_key(world, django_db_blocker):
    with django_db_blocker.unblock():
        raw = _admin_key(world)
        membership = Membership.objects.get(user=world.admin, organization=world.org)
        response = _signed_in(world.owner).post(f"/o/{world.org.slug}/settings/members/{membership.pk}/remove/")
        assert response.status_code == 302 and not Membership.objects.filter(pk=membership.pk).exists()
        _assert_refused_and_revoked(world, raw, "membership.removed")


def test_demotion_below_admin_revokes_the_key(world, django_db_blocker):
    with django_db_blocker.unblock():
        raw = _admin_key(world)
        membership = Membership.objects.get(user=world.admin, organization=world.org)
        response = _signed_in(world.owner).post(f"/o/{world.org.slug}/settings/members/{membership.pk}/role/",
                                                {"role": Role.MEMBER})
        assert response.status_code == 302
        membership.refresh_from_db()
        assert membership.role == Role.MEMBER
        _assert_refused_and_revoked(world, raw, "membership.demoted")


def test_promotion_to_owner_keeps_the_key(world, django_db_blocker):
    with django_db_blocker.unblock():
        raw = _admin_key(world)
        membership = Membership.objects.get(user=world.admin, organization=world.org)
        _signed_in(world.owner).post(f"/o/{world.org.slug}/settings/members/{membership.pk}/role/",
                                     {"role": Role.OWNER})
        assert _threads(raw).status_code == 200
        assert ApiKey.objects.get(organization=world.org, name="admin's key").revoked_at is None


def test_deactivation_revokes_the_key(world, django_db_blocker):
    with django_db_blocker.unblock():
        raw = _admin_key(world)
        world.admin.is_active = False
        world.admin.save()  # what the Django admin's user form does
        _assert_refused_and_revoked(world, raw, "user.deactivated")


def test_a_creator_who_may_no_longer_hold_keys_is_refused_even_without_the_revocation(world, django_db_blocker):
    """Defence in depth: a path that skips the services (a queryset update) still leaves the key powerless
    on the API, which checks the creator on every call."""
    with django_db_blocker.unblock():
        raw = _admin_key(world)
        Membership.objects.filter(user=world.admin, organization=world.org).update(role=Role.VIEWER)
        assert _threads(raw).status_code == 401
        User.objects.filter(pk=world.admin.pk).update(is_active=False)
        Membership.objects.filter(user=world.admin, organization=world.org).update(role=Role.ADMIN)
        assert _threads(raw).status_code == 401


def test_a_service_key_owns_no_threads_and_is_shown_as_such(world, django_db_blocker):
    with django_db_blocker.unblock():
        out = StringIO()
        call_command("create_api_key", "--org", world.org.slug, "--name", "ops", "--scopes", "chat,read,checks",
                     stdout=out)
        raw = out.getvalue().strip().splitlines()[-1]
        key = ApiKey.objects.get(organization=world.org, name="ops")
        assert key.principal == ApiKey.Principal.SERVICE and key.created_by is None
        # No thread of the owner's (or anyone's): listing, reading and writing threads are refused.
        listed = _threads(raw)
        assert listed.status_code == 403 and "Service keys" in listed.json()["detail"]
        assert str(world.owner_thread.pk) not in listed.content.decode()
        detail = Client().get(f"/api/v1/threads/{world.owner_thread.pk}/", HTTP_AUTHORIZATION=f"Bearer {raw}")
        assert detail.status_code == 403
        created = Client().post("/api/v1/threads/", {"model": DEMO}, content_type="application/json",
                                HTTP_AUTHORIZATION=f"Bearer {raw}")
        assert created.status_code == 403
        with schema_context(world.org.schema_name):
            assert Thread.objects.count() == 1
        # It does serve what belongs to the organization: /v1 and the organization's data.
        assert _v1(raw, "GET", "/v1/models").status_code == 200
        assert Client().get("/api/v1/organization/", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 200
        # Not a member, not a seat; the keys page names it a service key, not a person.
        assert Membership.objects.filter(organization=world.org).count() == 2
        page = _signed_in(world.owner).get(f"/o/{world.org.slug}/settings/api-keys/").content.decode()
        assert 'data-testid="key-principal">Service key</span>' in page


def test_the_keys_page_names_a_member_keys_creator(world, django_db_blocker):
    with django_db_blocker.unblock():
        _admin_key(world)
        page = _signed_in(world.owner).get(f"/o/{world.org.slug}/settings/api-keys/").content.decode()
        assert f'data-testid="key-principal">{world.admin.email}</span>' in page
        assert 'data-testid="key-acts-as-you"' in page  # the page says whom a key acts as, and when it stops


# ---------------------------------------------------------------- minting needs re-authentication


@pytest.mark.django_db
def test_the_keys_page_asks_to_reauthenticate_before_minting(client_for, org_a):
    admin = client_for("a", "admin")
    url = f"/o/{org_a.slug}/settings/api-keys/"
    assert admin.get(url).status_code == 200  # looking needs no confirmation
    refused = admin.post(url, {"name": "CRM", "scopes": ["read"]})
    assert refused.status_code == 302 and refused["Location"].startswith("/accounts/reauthenticate/?next=")
    assert not ApiKey.objects.filter(organization=org_a, name="CRM").exists()
    page = admin.get(refused["Location"])
    assert page.status_code == 200 and 'name="password"' in page.content.decode()
    reauthenticate(admin)
    created = admin.post(url, {"name": "CRM", "scopes": ["read"]})
    assert created.status_code == 200 and created.context["new_key"].raw.startswith("prm_")


@pytest.mark.django_db
def test_the_api_asks_a_session_to_reauthenticate_before_minting(client_for, org_a):
    admin = client_for("a", "admin")
    headers = {"HTTP_X_ORGANIZATION": org_a.slug}
    body = {"name": "CRM", "scopes": ["read"]}
    refused = admin.post("/api/v1/api-keys/", body, content_type="application/json", **headers)
    assert refused.status_code == 403
    assert refused.json()["code"] == "reauthentication_required"
    assert refused.json()["reauthenticate_url"] == "/accounts/reauthenticate/"
    assert not ApiKey.objects.filter(organization=org_a, name="CRM").exists()
    reauthenticate(admin)
    assert admin.post("/api/v1/api-keys/", body, content_type="application/json", **headers).status_code == 201


# ---------------------------------------------------------------- the revocation cache race


@pytest.mark.django_db
def test_a_request_that_read_the_key_before_its_revocation_cannot_refill_the_cache(
        tenant_world, org_a, django_capture_on_commit_callbacks):
    """Request R misses the cache and reads the row (not revoked); the revocation commits and drops
    the entry; R then writes what it read. Its write must not land, or the key would live 300 s more."""
    new = api_key_create(organization=org_a, name="raced", scopes=["chat"], user=tenant_world["a"]["admin"],
                         actor=Actor.system("tests"))
    prefix = new.key.prefix
    cached, generation = key_cache_read(prefix)  # R: a miss, and the generation it saw
    assert cached is None
    entry = key_entry_read(prefix)  # R: the row, before the revocation
    assert entry["revoked"] is False
    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(key=new.key, actor=Actor.system("tests"))
    assert key_cache_fill(prefix, generation, entry) is False  # R's late write is refused
    assert key_cache_read(prefix)[0] is None
    assert api_key_authenticate(new.raw) is None
    # A fill that starts after the revocation lands (and says revoked): the guard refuses only stale reads.
    _cached, current = key_cache_read(prefix)
    assert key_cache_fill(prefix, current, key_entry_read(prefix)) is True
    assert key_cache_read(prefix)[0]["revoked"] is True


@pytest.mark.django_db
def test_a_service_key_gets_no_server_error_anywhere_and_requests_checks_as_no_one(
        funded, registries, django_capture_on_commit_callbacks):
    """No API view may treat the service principal as a person: every endpoint answers it a 2xx or a 4xx,
    and a check it requests records no requesting user."""
    org_a, _org_b = funded
    raw = api_key_create(organization=org_a, name="ops", scopes=["chat", "read", "checks"],
                         actor=Actor.system("tests")).raw
    rate_limits_reset(org_a)
    for method, url in _endpoints():
        response = call(Client(), method, url, {}, **bearer(raw))
        assert response.status_code < 500, (method, url, response.status_code)
    with django_capture_on_commit_callbacks(execute=True):
        queued = Client().post("/api/v1/checks/", {"cnpj": "19131243000197"}, content_type="application/json",
                               **bearer(raw))
    assert queued.status_code in (201, 202), queued.content
    with schema_context(org_a.schema_name):
        check = Check.objects.get(pk=queued.json()["id"])
        assert check.requested_by_id is None and check.api_key_id == ApiKey.objects.get(name="ops").pk


def test_v1_cannot_put_back_a_key_revoked_after_it_read_it(world, django_db_blocker):
    """The same race on /v1's path (async pool and async Redis), phase by phase on committed rows."""
    with django_db_blocker.unblock():
        new = api_key_create(organization=world.org, name="raced", scopes=["chat"], user=world.admin,
                             actor=Actor.system("tests"))
        prefix = new.key.prefix

        async def read():  # what /v1 does on a miss before filling: the generation, then the row
            try:
                generation = await redis_async_client().get(generation_key(prefix))
                return generation, await key_entry_read_async(prefix)
            finally:
                await db_async.async_pool_close()
                await async_client_close()

        async def fill(generation, entry):
            try:
                return await key_cache_fill_async(redis_async_client(), prefix, generation, entry)
            finally:
                await async_client_close()

        generation, entry = asyncio.run(read())
        assert entry["revoked"] is False
        api_key_revoke(key=new.key, actor=Actor.system("tests"))  # commits; the entry is forgotten
        assert asyncio.run(fill(generation, entry)) is False
        assert key_cache_read(prefix)[0] is None
        assert _v1(new.raw, "GET", "/v1/models").status_code == 401
