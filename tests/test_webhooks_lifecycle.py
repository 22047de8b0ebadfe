"""Outbound webhooks over time: an endpoint failing for 5 days is disabled and its owners and admins are told
(each in their language), dead letters are purged after their retention, and every try moves
`prumo_webhook_deliveries_total{outcome}` on /metrics. Time is set through timestamps, never slept."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.db import transaction
from django.test import Client
from django.utils import timezone
from django_tenants.utils import schema_context
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import User
from billing.models import BillingAccount, Plan
from tenants.audit.services import Actor
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookMessage
from webhooks.services import (
    FAILING_DAYS,
    RETRY_SCHEDULE,
    dead_letters_purge,
    delivery_attempt,
    webhook_endpoint_create,
    webhook_event_emit,
)
from webhooks.tasks import dead_letters_purge_task

from .webhook_receiver import Receiver

pytestmark = pytest.mark.django_db

ACTOR = Actor.system("tests")


@pytest.fixture(autouse=True)
def on_pro(org_a):
    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="pro"))


@pytest.fixture
def receiver():
    with Receiver() as server:
        yield server


def endpoint_for(org, receiver, **kwargs) -> WebhookEndpoint:
    return webhook_endpoint_create(organization=org, actor=ACTOR, url=receiver.url(), **kwargs).endpoint


def emit(org, capture, type="check.completed"):
    with capture(execute=True), transaction.atomic():
        return webhook_event_emit(organization=org, type=type, data={"n": 1})


def tries_moved_back(org, days: float, **filters) -> None:
    with schema_context(org.schema_name):
        for attempt in WebhookAttempt.objects.filter(**filters):
            WebhookAttempt.objects.filter(pk=attempt.pk).update(started_at=attempt.started_at - timedelta(days=days))


def endpoint_state(org, endpoint) -> tuple[bool, str]:
    with schema_context(org.schema_name):
        endpoint.refresh_from_db()
    return endpoint.enabled, endpoint.disabled_reason


# ---------------------------------------------------------------- failing for 5 days


def test_an_endpoint_failing_for_5_days_is_disabled_and_its_owners_and_admins_are_emailed_in_their_language(
        org_a, tenant_world, receiver, django_capture_on_commit_callbacks):
    User.objects.filter(pk=tenant_world["a"]["admin"].pk).update(language="pt-br")
    User.objects.filter(pk=tenant_world["a"]["owner"].pk).update(language="en")
    endpoint = endpoint_for(org_a, receiver)
    for _ in range(3):
        receiver.reply_next(500)
    emit(org_a, django_capture_on_commit_callbacks)  # fails: retried later
    tries_moved_back(org_a, FAILING_DAYS - 0.5)
    emit(org_a, django_capture_on_commit_callbacks)  # failing for 4.5 days: still enabled
    assert endpoint_state(org_a, endpoint) == (True, "")
    assert mail.outbox == []

    tries_moved_back(org_a, 1)  # now the first failure was 5.5 days ago, and nothing succeeded since
    with django_capture_on_commit_callbacks(execute=True):
        with schema_context(org_a.schema_name):
            pending = WebhookDelivery.objects.filter(status="pending").order_by("id").first()
            outcome = delivery_attempt(delivery_id=pending.pk, number=2)
    assert outcome.status == "cancelled"
    assert endpoint_state(org_a, endpoint) == (False, "failing")
    with schema_context(org_a.schema_name):
        assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {"cancelled"}
    sent = {message.to[0]: message for message in mail.outbox}
    assert set(sent) == {"owner-a@example.com", "admin-a@example.com"}  # not the member nor the viewer
    assert sent["owner-a@example.com"].extra_headers["Content-Language"] == "en"
    assert sent["admin-a@example.com"].extra_headers["Content-Language"] == "pt-br"
    body = sent["owner-a@example.com"].body
    assert receiver.url() in body and f"/o/{org_a.slug}/settings/webhooks/{endpoint.pk}/" in body
    assert "disabled" in sent["owner-a@example.com"].subject

    receiver.reply_next(500)  # disabled: nothing more is sent, nor e-mailed again
    emit(org_a, django_capture_on_commit_callbacks)
    assert len(receiver.requests) == 3 and len(mail.outbox) == 2


def test_a_success_since_the_first_failure_keeps_the_endpoint(org_a, receiver, django_capture_on_commit_callbacks):
    endpoint = endpoint_for(org_a, receiver)
    receiver.reply_next(500)
    emit(org_a, django_capture_on_commit_callbacks)  # a failure…
    tries_moved_back(org_a, 8)
    emit(org_a, django_capture_on_commit_callbacks)  # …then a success
    tries_moved_back(org_a, 2, status="succeeded")
    receiver.reply_next(500)
    emit(org_a, django_capture_on_commit_callbacks)  # failing again, but only since 2 days ago
    assert endpoint_state(org_a, endpoint) == (True, "")
    assert mail.outbox == []


# ---------------------------------------------------------------- dead letters


def dead_letter(org, receiver, capture, *, finished_days_ago: float) -> WebhookDelivery:
    for _ in RETRY_SCHEDULE:
        receiver.reply_next(500)
    message = emit(org, capture)
    with schema_context(org.schema_name):
        delivery = WebhookDelivery.objects.get(message=message)
        for number in range(2, len(RETRY_SCHEDULE) + 1):
            delivery_attempt(delivery_id=delivery.pk, number=number)
        delivery.refresh_from_db()
        assert delivery.status == "failed"
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            finished_at=timezone.now() - timedelta(days=finished_days_ago))
    return delivery


def test_dead_letters_are_kept_30_days_then_purged(org_a, receiver, settings, django_capture_on_commit_callbacks):
    assert settings.WEBHOOKS_DEAD_LETTER_DAYS == 30
    assert settings.CELERY_BEAT_SCHEDULE["webhooks-dead-letters-purge"]["task"] == \
        "webhooks.tasks.dead_letters_purge_fanout"
    endpoint_for(org_a, receiver)
    old = dead_letter(org_a, receiver, django_capture_on_commit_callbacks, finished_days_ago=31)
    recent = dead_letter(org_a, receiver, django_capture_on_commit_callbacks, finished_days_ago=29)
    delivered = emit(org_a, django_capture_on_commit_callbacks)  # succeeded: not a dead letter, kept
    with schema_context(org_a.schema_name):
        WebhookDelivery.objects.filter(message=delivered).update(finished_at=timezone.now() - timedelta(days=90))
        assert dead_letters_purge_task() == 1  # the beat's task, in the organization's schema
        assert list(WebhookDelivery.objects.filter(status="failed").values_list("pk", flat=True)) == [recent.pk]
        assert not WebhookMessage.objects.filter(pk=old.message_id).exists()
        assert not WebhookAttempt.objects.filter(delivery_id=old.pk).exists()
        assert WebhookMessage.objects.filter(pk=delivered.pk).exists()
        assert WebhookAttempt.objects.filter(delivery_id=recent.pk).count() == len(RETRY_SCHEDULE)
        assert dead_letters_purge(now=timezone.now() + timedelta(days=2)) == 1  # its turn two days later
        assert not WebhookDelivery.objects.filter(status="failed").exists()


def test_the_purge_fans_out_to_every_organization(org_a, org_b):
    from django_tenants.utils import get_tenant_model

    from tenants.tasks import task_per_organization
    from webhooks.tasks import dead_letters_purge_fanout

    organizations = get_tenant_model().objects.exclude(schema_name="public").count()
    assert dead_letters_purge_fanout() == organizations == task_per_organization(dead_letters_purge_task) >= 2


# ---------------------------------------------------------------- the metric


def outcomes(client: Client) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    found = {}
    for family in text_string_to_metric_families(response.content.decode()):
        if family.name == "prumo_webhook_deliveries":
            for sample in family.samples:
                if sample.name == "prumo_webhook_deliveries_total":
                    assert set(sample.labels) == {"outcome"}  # no endpoint, no organization
                    found[sample.labels["outcome"]] = sample.value
    return found


def test_each_try_moves_the_deliveries_metric_by_outcome(org_a, receiver, settings,
                                                        django_capture_on_commit_callbacks):
    settings.METRICS_TOKEN = ""
    client = Client()  # 127.0.0.1: allowed to scrape without a token
    before = outcomes(client)
    assert set(before) >= {"success", "failure", "gone", "timeout", "connection", "refused", "interrupted"}
    endpoint_for(org_a, receiver)
    receiver.reply_next(500)
    emit(org_a, django_capture_on_commit_callbacks)  # failure
    emit(org_a, django_capture_on_commit_callbacks)  # success
    receiver.reply_next(410)
    emit(org_a, django_capture_on_commit_callbacks)  # gone
    with Receiver() as closed:
        port = closed.port
    webhook_endpoint_create(organization=org_a, actor=ACTOR, url=f"http://127.0.0.1:{port}/hook",
                            event_types=["member.added"])
    emit(org_a, django_capture_on_commit_callbacks, type="member.added")  # connection refused: no answer
    after = outcomes(client)
    moved = {outcome: after[outcome] - before.get(outcome, 0) for outcome in after}
    assert moved == {"success": 1, "failure": 1, "gone": 1, "timeout": 0, "connection": 1, "refused": 0,
                     "interrupted": 0}
