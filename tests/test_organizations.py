"""Organizations: creation with a provisioned schema, members, roles, invitations, last owner."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import schema_context

from accounts.models import User
from tenants.audit.models import AuditEvent
from tenants.audit.services import Actor
from tenants.models import Invitation, Membership, Organization, Role
from tenants.services import membership_remove, membership_role_change, organization_create

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _room_to_invite(tenant_world, db):
    """org-a has four members, one more than Free's seats: these tests are not about seats
    (tests/security/test_abuse.py is), so org-a is on Pro here."""
    from billing.models import BillingAccount, Plan

    BillingAccount.objects.filter(pk=tenant_world["a"]["org"].pk).update(plan=Plan.objects.get(code="pro"))


def _schema_tables(schema: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema])
        return {row[0] for row in cursor.fetchall()}


def _actions(org: Organization) -> list[str]:
    with schema_context(org.schema_name):
        return list(AuditEvent.objects.order_by("id").values_list("action", flat=True))


def test_signed_in_user_creates_an_organization_and_lands_on_its_dashboard(tenant_world):
    user = tenant_world["a"]["member"]
    client = Client()
    client.force_login(user)
    response = client.post("/orgs/new/", {"name": "Acme Ltda"})
    assert response.status_code == 302
    assert response["Location"] == "/o/acme-ltda/"
    org = Organization.objects.get(slug="acme-ltda")
    assert org.schema_name == "org_acme_ltda"
    assert {"audit_auditevent", "django_migrations"} <= _schema_tables(org.schema_name)
    assert Membership.objects.get(organization=org, user=user).role == Role.OWNER
    dashboard = client.get(response["Location"])
    assert dashboard.status_code == 200
    assert "<h1>Acme Ltda</h1>" in dashboard.content.decode()
    assert _actions(org) == ["organization.created", "membership.created"]


def test_new_schema_records_the_same_migrations_as_public(tenant_world):
    """So later `migrate_schemas` runs treat a provisioned schema like any other tenant."""
    org = organization_create(user=tenant_world["a"]["owner"], name="Recorded")

    def applied(schema: str) -> set[tuple[str, str]]:
        with connection.cursor() as cursor:
            cursor.execute(f'SELECT app, name FROM "{schema}".django_migrations')
            return set(cursor.fetchall())

    tenant = applied(org.schema_name)
    assert ("audit", "0001_initial") in tenant
    assert tenant == applied("public")


def test_slugs_are_unique_and_derived_from_the_name(tenant_world):
    owner = tenant_world["a"]["owner"]
    first = organization_create(user=owner, name="Twin Co")
    second = organization_create(user=owner, name="Twin Co")
    assert (first.slug, second.slug) == ("twin-co", "twin-co-2")
    client = Client()
    client.force_login(owner)
    response = client.post("/orgs/new/", {"name": "Another", "slug": "twin-co"})
    assert response.status_code == 200
    assert "This address is taken" in response.content.decode()


def test_empty_name_is_a_form_error_not_a_crash(client_for):
    response = client_for("a").post("/orgs/new/", {"name": "  "})
    assert response.status_code == 200
    assert Organization.objects.filter(slug="").count() == 0
    assert "This field is required" in response.content.decode()


def test_org_list_shows_only_my_organizations(client_for, org_a, org_b):
    html = client_for("a", "viewer").get("/orgs/").content.decode()
    assert org_a.name in html
    assert org_b.name not in html


def test_header_switcher_lists_my_organizations_with_a_fixed_number_of_queries(
    client_for, org_a, django_assert_max_num_queries
):
    from .test_dashboard import MAX_QUERIES

    client = client_for("a", "owner")
    with django_assert_max_num_queries(MAX_QUERIES):  # the dashboard's own reads included
        response = client.get(f"/o/{org_a.slug}/")
    assert 'data-testid="org-switcher"' in response.content.decode()


def test_admin_invites_by_email_and_the_invitee_accepts(client_for, org_a, django_capture_on_commit_callbacks):
    admin = client_for("a", "admin")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin.post(
            f"/o/{org_a.slug}/settings/members/", {"email": "New.Person@Example.com", "role": "member"}
        )
    assert response.status_code == 302
    invitation = Invitation.objects.get(organization=org_a, email="new.person@example.com")
    assert invitation.status == Invitation.Status.PENDING
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["new.person@example.com"]
    link = re.search(r"http://\S+/invitations/(\S+)/", message.body)
    assert link, message.body
    token = link.group(1)
    assert invitation.token_hash != token  # only the hash is stored

    # Unknown address: the link offers sign-up first.
    anonymous = Client().get(f"/invitations/{token}/")
    assert anonymous.status_code == 200
    assert "/accounts/signup/?next=/invitations/" in anonymous.content.decode()

    invitee = User.objects.create_user(email="new.person@example.com", password="x-long-password-1")
    client = Client()
    client.force_login(invitee)
    accepted = client.post(f"/invitations/{token}/")
    assert accepted.status_code == 302 and accepted["Location"] == f"/o/{org_a.slug}/"
    assert Membership.objects.get(organization=org_a, user=invitee).role == Role.MEMBER
    assert client.post(f"/invitations/{token}/").status_code == 404  # used once
    assert _actions(org_a)[-3:] == ["invitation.created", "invitation.sent", "invitation.accepted"]


def test_invitation_for_someone_else_is_refused(client_for, org_a, tenant_world, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        client_for("a", "owner").post(
            f"/o/{org_a.slug}/settings/members/", {"email": "x@example.com", "role": "viewer"}
        )
    token = re.search(r"/invitations/(\S+)/", mail.outbox[0].body).group(1)
    response = client_for("b", "member").post(f"/invitations/{token}/")
    assert response.status_code == 400
    assert "x@example.com" in response.content.decode()
    assert not Membership.objects.filter(organization=org_a, user=tenant_world["b"]["member"]).exists()


def test_members_and_viewers_cannot_invite_or_change_roles(client_for, org_a, tenant_world):
    for role in ("member", "viewer"):
        client = client_for("a", role)
        client.post(f"/o/{org_a.slug}/settings/members/", {"email": "sneaky@example.com", "role": "owner"})
        target = Membership.objects.get(organization=org_a, user=tenant_world["a"]["viewer"])
        assert client.post(f"/o/{org_a.slug}/settings/members/{target.pk}/role/", {"role": "admin"}).status_code == 403
        assert client.post(f"/o/{org_a.slug}/settings/members/{target.pk}/remove/").status_code == 403
    assert not Invitation.objects.filter(email="sneaky@example.com").exists()


def test_admin_cannot_grant_owner_but_owner_can(client_for, org_a, tenant_world):
    target = Membership.objects.get(organization=org_a, user=tenant_world["a"]["member"])
    client_for("a", "admin").post(f"/o/{org_a.slug}/settings/members/{target.pk}/role/", {"role": "owner"})
    target.refresh_from_db()
    assert target.role == Role.MEMBER
    client_for("a", "owner").post(f"/o/{org_a.slug}/settings/members/{target.pk}/role/", {"role": "admin"})
    target.refresh_from_db()
    assert target.role == Role.ADMIN
    assert _actions(org_a)[-1] == "membership.role_changed"


def test_the_last_owner_can_never_be_removed_demoted_or_leave(client_for, org_a, tenant_world):
    owner_membership = Membership.objects.get(organization=org_a, role=Role.OWNER)
    actor = Actor.system("test")
    with pytest.raises(ValidationError):
        membership_role_change(membership=owner_membership, role=Role.ADMIN, actor=actor)
    with pytest.raises(ValidationError):
        membership_remove(membership=owner_membership, actor=actor)
    response = client_for("a", "owner").post(f"/o/{org_a.slug}/settings/members/leave/", follow=True)
    assert "last owner" in response.content.decode()
    owner_membership.refresh_from_db()
    assert owner_membership.role == Role.OWNER

    # With a second owner, the first may step down.
    second = Membership.objects.get(organization=org_a, user=tenant_world["a"]["admin"])
    membership_role_change(membership=second, role=Role.OWNER, actor=actor)
    membership_role_change(membership=owner_membership, role=Role.MEMBER, actor=actor)
    assert Membership.objects.filter(organization=org_a, role=Role.OWNER).count() == 1


def test_member_leaves_and_loses_access(client_for, org_a, tenant_world):
    client = client_for("a", "viewer")
    response = client.post(f"/o/{org_a.slug}/settings/members/leave/")
    assert response.status_code == 302 and response["Location"] == "/orgs/"
    assert client.get(f"/o/{org_a.slug}/").status_code == 404
    assert _actions(org_a)[-1] == "membership.left"


def test_admin_removes_a_member(client_for, org_a, tenant_world):
    target = Membership.objects.get(organization=org_a, user=tenant_world["a"]["viewer"])
    client_for("a", "admin").post(f"/o/{org_a.slug}/settings/members/{target.pk}/remove/")
    assert not Membership.objects.filter(pk=target.pk).exists()
    with schema_context(org_a.schema_name):
        event = AuditEvent.objects.order_by("-id").first()
    assert event.action == "membership.removed"
    assert event.actor_label == "admin-a@example.com"
    assert event.before == {"user": "viewer-a@example.com", "role": "viewer"}
    assert event.request_id


def test_cannot_act_on_a_membership_of_another_organization(client_for, org_a, org_b, tenant_world):
    foreign = Membership.objects.get(organization=org_b, user=tenant_world["b"]["viewer"])
    response = client_for("a", "owner").post(f"/o/{org_a.slug}/settings/members/{foreign.pk}/remove/")
    assert response.status_code == 404
    assert Membership.objects.filter(pk=foreign.pk).exists()


def test_unknown_address_signs_up_from_the_invitation_and_comes_back_to_accept(
    client_for, org_a, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        client_for("a", "admin").post(
            f"/o/{org_a.slug}/settings/members/", {"email": "brand.new@example.com", "role": "viewer"}
        )
    token = re.search(r"/invitations/(\S+)/", mail.outbox[-1].body).group(1)
    visitor = Client()
    page = visitor.get(f"/invitations/{token}/").content.decode()
    signup_url = re.search(r'href="(/accounts/signup/\?next=[^"]+)"', page).group(1)
    visitor.post(
        signup_url,
        {"email": "brand.new@example.com", "password1": "Invited-pass-2026", "password2": "Invited-pass-2026"},
    )
    code = re.search(r"^\s*([A-Z0-9]{4}-[A-Z0-9]{4})\s*$", mail.outbox[-1].body, re.MULTILINE).group(1)
    verified = visitor.post("/accounts/confirm-email/", {"code": code})
    assert verified.status_code == 302 and verified["Location"] == f"/invitations/{token}/"
    accepted = visitor.post(verified["Location"])
    assert accepted["Location"] == f"/o/{org_a.slug}/"
    assert Membership.objects.get(organization=org_a, user__email="brand.new@example.com").role == Role.VIEWER


def test_members_page_queries_do_not_grow_with_members(client_for, org_a):
    client = client_for("a", "owner")

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(f"/o/{org_a.slug}/settings/members/").status_code == 200
        return len(queries)

    before = count()
    for n in range(5):
        extra = User.objects.create_user(email=f"extra-{n}@example.com", password="x-long-password-1")
        Membership.objects.create(user=extra, organization=org_a, role=Role.MEMBER)
    assert count() == before


@pytest.mark.parametrize("slug", ["a_b", "-edge", "double--hyphen", "espaço", "new", "admin"])
def test_invalid_or_reserved_addresses_are_form_errors(client_for, slug):
    response = client_for("a").post("/orgs/new/", {"name": "Whatever", "slug": slug})
    assert response.status_code == 200
    assert 'class="error"' in response.content.decode()
    assert not Organization.objects.filter(name="Whatever").exists()


def test_address_is_normalized_to_lowercase(tenant_world):
    org = organization_create(user=tenant_world["a"]["owner"], name="Upper", slug="MixedCase")
    assert (org.slug, org.schema_name) == ("mixedcase", "org_mixedcase")
