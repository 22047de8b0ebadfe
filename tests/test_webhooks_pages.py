"""Settings → Webhooks: admins of plans with webhooks add endpoints (secret shown once), send a test event and
read the delivery log; other plans see an upgrade message; members get 403; another organization 404."""

from __future__ import annotations

import pytest
from django.utils import translation
from django_tenants.utils import schema_context

from billing.models import BillingAccount, Plan
from webhooks.models import WebhookEndpoint

from .webhook_receiver import Receiver

pytestmark = pytest.mark.django_db


def plan(org, code: str) -> None:
    BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code=code))


def page(org) -> str:
    return f"/o/{org.slug}/settings/webhooks/"


def test_an_admin_adds_an_endpoint_sees_the_secret_once_and_tests_it(client_for, org_a,
                                                                     django_capture_on_commit_callbacks):
    plan(org_a, "pro")
    client = client_for("a", "admin")
    with Receiver() as receiver:
        added = client.post(page(org_a), {"url": receiver.url(), "description": "CRM",
                                          "event_types": ["check.completed", "webhook.test"]})
        assert added.status_code == 200 and added["Cache-Control"] == "no-store"
        secret = added.context["new_secret"]
        assert secret.startswith("whsec_") and secret in added.content.decode()
        listing = client.get(page(org_a))
        assert receiver.url() in listing.content.decode() and secret not in listing.content.decode()
        with schema_context(org_a.schema_name):
            endpoint = WebhookEndpoint.objects.get(url=receiver.url())
        assert endpoint.event_types == ["check.completed", "webhook.test"]
        with django_capture_on_commit_callbacks(execute=True):
            sent = client.post(f"{page(org_a)}{endpoint.pk}/test/")
        assert sent.status_code == 302
        [payload] = receiver.verify(secret)
    assert payload["type"] == "webhook.test"
    detail = client.get(f"{page(org_a)}{endpoint.pk}/")
    assert detail.status_code == 200 and secret not in detail.content.decode()
    log = detail.content.decode()
    assert "webhook.test" in log and "<code>200</code>" in log and "ms" in log
    with Receiver() as receiver:  # the endpoint moved: point it at a new receiver and send the event again
        with schema_context(org_a.schema_name):
            WebhookEndpoint.objects.filter(pk=endpoint.pk).update(url=receiver.url())
            delivery = endpoint.deliveries.get()
        with django_capture_on_commit_callbacks(execute=True):
            again = client.post(f"{page(org_a)}{endpoint.pk}/deliveries/{delivery.pk}/replay/")
        assert again.status_code == 302
        [payload] = receiver.verify(secret)
    assert payload["type"] == "webhook.test"


def test_a_plan_without_webhooks_sees_an_upgrade_message_and_cannot_add(client_for, org_a):
    plan(org_a, "starter")
    client = client_for("a", "owner")
    response = client.get(page(org_a))
    assert response.status_code == 200 and b'data-testid="no-webhooks"' in response.content
    assert client.post(page(org_a), {"url": "https://example.com/hook"}).status_code == 403
    with schema_context(org_a.schema_name):
        assert not WebhookEndpoint.objects.exists()


def test_members_get_403_and_another_organization_404(client_for, org_a, org_b):
    plan(org_a, "pro")
    assert client_for("a", "member").get(page(org_a)).status_code == 403
    owner_a = client_for("a", "owner")
    owner_a.post(page(org_a), {"url": "https://example.com/hook"})
    with schema_context(org_a.schema_name):
        endpoint = WebhookEndpoint.objects.get()
    owner_b = client_for("b", "owner")
    for url in (page(org_a), f"{page(org_a)}{endpoint.pk}/"):
        assert owner_b.get(url).status_code == 404
    assert owner_b.post(f"{page(org_a)}{endpoint.pk}/delete/").status_code == 404
    assert owner_b.post(f"{page(org_a)}{endpoint.pk}/deliveries/1/replay/").status_code == 404
    assert owner_b.post(f"{page(org_a)}{endpoint.pk}/replay-failed/", {"hours": "24"}).status_code == 404
    assert owner_b.get(f"{page(org_b)}{endpoint.pk}/").status_code == 404  # not in B's schema
    with schema_context(org_a.schema_name):
        assert WebhookEndpoint.objects.filter(pk=endpoint.pk).exists()


def test_the_page_speaks_portuguese(client_for, org_a):
    plan(org_a, "pro")
    client = client_for("a", "owner")
    client.post("/i18n/setlang/", {"language": "pt-br", "next": "/"})
    with translation.override("pt-br"):
        response = client.get(page(org_a))
    text = response.content.decode()
    assert "Adicionar endpoint" in text and "Nenhum endpoint ainda." in text
