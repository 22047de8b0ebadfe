"""Plans enforce their seats (issue 14, item 8): members plus pending, unexpired invitations.

Inviting at the limit is refused on the members page (test_abuse covers the page's message and its
upgrade link); two invitations at once for the last seat never both pass; an acceptance refused
because the plan shrank tells the invitee, and the owners and admins (e-mail and audit log, once a
day per invitation); after a downgrade below the members there are, everyone stays and the members
page says why nobody new can join.
"""

from __future__ import annotations

import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.db import connections
from django.test import Client
from django_tenants.utils import schema_context

from accounts.models import User
from billing.models import BillingAccount, Plan
from tenants.audit.models import AuditEvent
from tenants.audit.services import Actor
from tenants.models import Invitation, Membership, Organization, Role
from tenants.selectors import seat_usage
from tenants.services import SEATS_FULL, invitation_create, organization_create

from .orgs import organization_drop

PO = Path(__file__).resolve().parent.parent / "locale" / "pt_BR" / "LC_MESSAGES" / "django.po"


def person(prefix: str, **extra) -> User:
    return User.objects.create_user(email=f"{prefix}-{uuid.uuid4().hex[:8]}@example.com", password="x-long-pass-1",
                                    **extra)


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def plan_set(org: Organization, code: str) -> None:
    BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code=code))


def invite(client: Client, org: Organization, email: str, role: str = "member"):
    return client.post(f"/o/{org.slug}/settings/members/", {"email": email, "role": role})


def tokens_from(outbox) -> dict[str, str]:
    return {message.to[0]: re.search(r"/invitations/([-_A-Za-z0-9]+)/", message.body).group(1)
            for message in outbox if "/invitations/" in message.body}


def test_two_invitations_at_once_for_the_last_seat_never_both_pass(django_db_blocker):
    """Free has 3 seats: the owner and one pending invitation leave one. Four admins' requests at once: one
    invitation is written, three are refused with `seats_full`."""
    with django_db_blocker.unblock():
        owner = person("race-owner")
        org = organization_create(user=owner, name=f"Seat race {uuid.uuid4().hex[:6]}", actor=Actor.system("tests"))
        invitation_create(organization=org, email="first@example.com", role=Role.MEMBER, invited_by=owner,
                          actor=Actor.system("tests"))
        assert seat_usage(organization=org).used == 2
    barrier = threading.Barrier(4)

    def attempt(n: int):
        try:
            barrier.wait(timeout=30)
            return invitation_create(organization=org, email=f"racer-{n}@example.com", role=Role.MEMBER,
                                     invited_by=owner, actor=Actor.system("tests"))
        except ValidationError as error:
            return error
        finally:
            connections.close_all()

    try:
        with django_db_blocker.unblock(), ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(attempt, range(4)))
        refused = [r for r in results if isinstance(r, ValidationError)]
        assert len(refused) == 3, results
        assert {error.code for error in refused} == {SEATS_FULL}
        with django_db_blocker.unblock():
            pending = Invitation.objects.filter(organization=org, status=Invitation.Status.PENDING)
            assert pending.count() == 2
            assert seat_usage(organization=org).used == 3
    finally:
        with django_db_blocker.unblock():
            organization_drop(org)
            owner.delete()


@pytest.mark.django_db
def test_a_refused_acceptance_tells_the_invitee_and_the_owners_and_admins_once(django_capture_on_commit_callbacks):
    owner = person("owner")
    org = organization_create(user=owner, name=f"Shrunk {uuid.uuid4().hex[:6]}", actor=Actor.system("tests"))
    admin = person("admin", language="pt-br")
    Membership.objects.create(user=admin, organization=org, role=Role.ADMIN)
    plan_set(org, "starter")  # 5 seats: two members and three invitations
    emails = [f"join-{n}-{uuid.uuid4().hex[:6]}@example.com" for n in range(3)]
    with django_capture_on_commit_callbacks(execute=True):
        for email in emails:
            assert invite(signed_in(owner), org, email).status_code == 302
    tokens = tokens_from(mail.outbox)
    plan_set(org, "free")  # 3 seats: room for one of the three
    invitees = [User.objects.create_user(email=email, password="x-long-pass-1") for email in emails]
    assert signed_in(invitees[0]).post(f"/invitations/{tokens[emails[0]]}/").status_code == 302

    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        refused = signed_in(invitees[1]).post(f"/invitations/{tokens[emails[1]]}/")
    assert refused.status_code == 400
    assert f"{org.name} has no free seat on its plan" in refused.content.decode()
    assert not Membership.objects.filter(organization=org, user=invitees[1]).exists()
    assert sorted(message.to[0] for message in mail.outbox) == sorted([owner.email, admin.email])
    for message in mail.outbox:
        assert emails[1] in message.body
        assert f"/o/{org.slug}/billing/" in message.body and f"/o/{org.slug}/settings/members/" in message.body
    subjects = {message.to[0]: message.subject for message in mail.outbox}
    assert "has no free seat" in subjects[owner.email]
    assert "não tem assento livre" in subjects[admin.email]  # in the admin's own language
    with schema_context(org.schema_name):
        [event] = AuditEvent.objects.filter(action="invitation.refused_no_seat")
        assert event.after == {"email": emails[1], "members": 3, "seats": 3}
        assert event.actor_label == emails[1]

    # Pressing "Accept" again: refused again, the admins are not written to again the same day.
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        again = signed_in(invitees[1]).post(f"/invitations/{tokens[emails[1]]}/")
    assert again.status_code == 400 and mail.outbox == []
    with schema_context(org.schema_name):
        assert AuditEvent.objects.filter(action="invitation.refused_no_seat").count() == 1

    # The members page tells the admins why (the owner reads it in English): every seat is a member's.
    page = signed_in(owner).get(f"/o/{org.slug}/settings/members/").content.decode()
    assert "pending invitations cannot be accepted until a seat is free" in page


@pytest.mark.django_db
def test_after_a_downgrade_below_the_members_everyone_stays_and_nobody_new_joins(org_a, client_for):
    """org-a has four members; on Free (3 seats) they all keep access, the page says so, and inviting is
    refused until there are fewer members than seats."""
    plan_set(org_a, "free")
    admin = client_for("a", "admin")
    page = admin.get(f"/o/{org_a.slug}/settings/members/")
    assert page.status_code == 200
    text = page.content.decode()
    assert Membership.objects.filter(organization=org_a).count() == 4
    assert "The plan has 3 seats and 4 people are members" in text
    assert "nobody new can join until there are fewer members than seats" in text
    for role in ("member", "viewer"):
        assert client_for("a", role).get(f"/o/{org_a.slug}/").status_code == 200

    refused = invite(admin, org_a, "newcomer@example.com")
    assert refused.status_code == 400
    assert f"{org_a.name} uses all 3 seats of its plan" in refused.content.decode()
    assert not Invitation.objects.filter(organization=org_a, email="newcomer@example.com").exists()

    # Two leave: three members on three seats, still full; one more leaves and an invitation passes.
    viewer = Membership.objects.get(organization=org_a, role=Role.VIEWER)
    assert admin.post(f"/o/{org_a.slug}/settings/members/{viewer.pk}/remove/").status_code == 302
    assert invite(admin, org_a, "newcomer@example.com").status_code == 400
    member = Membership.objects.get(organization=org_a, role=Role.MEMBER)
    assert admin.post(f"/o/{org_a.slug}/settings/members/{member.pk}/remove/").status_code == 302
    assert "The plan has 3 seats" not in admin.get(f"/o/{org_a.slug}/settings/members/").content.decode()
    assert invite(admin, org_a, "newcomer@example.com").status_code == 302


def test_every_seat_refusal_is_in_the_portuguese_catalog():
    """Each message a seat refusal shows (the page, the invitee, the admins' e-mail) has a pt-BR translation."""
    entries = po_entries()
    wanted = [
        "%(name)s uses all %(seats)s seats of its plan (pending invitations count). An owner or admin can upgrade "
        "the plan on the Billing page.",
        "%(name)s has no free seat on its plan. Ask one of its owners or admins to upgrade the plan (on its Billing "
        "page) or to free a seat, then accept again.",
        "%(name)s has no free seat: an invitation could not be accepted",
        "%(email)s tried to accept their invitation to %(name)s on Prumo, but every seat of the plan is taken. They "
        "can join once a seat is free.",
        "Upgrade the plan for more seats",
        "Upgrade the plan for more seats:",
        "Or free a seat by removing a member:",
        "The plan has %(limit)s seats and %(members)s people are members. Everyone keeps access, but nobody new can "
        "join until there are fewer members than seats.",
        "Every seat is taken by a member: pending invitations cannot be accepted until a seat is free.",
    ]
    for msgid in wanted:
        assert entries.get(msgid), msgid


def po_entries() -> dict[str, str]:
    """msgid → msgstr of the pt-BR catalog, continuation lines joined."""
    entries = {}
    for block in PO.read_text().split("\n\n"):
        parts: dict[str, str] = {}
        current = None
        for line in block.splitlines():
            match = re.match(r'^(msgid|msgstr) "(.*)"$', line)
            if match:
                current = match.group(1)
                parts[current] = match.group(2)
            elif current and line.startswith('"'):
                parts[current] += line[1:-1]
        if "msgid" in parts:
            entries[parts["msgid"]] = parts.get("msgstr", "")
    return entries
