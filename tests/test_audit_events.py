"""What the audit log records besides each service's own events, each in the right organization's schema:
sign-ins and failed sign-ins, second factors and passwords, an API key's first use of the day, exports,
deleted conversations and companies, webhook tests and replays, and staff edits in the admin."""

from __future__ import annotations

import json
import re

import pytest
from django.core import mail
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import schema_context

from billing.models import BillingAccount, Plan
from billing.ratelimits import rate_limit_keys
from chat.models import Thread
from checks.models import Target
from core.redis_clients import redis_client
from tenants.api_keys import api_key_create
from tenants.audit.models import AuditEvent
from tenants.audit.records import api_key_day_mark
from tenants.audit.services import Actor
from tenants.models import Membership, Role
from webhooks.models import WebhookEndpoint
from webhooks.services import secret_encrypt, secret_generate

from .security.totp import PASSWORD, person, reauthenticate, totp_enrol

pytestmark = pytest.mark.django_db


def events(org, action: str) -> list[AuditEvent]:
    with schema_context(org.schema_name):
        return list(AuditEvent.objects.filter(action=action))


def member_of_both(org_a, org_b):
    """A new person who belongs to A and B (and a third organization's log must stay untouched)."""
    user = person("both")
    Membership.objects.create(user=user, organization=org_a, role=Role.MEMBER)
    Membership.objects.create(user=user, organization=org_b, role=Role.VIEWER)
    return user


# ---------------------------------------------------------------- sign-ins


def test_a_sign_in_is_recorded_in_every_organization_of_the_person(org_a, org_b):
    user = member_of_both(org_a, org_b)
    client = Client(HTTP_USER_AGENT="AuditTest/1.0")
    assert client.post("/accounts/login/", {"login": user.email, "password": PASSWORD}).status_code == 302
    for org in (org_a, org_b):
        [event] = [e for e in events(org, "user.login") if e.actor_id == str(user.pk)]
        assert event.actor_type == "user" and event.actor_label == user.email
        assert event.ip_address == "127.0.0.1" and event.user_agent == "AuditTest/1.0"
        assert (event.target_type, event.target_id) == ("accounts.user", str(user.pk))


def test_a_failed_sign_in_is_recorded_without_the_password_and_unknown_addresses_record_nothing(org_a, org_b):
    user = member_of_both(org_a, org_b)
    wrong = "Wrong-Password-Zebra-31"
    before = {org.pk: len(events(org, "user.login_failed")) for org in (org_a, org_b)}
    refused = Client().post("/accounts/login/", {"login": user.email, "password": wrong})
    assert refused.status_code == 200  # the form again, with its error
    for org in (org_a, org_b):
        [event] = [e for e in events(org, "user.login_failed") if e.actor_id == str(user.pk)]
        assert event.after == {"reason": "credentials"}
        stored = json.dumps([event.before, event.after, event.actor_label, event.target_label, event.user_agent])
        assert wrong not in stored and "password" not in stored
    Client().post("/accounts/login/", {"login": "nobody-here@example.com", "password": wrong})
    for org in (org_a, org_b):
        assert len(events(org, "user.login_failed")) == before[org.pk] + 1


# ---------------------------------------------------------------- second factors and passwords


def test_turning_two_factor_on_and_off_is_recorded(org_a, org_b, django_capture_on_commit_callbacks):
    user = member_of_both(org_a, org_b)
    client = Client()
    client.force_login(user)
    with django_capture_on_commit_callbacks(execute=True):  # allauth signals once its transaction commits
        totp_enrol(client)
    for org in (org_a, org_b):
        [enabled] = [e for e in events(org, "user.mfa_enabled") if e.actor_id == str(user.pk)]
        assert enabled.after == {"type": "totp"}
    reauthenticate(client)
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post("/accounts/2fa/totp/deactivate/").status_code == 302
    for org in (org_a, org_b):
        assert [e.after for e in events(org, "user.mfa_disabled") if e.actor_id == str(user.pk)] == [{"type": "totp"}]


def test_a_password_change_and_a_reset_are_recorded(org_a, org_b):
    user = member_of_both(org_a, org_b)
    client = Client()
    client.force_login(user)
    changed = client.post("/accounts/password/change/", {"oldpassword": PASSWORD, "password1": "New-Secret-Otter-58",
                                                         "password2": "New-Secret-Otter-58"})
    assert changed.status_code == 302
    assert [e.actor_id for e in events(org_a, "user.password_changed")] == [str(user.pk)]
    assert [e.actor_id for e in events(org_b, "user.password_changed")] == [str(user.pk)]
    anonymous = Client()
    anonymous.post("/accounts/password/reset/", {"email": user.email})
    link = re.search(r"(/accounts/password/reset/key/\S+/)", mail.outbox[-1].body).group(1)
    form = anonymous.get(link, follow=True)
    action = form.redirect_chain[-1][0] if form.redirect_chain else link
    done = anonymous.post(action, {"password1": "Reset-Secret-Heron-90", "password2": "Reset-Secret-Heron-90"})
    assert done.status_code == 302
    for org in (org_a, org_b):
        assert [e.actor_id for e in events(org, "user.password_reset")] == [str(user.pk)]


# ---------------------------------------------------------------- API keys


def test_an_api_key_first_use_of_the_day_is_recorded_once_without_a_write_per_call(client, org_a, org_b):
    BillingAccount.objects.filter(pk__in=[org_a.pk, org_b.pk]).update(plan=Plan.objects.get(code="starter"))
    redis_client().delete(*rate_limit_keys(org_a.pk, 0))
    key = api_key_create(organization=org_a, name="daily", scopes=["read"], actor=Actor.system())
    redis_client().delete(api_key_day_mark(key.key.pk))
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key.raw}", "HTTP_USER_AGENT": "cron/2"}
    assert client.get("/api/v1/organization/", **headers).status_code == 200
    with CaptureQueriesContext(connection) as later:
        for _ in range(3):
            assert client.get("/api/v1/organization/", **headers).status_code == 200
    assert not [q for q in later.captured_queries if "audit_auditevent" in q["sql"]]
    [used] = events(org_a, "api_key.used")
    assert (used.actor_type, used.actor_id, used.target_id) == ("api_key", str(key.key.pk), str(key.key.pk))
    assert used.user_agent == "cron/2" and used.ip_address == "127.0.0.1"
    assert [e for e in events(org_b, "api_key.used") if e.target_id == str(key.key.pk)] == []
    assert redis_client().ttl(api_key_day_mark(key.key.pk)) > 86_400  # outlives its UTC day


# ---------------------------------------------------------------- exports and deletions


def test_exports_are_recorded(client_for, org_a, org_b):
    client = client_for("a", "member")
    assert client.get(f"/o/{org_a.slug}/checks/export.csv?risk=HIGH").status_code == 200
    assert client.get(f"/o/{org_a.slug}/billing/usage/?format=csv").status_code == 200
    [targets] = events(org_a, "checks.targets_exported")
    assert targets.actor_label == "member-a@example.com" and targets.after == {"format": "csv",
                                                                               "filters": {"risk": "HIGH"}}
    [usage] = events(org_a, "billing.usage_exported")
    assert usage.after["format"] == "csv" and usage.after["start"] <= usage.after["end"]
    assert events(org_b, "checks.targets_exported") == [] and events(org_b, "billing.usage_exported") == []


def test_report_and_bulk_result_exports_are_recorded(client_for, tenant_world, org_a):
    from checks.models import Batch
    from checks.services import report_write

    from .checks_reports import dbone_report

    with schema_context(org_a.schema_name):
        target = Target.objects.create(cnpj="05525406000101", label="Juice supplier")
        report = report_write(target=target, check=None, record=dbone_report(), provider="cnpjws")
        batch = Batch.objects.create(filename="suppliers.csv", status=Batch.Status.DONE, rows=1, total=0,
                                     cnpjs=["05525406000101"], created_by=tenant_world["a"]["viewer"])
    client = client_for("a", "viewer")
    assert client.get(f"/o/{org_a.slug}/checks/reports/{report.pk}/csv/").status_code == 200
    response = client.get(f"/o/{org_a.slug}/checks/bulk/{batch.pk}/results.csv")
    assert response.status_code == 200 and b"".join(response.streaming_content)
    [exported] = events(org_a, "checks.report_exported")
    assert exported.after == {"format": "csv", "report_id": report.pk, "cnpj": "05525406000101"}
    [batch_exported] = events(org_a, "checks.batch_exported")
    assert batch_exported.after == {"format": "csv", "batch_id": batch.pk}
    assert batch_exported.actor_label == "viewer-a@example.com"


def test_deleting_a_conversation_is_recorded(client_for, tenant_world, org_a, org_b):
    with schema_context(org_a.schema_name):
        thread = Thread.objects.create(user=tenant_world["a"]["member"], title="Q3 pricing")
    response = client_for("a", "member").post(f"/o/{org_a.slug}/chat/t/{thread.pk}/delete/")
    assert response.status_code == 302
    [deleted] = events(org_a, "thread.deleted")
    assert (deleted.target_type, deleted.target_id, deleted.target_label) == ("chat.thread", str(thread.pk),
                                                                              "Q3 pricing")
    assert deleted.actor_label == "member-a@example.com" and deleted.before["title"] == "Q3 pricing"
    assert [e for e in events(org_b, "thread.deleted") if e.target_id == str(thread.pk)] == []


def test_deleting_a_monitored_company_is_recorded(client_for, org_a, org_b):
    with schema_context(org_a.schema_name):
        target = Target.objects.create(cnpj="11222333000181", label="Supplier")
    response = client_for("a", "member").delete(f"/api/v1/targets/{target.pk}/", HTTP_X_ORGANIZATION=org_a.slug)
    assert response.status_code == 204
    [deleted] = events(org_a, "checks.target_deleted")
    assert deleted.target_label == "11222333000181" and deleted.before["label"] == "Supplier"
    assert deleted.actor_label == "member-a@example.com"
    assert events(org_b, "checks.target_deleted") == []


# ---------------------------------------------------------------- webhooks


def test_webhook_tests_and_replays_are_recorded(client_for, org_a):
    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="pro"))
    with schema_context(org_a.schema_name):
        endpoint = WebhookEndpoint.objects.create(url="https://hooks.example.com/in",
                                                  secret_encrypted=secret_encrypt(secret_generate()))
    client = client_for("a", "admin")
    base = f"/o/{org_a.slug}/settings/webhooks/{endpoint.pk}"
    assert client.post(f"{base}/test/").status_code == 302
    [tested] = events(org_a, "webhook_endpoint.tested")
    assert tested.target_id == str(endpoint.pk) and tested.actor_label == "admin-a@example.com"
    with schema_context(org_a.schema_name):
        endpoint.deliveries.update(status="failed")
    assert client.post(f"{base}/replay-failed/", {"hours": "24"}).status_code == 302
    [replayed] = events(org_a, "webhook_endpoint.replayed")
    assert len(replayed.after["deliveries"]) == 1


# ---------------------------------------------------------------- staff in the admin


def test_staff_changes_in_the_admin_land_in_the_organization_log(org_a, org_b):
    staff = person("staff", staff=True)
    client = Client()
    client.force_login(staff)
    someone = person("someone")
    membership = Membership.objects.create(user=someone, organization=org_a, role=Role.MEMBER)
    changed = client.post(f"/admin/tenants/membership/{membership.pk}/change/",
                          {"user": someone.pk, "organization": org_a.pk, "role": Role.VIEWER})
    assert changed.status_code == 302, changed.content.decode()[:2000]
    [event] = events(org_a, "staff.object_changed")
    assert event.actor_type == "user" and event.actor_id == str(staff.pk)
    assert event.actor_label == f"{staff.email} (staff)"
    assert event.after["staff"] is True and event.after["model"] == "tenants.membership"
    assert event.target_id == str(membership.pk)
    deleted = client.post(f"/admin/tenants/membership/{membership.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302
    [gone] = events(org_a, "staff.object_deleted")
    assert gone.target_id == str(membership.pk)
    assert events(org_b, "staff.object_changed") == [] and events(org_b, "staff.object_deleted") == []


def test_an_endpoint_disabled_by_the_worker_is_recorded(org_a):
    from webhooks.services import webhook_endpoint_disable

    with schema_context(org_a.schema_name):
        endpoint = WebhookEndpoint.objects.create(url="https://gone.example.com/in",
                                                  secret_encrypted=secret_encrypt(secret_generate()))
        webhook_endpoint_disable(endpoint=endpoint, reason=WebhookEndpoint.DisabledReason.GONE)
    [event] = events(org_a, "webhook_endpoint.disabled")
    assert (event.actor_type, event.actor_label) == ("system", "webhooks")
    assert event.target_id == str(endpoint.pk) and event.after == {"reason": WebhookEndpoint.DisabledReason.GONE}
