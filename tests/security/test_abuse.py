"""Item 9: free abuse is bounded — organizations per user, seats, invitation rate, invitation e-mail text."""

from __future__ import annotations

import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.db import connections
from django.test import Client
from django.utils import timezone

from accounts.models import User
from billing.models import BillingAccount, Plan
from tenants.audit.services import Actor
from tenants.models import Invitation, Membership, Organization
from tenants.services import organization_create

from ..orgs import organization_drop


def person(prefix: str = "abuse") -> User:
    return User.objects.create_user(email=f"{prefix}-{uuid.uuid4().hex[:8]}@example.com", password="x-long-pass-1")


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def plan_set(org: Organization, code: str) -> None:
    BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code=code))


def invite(client: Client, org: Organization, email: str, role: str = "member"):
    return client.post(f"/o/{org.slug}/settings/members/", {"email": email, "role": role})


@pytest.fixture
def free_org(db) -> tuple[Organization, User]:
    """A new organization on Free (3 seats) whose only member is its owner."""
    owner = person("owner")
    return organization_create(user=owner, name=f"Seats {uuid.uuid4().hex[:6]}", actor=Actor.system("tests")), owner


# ---------------------------------------------------------------- organizations per user


@pytest.mark.django_db
def test_a_person_creates_at_most_three_organizations_a_day():
    user = person()
    client = signed_in(user)
    for n in range(3):
        response = client.post("/orgs/new/", {"name": f"Mine {n} {uuid.uuid4().hex[:4]}"})
        assert response.status_code == 302, response.content.decode()[:1000]

    refused = client.post("/orgs/new/", {"name": "One too many"})
    assert refused.status_code == 200
    assert "You can create up to 3 organizations a day" in refused.content.decode()
    assert not Organization.objects.filter(name="One too many").exists()
    assert Organization.objects.filter(created_by=user).count() == 3

    # A day later the oldest no longer counts; seeding and staff scripts (system actors) are never limited.
    oldest = Organization.objects.filter(created_by=user).order_by("created_at").first()
    Organization.objects.filter(pk=oldest.pk).update(created_at=timezone.now() - timedelta(hours=25))
    assert client.post("/orgs/new/", {"name": "Next day"}).status_code == 302
    organization_create(user=user, name="Seeded for them", actor=Actor.system("tests"))
    assert Organization.objects.filter(created_by=user).count() == 5


def test_simultaneous_creations_never_pass_the_limit(django_db_blocker, settings):
    """Three requests at once for the last allowed organization: exactly one gets it."""
    settings.ORGANIZATIONS_PER_USER_PER_DAY = 1
    with django_db_blocker.unblock():
        user = person("racer")
    barrier = threading.Barrier(3)

    def create(n: int):
        try:
            barrier.wait(timeout=30)
            return organization_create(user=user, name=f"Race {n} {uuid.uuid4().hex[:6]}")
        except ValidationError as error:
            return error
        finally:
            connections.close_all()

    try:
        with django_db_blocker.unblock(), ThreadPoolExecutor(max_workers=3) as pool:
            results = list(pool.map(create, range(3)))
        made = [r for r in results if isinstance(r, Organization)]
        refused = [r for r in results if isinstance(r, ValidationError)]
        assert (len(made), len(refused)) == (1, 2), results
        assert all("up to 1 organizations a day" in " ".join(error.messages) for error in refused)
    finally:
        with django_db_blocker.unblock():
            for org in Organization.objects.filter(created_by=user):
                organization_drop(org)
            user.delete()


# ---------------------------------------------------------------- seats


@pytest.mark.django_db
def test_free_seats_count_pending_invitations_and_point_to_billing(free_org):
    org, owner = free_org
    client = signed_in(owner)
    assert invite(client, org, "one@example.com").status_code == 302
    assert invite(client, org, "two@example.com").status_code == 302
    assert invite(client, org, "two@example.com", "viewer").status_code == 302, "re-inviting replaces, takes no seat"

    refused = invite(client, org, "three@example.com")
    assert refused.status_code == 400
    page = refused.content.decode()
    assert f"{org.name} uses all 3 seats of its plan" in page
    assert f'href="/o/{org.slug}/billing/"' in page and "Upgrade the plan for more seats" in page
    assert not Invitation.objects.filter(organization=org, email="three@example.com").exists()

    plan_set(org, "starter")  # 5 seats
    assert invite(client, org, "three@example.com").status_code == 302
    assert Invitation.objects.filter(organization=org, status=Invitation.Status.PENDING).count() == 3


@pytest.mark.django_db
def test_acceptance_is_refused_while_the_organization_is_full(free_org, django_capture_on_commit_callbacks):
    org, owner = free_org
    plan_set(org, "starter")
    emails = [f"join-{n}-{uuid.uuid4().hex[:6]}@example.com" for n in range(3)]
    with django_capture_on_commit_callbacks(execute=True):
        for email in emails:
            assert invite(signed_in(owner), org, email).status_code == 302
    tokens = {message.to[0]: re.search(r"/invitations/([-_A-Za-z0-9]+)/", message.body).group(1)
              for message in mail.outbox}
    plan_set(org, "free")  # back to 3 seats with three invitations out

    invitees = [User.objects.create_user(email=email, password="x-long-pass-1") for email in emails]
    for invitee in invitees[:2]:
        assert signed_in(invitee).post(f"/invitations/{tokens[invitee.email]}/").status_code == 302
    last = signed_in(invitees[2]).post(f"/invitations/{tokens[emails[2]]}/")
    assert last.status_code == 400
    assert f"{org.name} has no free seat on its plan" in last.content.decode()
    assert Membership.objects.filter(organization=org).count() == 3
    assert Invitation.objects.get(organization=org, email=emails[2]).status == Invitation.Status.PENDING

    plan_set(org, "starter")
    assert signed_in(invitees[2]).post(f"/invitations/{tokens[emails[2]]}/").status_code == 302
    assert Membership.objects.filter(organization=org).count() == 4


# ---------------------------------------------------------------- invitation rate


@pytest.mark.django_db
def test_invitations_are_limited_per_organization_and_hour(org_a, client_for, settings):
    settings.INVITATIONS_PER_ORGANIZATION_PER_HOUR = 3
    plan_set(org_a, "business")  # seats are not what this test is about
    admin = client_for("a", "admin")
    for n in range(3):
        assert invite(admin, org_a, f"rate-{n}@example.com").status_code == 302

    refused = invite(admin, org_a, "rate-3@example.com")
    assert refused.status_code == 400
    assert "This organization sent 3 invitations in the last hour" in refused.content.decode()
    recent = Invitation.objects.filter(organization=org_a, created_at__gte=timezone.now() - timedelta(hours=1))
    assert recent.count() == 3

    recent.update(created_at=timezone.now() - timedelta(minutes=61))
    assert invite(admin, org_a, "rate-3@example.com").status_code == 302


# ---------------------------------------------------------------- the e-mail


@pytest.mark.django_db
def test_the_organization_name_in_an_invitation_email_is_plain_text_without_links(
        org_a, client_for, django_capture_on_commit_callbacks):
    plan_set(org_a, "business")
    hostile = "Click http://evil.example & www.win.example now, to claim your prize <b>before</b> it is gone"
    Organization.objects.filter(pk=org_a.pk).update(name=hostile)
    with django_capture_on_commit_callbacks(execute=True):
        assert invite(client_for("a", "owner"), org_a, "target@example.com").status_code == 302

    [message] = mail.outbox
    assert message.alternatives == [], "plain text only"
    text = message.subject + "\n" + message.body
    links = re.findall(r"\b(?:[a-z][a-z0-9+.-]*://|www\.)\S+", text, re.IGNORECASE)
    assert len(links) == 1 and "/invitations/" in links[0], links
    assert "evil.example" not in text and "win.example" not in text
    shown = "Click http[:]//evil[.]example & www[.]win[.]example now, to…"
    assert len(shown) == 60
    assert shown in message.subject and shown in message.body
    assert "&amp;" not in text, "plain text is not HTML-escaped"
