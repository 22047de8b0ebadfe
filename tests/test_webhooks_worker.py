"""A change made on the running server reaches an integrator's receiver through a real Celery worker.

The owner of org-a revokes an API key on the live server; the `api_key.revoked` event is written with
the revocation, and the worker (a separate process consuming the `webhooks` queue) delivers it to a
receiver on 127.0.0.1 (allowed by the test settings), which verifies it with `standardwebhooks`.
Both processes commit to the test database, so this test removes what it and they wrote.
"""

from __future__ import annotations

import re
import uuid

import pytest
from django_tenants.utils import schema_context

from .test_celery_worker import PASSWORD, csrf_token, sign_in, wait_for
from .webhook_receiver import Receiver

POLL_SECONDS = 30.0


@pytest.fixture
def committed_key_and_endpoint(tenant_world, django_db_blocker):
    """Org-a on Pro; a member key of its owner, and (made after it, so its creation is not an event) an endpoint for
    `api_key.revoked` pointed at a fresh receiver; all removed afterwards."""
    from billing.models import BillingAccount, Plan
    from tenants.api_keys import api_key_create
    from tenants.audit.services import Actor
    from tenants.models import ApiKey
    from webhooks.models import WebhookEndpoint, WebhookMessage
    from webhooks.services import webhook_endpoint_create

    org = tenant_world["a"]["org"]
    actor = Actor.system("tests")
    with Receiver() as receiver, django_db_blocker.unblock():
        accounts = BillingAccount.objects.filter(pk=org.pk)
        plan = accounts.get().plan
        accounts.update(plan=Plan.objects.get(code="pro"))  # a plan with webhooks, meanwhile
        new_key = api_key_create(organization=org, name="webhook e2e", scopes=["read"], actor=actor,
                                 user=tenant_world["a"]["owner"])
        new_endpoint = webhook_endpoint_create(organization=org, actor=actor, url=receiver.url(),
                                               event_types=["api_key.revoked"])
        try:
            yield new_key.key, new_endpoint.secret, receiver
        finally:
            with schema_context(org.schema_name):
                WebhookEndpoint.objects.filter(pk=new_endpoint.endpoint.pk).delete()
                WebhookMessage.objects.filter(payload__data__id=new_key.key.pk).delete()
            ApiKey.objects.filter(pk=new_key.key.pk).delete()
            accounts.update(plan=plan)


def test_a_revocation_on_the_server_is_delivered_by_the_worker_and_verifies(
        live_server_process, celery_worker_process, tenant_world, committed_key_and_endpoint):
    key, secret, receiver = committed_key_and_endpoint
    org = tenant_world["a"]["org"]
    base = live_server_process.url
    keys_url = f"{base}/o/{org.slug}/settings/api-keys/"
    session = sign_in(base, "owner-a@example.com", PASSWORD)
    token = csrf_token(session, keys_url)
    response = session.post(f"{keys_url}{key.pk}/revoke/", data={"csrfmiddlewaretoken": token},
                            headers={"Referer": keys_url}, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text[:2000]

    assert wait_for(lambda: receiver.requests, timeout=POLL_SECONDS), (
        "no delivery; worker log:\n" + celery_worker_process.process.log()[-5000:])
    [payload] = receiver.verify(secret)
    assert payload["type"] == "api_key.revoked" and payload["data"]["id"] == key.pk
    assert payload["data"]["prefix"] == key.display_prefix
    delivered = re.compile(r"delivery_attempt_task\[[-0-9a-f]+\] succeeded in [0-9.]+s: 'succeeded'")
    assert wait_for(lambda: delivered.search(celery_worker_process.process.log()), timeout=5), (
        celery_worker_process.process.log()[-5000:])
    assert not delivered.search(live_server_process.process.log()), "the web process sent it itself (eager)"


@pytest.fixture
def committed_org_with_endpoint(tenant_world, django_db_blocker):
    """A committed organization of owner-a on Pro (100 credits), an endpoint for `check.completed` and
    `webhook.test` at a fresh receiver, and a CNPJ whose answer is in the shared checks cache (as the running
    server reads it); all removed afterwards."""
    from billing.models import BillingAccount, Plan
    from checks.cache import _key, _store
    from checks.registries.brasilapi import normalize_minhareceita
    from checks.registries.lookup import LOOKUP_FOUND, LookupResult
    from core.redis_clients import redis_client
    from tenants.audit.services import Actor
    from tenants.services import organization_create
    from webhooks.services import webhook_endpoint_create

    from .fake_registries import default_companies
    from .orgs import organization_drop

    cnpj, payload = next(iter(default_companies()["brasilapi"].items()))
    record = normalize_minhareceita(payload, cnpj=cnpj, fetched_at="2026-12-01T00:00:00+00:00",
                                    provider="brasilapi", source_updated_at=None)
    with Receiver() as receiver, django_db_blocker.unblock():
        org = organization_create(user=tenant_world["a"]["owner"], name=f"Hooks {uuid.uuid4().hex[:6]}",
                                  actor=Actor.system("tests"))
        BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code="pro"))
        endpoint = webhook_endpoint_create(organization=org, actor=Actor.system("tests"), url=receiver.url(),
                                           event_types=["check.completed", "webhook.test"])
        _store(LookupResult(cnpj=cnpj, outcome=LOOKUP_FOUND, record=record, provider="brasilapi"))
        try:
            yield org, cnpj, endpoint, receiver
        finally:
            redis_client(decode=False).delete(_key(cnpj))
            organization_drop(org)


def test_a_check_and_a_test_event_from_the_running_server_reach_an_integrators_receiver(
        live_server_process, celery_worker_process, committed_org_with_endpoint):
    """Issue 14's "done when": signed check.completed and test events, from the running server through the
    worker, verified by the official `standardwebhooks` package at a receiver on 127.0.0.1."""
    org, cnpj, endpoint, receiver = committed_org_with_endpoint
    base = live_server_process.url
    session = sign_in(base, "owner-a@example.com", PASSWORD)
    new_target = f"{base}/o/{org.slug}/checks/targets/new/"
    token = csrf_token(session, f"{base}/o/{org.slug}/checks/")
    response = session.post(new_target, data={"csrfmiddlewaretoken": token, "cnpj": cnpj, "label": "", "tags": "",
                                              "schedule": "none"},
                            headers={"Referer": new_target}, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text[:2000]
    hooks = f"{base}/o/{org.slug}/settings/webhooks/{endpoint.endpoint.pk}/"
    response = session.post(f"{hooks}test/", data={"csrfmiddlewaretoken": csrf_token(session, hooks)},
                            headers={"Referer": hooks}, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text[:2000]

    assert wait_for(lambda: len(receiver.requests) >= 2, timeout=POLL_SECONDS), (
        "deliveries missing; worker log:\n" + celery_worker_process.process.log()[-5000:])
    payloads = {payload["type"]: payload for payload in receiver.verify(endpoint.secret)}
    assert set(payloads) == {"check.completed", "webhook.test"}
    check = payloads["check.completed"]["data"]
    assert (check["cnpj"], check["status"], check["cache_hit"]) == (cnpj, "succeeded", True)
    assert payloads["webhook.test"]["data"]
    delivered = re.compile(r"delivery_attempt_task\[[-0-9a-f]+\] succeeded in [0-9.]+s: 'succeeded'")
    assert not delivered.search(live_server_process.process.log()), "the web process sent them itself (eager)"
