"""Webhook endpoints over the API: admins of plans with webhooks manage them, the secret is shown once,
other plans get 403 `plan_without_webhooks`, another organization's member gets 404, and a test event sent
through the API reaches the receiver signed (verified with `standardwebhooks`)."""

from __future__ import annotations

import pytest
from django.test import Client
from django_tenants.utils import schema_context

from billing.models import BillingAccount, Plan
from billing.ratelimits import rate_limit_keys
from core.redis_clients import redis_client
from tenants.api_keys import api_key_create
from tenants.audit.models import AuditEvent
from tenants.audit.services import Actor
from webhooks.events import EVENT_TYPES
from webhooks.models import WebhookEndpoint

from .webhook_receiver import Receiver

pytestmark = pytest.mark.django_db

URL = "/api/v1/webhooks/"


@pytest.fixture(autouse=True)
def on_pro(org_a, org_b):
    """Org A on Pro (webhooks), org B on Starter (API access, no webhooks), rate counters at zero."""
    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="pro"))
    BillingAccount.objects.filter(pk=org_b.pk).update(plan=Plan.objects.get(code="starter"))
    client = redis_client()
    for org in (org_a, org_b):
        client.delete(*rate_limit_keys(org.pk, 0))


@pytest.fixture
def receiver():
    with Receiver() as server:
        yield server


def as_member(client_for, key: str, role: str, org) -> tuple[Client, dict]:
    return client_for(key, role), {"HTTP_X_ORGANIZATION": org.slug}


def post(client, url, data=None, **headers):
    return client.post(url, data or {}, content_type="application/json", **headers)


def test_an_admin_adds_an_endpoint_and_sees_its_secret_once(client_for, org_a, receiver):
    client, org = as_member(client_for, "a", "admin", org_a)
    created = post(client, URL, {"url": receiver.url(), "description": "CRM",
                                 "event_types": ["check.completed"]}, **org)
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["secret"].startswith("whsec_") and created["Cache-Control"] == "no-store"
    assert (body["url"], body["event_types"], body["enabled"]) == (receiver.url(), ["check.completed"], True)
    listed = client.get(URL, **org)
    assert listed.status_code == 200 and [e["id"] for e in listed.json()["results"]] == [body["id"]]
    detail = client.get(f"{URL}{body['id']}/", **org)
    assert detail.status_code == 200
    assert body["secret"] not in listed.content.decode() + detail.content.decode()
    assert "secret" not in detail.json()
    with schema_context(org_a.schema_name):
        assert AuditEvent.objects.filter(action="webhook_endpoint.created", target_id=str(body["id"])).exists()


def test_bad_urls_and_event_types_are_400(client_for, org_a, settings):
    settings.WEBHOOKS_ALLOW_HTTP = False
    client, org = as_member(client_for, "a", "owner", org_a)
    for data in ({"url": "http://example.com/hook"}, {"url": "https://10.0.0.1/hook"},
                 {"url": "https://example.com/hook", "event_types": ["nope"]}):
        response = post(client, URL, data, **org)
        assert response.status_code == 400, (data, response.content)
    with schema_context(org_a.schema_name):
        assert not WebhookEndpoint.objects.exists()


def test_plans_without_webhooks_get_403_with_a_code(client_for, org_b):
    client, org = as_member(client_for, "b", "owner", org_b)
    for response in (client.get(URL, **org), post(client, URL, {"url": "https://example.com/hook"}, **org)):
        assert response.status_code == 403
        assert response.json()["code"] == "plan_without_webhooks"
    # The catalogue says what webhooks would send, on any plan.
    catalogue = client.get(f"{URL}event-types/", **org)
    assert catalogue.status_code == 200
    assert {row["type"] for row in catalogue.json()} == set(EVENT_TYPES)


def test_members_and_keys_cannot_change_endpoints(client_for, org_a, tenant_world, receiver):
    member, org = as_member(client_for, "a", "member", org_a)
    assert post(member, URL, {"url": receiver.url()}, **org).status_code == 403
    assert member.get(URL, **org).status_code == 403
    raw = api_key_create(organization=org_a, name="read", scopes=["read"], actor=Actor.system(),
                         user=tenant_world["a"]["admin"]).raw
    key = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    assert Client().get(URL, **key).status_code == 200
    assert post(Client(), URL, {"url": receiver.url()}, **key).status_code == 403


def test_another_organizations_member_gets_404(client_for, org_a, org_b, receiver):
    owner_a, in_a = as_member(client_for, "a", "owner", org_a)
    endpoint_id = post(owner_a, URL, {"url": receiver.url()}, **in_a).json()["id"]
    owner_b, _in_b = as_member(client_for, "b", "owner", org_b)
    for method, path in (("get", ""), ("patch", ""), ("delete", ""), ("post", "rotate-secret/"), ("post", "test/"),
                         ("get", "deliveries/"), ("post", "deliveries/1/replay/"), ("post", "replay-failed/")):
        url = f"{URL}{endpoint_id}/{path}"
        response = getattr(owner_b, method)(url, content_type="application/json", HTTP_X_ORGANIZATION=org_a.slug)
        assert response.status_code == 404, (method, url, response.status_code)
    BillingAccount.objects.filter(pk=org_b.pk).update(plan=Plan.objects.get(code="pro"))
    # In their own organization the id is simply not there.
    assert owner_b.get(f"{URL}{endpoint_id}/", HTTP_X_ORGANIZATION=org_b.slug).status_code == 404


def test_a_test_event_rotation_and_the_delivery_log(client_for, org_a, receiver, django_capture_on_commit_callbacks):
    from standardwebhooks import Webhook

    client, org = as_member(client_for, "a", "owner", org_a)
    created = post(client, URL, {"url": receiver.url()}, **org).json()
    endpoint_url = f"{URL}{created['id']}/"
    rotated = post(client, f"{endpoint_url}rotate-secret/", **org)
    assert rotated.status_code == 200 and rotated.json()["secret"] != created["secret"]
    receiver.reply_next(200, body=b'{"received": true}')
    with django_capture_on_commit_callbacks(execute=True):
        sent = post(client, f"{endpoint_url}test/", **org)
    assert sent.status_code == 202
    request = receiver.requests[0]
    for secret in (created["secret"], rotated.json()["secret"]):  # both valid for 24 hours
        payload = Webhook(secret).verify(request.body, request.headers)
    assert payload["type"] == "webhook.test" and request.headers["webhook-id"] == sent.json()["event_id"]
    log = client.get(f"{endpoint_url}deliveries/", **org)
    assert log.status_code == 200
    [row] = log.json()["results"]
    assert (row["event_id"], row["type"], row["status"], row["attempts"]) == (
        sent.json()["event_id"], "webhook.test", "succeeded", 1)
    assert (row["response_status"], row["response_body"]) == (200, '{"received": true}')
    assert row["latency_ms"] is not None
    assert client.get(f"{endpoint_url}deliveries/?status=failed", **org).json()["results"] == []
    with django_capture_on_commit_callbacks(execute=True):
        again = post(client, f"{endpoint_url}deliveries/{row['id']}/replay/", **org)
    assert again.status_code == 202 and again.json()["status"] == "pending"  # queued when the request commits
    [row] = client.get(f"{endpoint_url}deliveries/", **org).json()["results"]
    assert (row["status"], row["attempts"]) == ("succeeded", 2)
    assert [r.headers["webhook-id"] for r in receiver.requests] == [sent.json()["event_id"]] * 2
    replay_failed = post(client, f"{endpoint_url}replay-failed/", {"since": "2020-01-01T00:00:00Z"}, **org)
    assert replay_failed.status_code == 202 and replay_failed.json() == {"replayed": 0}
    disabled = client.patch(endpoint_url, {"enabled": False}, content_type="application/json", **org)
    assert disabled.status_code == 200 and disabled.json()["disabled_reason"] == "manual"
    assert client.delete(endpoint_url, **org).status_code == 204
    assert client.get(endpoint_url, **org).status_code == 404


def test_the_schema_documents_the_webhook_endpoints(client):
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/api/v1/webhooks/", "/api/v1/webhooks/{endpoint_id}/", "/api/v1/webhooks/event-types/",
            "/api/v1/webhooks/{endpoint_id}/deliveries/"} <= set(paths)
