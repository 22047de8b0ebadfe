"""An organization's request queues a Celery task that a real worker runs in that organization's schema.

The owner of org-a invites someone through the live server; the worker (a separate process)
sends the email and writes `invitation.sent` to org-a's audit log, and to no other schema.
Both processes commit to the test database, so this test reads with the blocker lifted and
removes what they wrote at the end.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest
import requests
from django_tenants.utils import schema_context

from .orgs import audit_events_remove
from .servers import body_text

PASSWORD = "correct-horse-battery"
POLL_SECONDS = 20.0
CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def csrf_token(session: requests.Session, url: str) -> str:
    response = session.get(url, timeout=10)
    response.raise_for_status()
    match = CSRF_INPUT.search(response.text)
    assert match, f"no CSRF token in {url}"
    assert session.cookies.get("csrftoken"), "no csrftoken cookie"
    return match.group(1)


def sign_in(base_url: str, email: str, password: str) -> requests.Session:
    session = requests.Session()
    login_url = f"{base_url}/accounts/login/"
    token = csrf_token(session, login_url)
    response = session.post(
        login_url, data={"csrfmiddlewaretoken": token, "login": email, "password": password},
        headers={"Referer": login_url}, allow_redirects=False, timeout=10,
    )
    assert response.status_code == 302, f"login failed ({response.status_code}): {response.text[:2000]}"
    assert session.cookies.get("sessionid"), "no session cookie after login"
    return session


def audit_events(schema_name: str, email: str) -> list:
    from tenants.audit.models import AuditEvent

    with schema_context(schema_name):
        return list(AuditEvent.objects.filter(after__email=email).order_by("created_at", "id"))


def wait_for(condition, *, timeout: float, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@pytest.fixture
def invitee(tenant_world, django_db_blocker):
    """A fresh address; whatever the server and the worker commit for it is removed afterwards.
    org-a (four members) is on Pro meanwhile: Free's three seats would refuse the invitation."""
    from billing.models import BillingAccount, Plan
    from tenants.models import Invitation

    email = f"invitee-{uuid.uuid4().hex[:12]}@example.com"
    with django_db_blocker.unblock():
        accounts = BillingAccount.objects.filter(pk=tenant_world["a"]["org"].pk)
        plan = accounts.get().plan
        accounts.update(plan=Plan.objects.get(code="pro"))
    yield email
    with django_db_blocker.unblock():
        accounts.update(plan=plan)
        for key in ("a", "b"):
            audit_events_remove(tenant_world[key]["org"].schema_name, after__email=email)
        Invitation.objects.filter(email=email).delete()


def test_invitation_task_runs_in_the_inviting_organizations_schema(
    live_server_process, celery_worker_process, tenant_world, invitee, django_db_blocker
):
    from tenants.models import Invitation, invitation_token_hash

    org_a, org_b = tenant_world["a"]["org"], tenant_world["b"]["org"]
    base = live_server_process.url
    members_url = f"{base}/o/{org_a.slug}/settings/members/"

    session = sign_in(base, "owner-a@example.com", PASSWORD)
    token = csrf_token(session, members_url)
    response = session.post(
        members_url, data={"csrfmiddlewaretoken": token, "email": invitee, "role": "member"},
        headers={"Referer": members_url}, allow_redirects=False, timeout=10,
    )
    assert response.status_code == 302, f"invitation not created ({response.status_code}): {response.text[:2000]}"
    assert response.headers["Location"].endswith(f"/o/{org_a.slug}/settings/members/")

    with django_db_blocker.unblock():
        invitation = Invitation.objects.get(email=invitee, organization=org_a)
        # The worker commits the event in org-a's schema; poll (the task is queued on commit).
        sent = wait_for(
            lambda: [e for e in audit_events(org_a.schema_name, invitee) if e.action == "invitation.sent"],
            timeout=POLL_SECONDS,
        )
        assert sent, (
            f"no invitation.sent in {org_a.schema_name} within {POLL_SECONDS}s; worker log:\n"
            + celery_worker_process.process.log()[-5000:]
        )
        (event,) = sent
        assert event.actor_type == "system" and event.actor_label == "celery"
        assert (event.target_type, event.target_id) == ("tenants.invitation", str(invitation.pk))
        assert [e.action for e in audit_events(org_a.schema_name, invitee)] == ["invitation.created",
                                                                               "invitation.sent"]
        assert audit_events(org_b.schema_name, invitee) == [], "the task wrote into another organization"

    # The worker itself says it ran in org-a's schema (the task returns connection.schema_name).
    succeeded = re.compile(rf"invitation_send\[[-0-9a-f]+\] succeeded in [0-9.]+s: '{org_a.schema_name}'")
    assert wait_for(lambda: succeeded.search(celery_worker_process.process.log()), timeout=5), (
        celery_worker_process.process.log()[-5000:]
    )
    assert not succeeded.search(live_server_process.process.log()), "the web process ran the task itself (eager)"

    message = live_server_process.wait_for_email(invitee, timeout=5)
    body = body_text(message)
    link = re.search(rf"{re.escape(base)}/invitations/([-_A-Za-z0-9]+)/", body)
    assert link, f"no invitation link in:\n{body}"
    assert invitation_token_hash(link.group(1)) == invitation.token_hash
    assert org_a.name in message["Subject"] + body

    # The emailed link opens the invitation on the live server.
    page = requests.get(link.group(0), timeout=10)
    assert page.status_code == 200
    assert org_a.name in page.text
