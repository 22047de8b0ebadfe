"""Two-factor authentication with allauth.mfa, driven through its real pages with real TOTP codes.

Enrolment, sign-in with a code or a recovery code, secrets encrypted at rest, and
organizations that require MFA of their members (pages redirect to enrolment, API sessions
get 403 `mfa_required`, API keys are unaffected, other organizations are unaffected).
"""

from __future__ import annotations

import io
import re

import pytest
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from cryptography.fernet import Fernet, InvalidToken
from django.apps import apps
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import schema_context

from billing.models import BillingAccount, Plan
from billing.ratelimits import rate_limit_keys
from chat.models import Thread
from core.redis_clients import redis_client
from tenants.api_keys import api_key_create
from tenants.audit.models import AuditEvent
from tenants.audit.services import Actor
from tenants.models import Membership, Organization, Role

from .totp import ENROL_URL, password_login, person, reauthenticate, signed_in, totp_enrol, totp_now

pytestmark = pytest.mark.django_db

def test_totp_enrolment_then_sign_in_asks_for_the_code():
    user = person()
    client = Client()
    assert password_login(client, user).status_code == 302
    # Adding a factor is a sensitive change: allauth asks for the password again first.
    assert client.get(ENROL_URL)["Location"].startswith("/accounts/reauthenticate/")
    reauthenticate(client)
    assert client.get(ENROL_URL).status_code == 200
    wrong = client.post(ENROL_URL, {"code": "000000"})
    assert wrong.status_code == 200 and "Incorrect code" in wrong.content.decode()
    secret = totp_enrol(client)
    totp = Authenticator.objects.get(user=user, type=Authenticator.Type.TOTP)
    assert Authenticator.objects.filter(user=user, type=Authenticator.Type.RECOVERY_CODES).count() == 1
    # Encrypted at rest: the database never holds the secret the authenticator app was given.
    assert secret not in totp.data["secret"] and secret.lower() not in totp.data["secret"].lower()

    client.post("/accounts/logout/")
    assert not signed_in(client)
    first_step = password_login(client, user)
    # The password alone does not sign in: allauth asks for the second factor.
    assert first_step.status_code == 302 and first_step["Location"] == "/accounts/2fa/authenticate/"
    assert not signed_in(client)
    refused = client.post("/accounts/2fa/authenticate/", {"code": "123456" if totp_now(secret) != "123456"
                                                          else "654321"})
    assert refused.status_code == 200 and "Incorrect code" in refused.content.decode()
    assert not signed_in(client)
    done = client.post("/accounts/2fa/authenticate/", {"code": totp_now(secret)})
    assert done.status_code == 302 and done["Location"] == "/orgs/"
    assert signed_in(client)


def test_sign_in_with_a_recovery_code_works_once():
    user = person()
    client = Client()
    password_login(client, user)
    totp_enrol(client)
    codes = client.get("/accounts/2fa/recovery-codes/")
    recovery = Authenticator.objects.get(user=user, type=Authenticator.Type.RECOVERY_CODES).wrap()
    unused = recovery.get_unused_codes()
    assert len(unused) == 10 and unused[0] in codes.content.decode()  # the page shows the codes to keep
    # The seed the codes derive from is encrypted at rest (allauth stores 80 hex digits in the clear).
    assert not re.fullmatch(r"[0-9a-f]{80}", recovery.instance.data["seed"])

    client.post("/accounts/logout/")
    password_login(client, user)
    done = client.post("/accounts/2fa/authenticate/", {"code": unused[0]})
    assert done.status_code == 302 and signed_in(client)

    again = Client()
    password_login(again, user)
    reused = again.post("/accounts/2fa/authenticate/", {"code": unused[0]})
    assert reused.status_code == 200 and "Incorrect code" in reused.content.decode()
    assert not signed_in(again)
    assert again.post("/accounts/2fa/authenticate/", {"code": unused[1]}).status_code == 302
    assert len(Authenticator.objects.get(pk=recovery.instance.pk).wrap().get_unused_codes()) == 8


def test_totp_secret_and_recovery_seed_are_encrypted_at_rest_and_keys_rotate(settings):
    from accounts.adapters import mfa_fernet

    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.MFA_ENCRYPTION_KEYS = [old_key]
    user = person()
    client = Client()
    password_login(client, user)
    secret = totp_enrol(client)
    stored = Authenticator.objects.get(user=user, type=Authenticator.Type.TOTP).data["secret"]
    assert stored != secret and Fernet(old_key).decrypt(stored.encode()).decode() == secret
    seed = Authenticator.objects.get(user=user, type=Authenticator.Type.RECOVERY_CODES).data["seed"]
    assert len(Fernet(old_key).decrypt(seed.encode()).decode()) == 80  # allauth's 40-byte hex seed, encrypted

    # Rotation: a new key first, re-encrypt, drop the old key: sign-in still works.
    settings.MFA_ENCRYPTION_KEYS = [new_key, old_key]
    out = io.StringIO()
    call_command("rotate_mfa_keys", stdout=out)
    assert "Re-encrypted 2 authenticator(s)" in out.getvalue()
    settings.MFA_ENCRYPTION_KEYS = [new_key]
    stored = Authenticator.objects.get(user=user, type=Authenticator.Type.TOTP).data["secret"]
    assert mfa_fernet().decrypt(stored.encode()).decode() == secret
    with pytest.raises(InvalidToken):
        Fernet(old_key).decrypt(stored.encode())
    client.post("/accounts/logout/")
    password_login(client, user)
    assert client.post("/accounts/2fa/authenticate/", {"code": totp_now(secret)}).status_code == 302
    assert signed_in(client)


def test_secrets_stored_in_plaintext_before_are_encrypted_by_the_migration():
    from importlib import import_module

    from accounts.adapters import mfa_fernet

    migration = import_module("accounts.migrations.0002_mfa_secrets_encrypted")
    user = person()
    secret = generate_totp_secret()
    Authenticator.objects.create(user=user, type=Authenticator.Type.TOTP, data={"secret": secret})
    migration.encrypt_plaintext(apps, None)
    migration.encrypt_plaintext(apps, None)  # twice: already-encrypted values are left alone
    stored = Authenticator.objects.get(user=user, type=Authenticator.Type.TOTP).data["secret"]
    assert stored != secret and mfa_fernet().decrypt(stored.encode()).decode() == secret


# ---------------------------------------------------------------- organizations that require MFA


def require_mfa(org: Organization) -> None:
    # A queryset update: the session-scoped fixture object stays as it was for other tests.
    Organization.objects.filter(pk=org.pk).update(require_mfa=True)


def test_organization_requiring_mfa_sends_members_without_it_to_enrol(tenant_world, client_for):
    org_a = tenant_world["a"]["org"]
    require_mfa(org_a)
    member = client_for("a", "member")
    response = member.get(f"/o/{org_a.slug}/")
    assert response.status_code == 302 and response["Location"] == ENROL_URL
    for path in (f"/o/{org_a.slug}/settings/", f"/o/{org_a.slug}/settings/members/"):
        assert member.get(path)["Location"] == ENROL_URL
    with schema_context(org_a.schema_name):
        threads_before = Thread.objects.count()
    posted = member.post(f"/o/{org_a.slug}/chat/new/", {"text": "hello"})
    assert posted.status_code == 302 and posted["Location"] == ENROL_URL
    htmx = member.post(f"/o/{org_a.slug}/chat/new/", {"text": "hello"}, HTTP_HX_REQUEST="true")
    assert htmx.status_code == 204 and htmx["HX-Redirect"] == ENROL_URL
    with schema_context(org_a.schema_name):
        assert Thread.objects.count() == threads_before  # refused before the view ran
    followed = member.get(f"/o/{org_a.slug}/", follow=True)
    assert f"{org_a.name} requires two-factor authentication" in followed.content.decode()

    # The same person in an organization that does not require it is not affected.
    Membership.objects.create(user=tenant_world["a"]["member"], organization=tenant_world["b"]["org"],
                              role=Role.MEMBER)
    assert member.get(f"/o/{tenant_world['b']['org'].slug}/").status_code == 200
    # Nor are the members of other organizations.
    assert client_for("b", "member").get(f"/o/{tenant_world['b']['org'].slug}/").status_code == 200


def test_member_with_a_second_factor_gets_in(tenant_world):
    org_a = tenant_world["a"]["org"]
    require_mfa(org_a)
    user = person("member")
    Membership.objects.create(user=user, organization=org_a, role=Role.MEMBER)
    client = Client()
    password_login(client, user)
    assert client.get(f"/o/{org_a.slug}/")["Location"] == ENROL_URL
    secret = totp_enrol(client)
    assert client.get(f"/o/{org_a.slug}/").status_code == 200

    # A fresh sign-in goes through the code, then straight in.
    fresh = Client()
    password_login(fresh, user, next_url=f"/o/{org_a.slug}/")
    done = fresh.post("/accounts/2fa/authenticate/", {"code": totp_now(secret)})
    assert done.status_code == 302 and done["Location"] == f"/o/{org_a.slug}/"
    assert fresh.get(f"/o/{org_a.slug}/").status_code == 200


def test_the_requirement_costs_no_extra_query(tenant_world):
    org_a = tenant_world["a"]["org"]
    user = person("member")
    Membership.objects.create(user=user, organization=org_a, role=Role.MEMBER)
    TOTP.activate(user, generate_totp_secret())
    client = Client()
    client.force_login(user)

    def dashboard_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(f"/o/{org_a.slug}/").status_code == 200
        # django-tenants' `SET search_path` depends on what ran before, not on the request.
        return len([query for query in queries if not query["sql"].startswith("SET search_path")])

    dashboard_queries()  # warm whatever is cached per process
    without = dashboard_queries()
    require_mfa(org_a)
    assert dashboard_queries() == without


def test_api_sessions_get_403_mfa_required_but_keys_are_unaffected(tenant_world, client_for):
    org_a = tenant_world["a"]["org"]
    require_mfa(org_a)
    headers = {"HTTP_X_ORGANIZATION": org_a.slug}
    response = client_for("a", "member").get("/api/v1/threads/", **headers)
    assert response.status_code == 403
    assert response.json()["code"] == "mfa_required" and org_a.name in response.json()["detail"]
    # Another organization's sessions are unaffected.
    assert client_for("b", "member").get("/api/v1/threads/", HTTP_X_ORGANIZATION="org-b").status_code == 200

    # Keys are not people: the requirement does not apply to them.
    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="starter"))
    redis_client().delete(*rate_limit_keys(org_a.pk, 0))
    key = api_key_create(organization=org_a, name="sync", scopes=["read"], actor=Actor.system("tests"),
                         user=tenant_world["a"]["admin"])
    assert Client().get("/api/v1/threads/", HTTP_AUTHORIZATION=f"Bearer {key.raw}").status_code == 200


def test_only_owners_with_a_second_factor_turn_the_requirement_on(tenant_world, client_for):
    org_a = tenant_world["a"]["org"]
    url = f"/o/{org_a.slug}/settings/"
    owner = client_for("a", "owner")
    page = owner.get(url)
    assert 'name="require_mfa"' in page.content.decode()

    refused = owner.post(url, {"name": org_a.name, "require_mfa": "on"})
    assert refused.status_code == 200
    assert "Activate two-factor authentication for your own account" in refused.content.decode()
    assert not Organization.objects.get(pk=org_a.pk).require_mfa

    # An admin may rename but not change the requirement: the field is disabled for them.
    TOTP.activate(tenant_world["a"]["admin"], generate_totp_secret())
    admin = client_for("a", "admin")
    assert admin.post(url, {"name": org_a.name, "require_mfa": "on"}).status_code == 302
    assert not Organization.objects.get(pk=org_a.pk).require_mfa

    TOTP.activate(tenant_world["a"]["owner"], generate_totp_secret())
    assert owner.post(url, {"name": org_a.name, "require_mfa": "on"}).status_code == 302
    assert Organization.objects.get(pk=org_a.pk).require_mfa
    with schema_context(org_a.schema_name):
        event = AuditEvent.objects.filter(action="organization.mfa_requirement_changed").latest("created_at")
    assert event.before == {"require_mfa": False} and event.after == {"require_mfa": True}
    assert event.actor_id == str(tenant_world["a"]["owner"].pk)
    # The owner (who has a factor) keeps using the organization; the member without one is sent to enrol.
    assert owner.get(f"/o/{org_a.slug}/").status_code == 200
    assert client_for("a", "member").get(f"/o/{org_a.slug}/")["Location"] == ENROL_URL
