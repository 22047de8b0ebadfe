"""Outbound webhooks in process: Standard Webhooks signing (checked with the official `standardwebhooks`
package), the outbox (same transaction as the change, delivered once), the retry state machine, and the
real emitters (checks, API keys, test events). Deliveries go to a real HTTP receiver on 127.0.0.1, allowed
by the test settings' WEBHOOKS_ALLOWED_PRIVATE_NETWORKS; tasks run eagerly on commit."""

from __future__ import annotations

import base64
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone
from django_tenants.utils import schema_context
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from billing.models import BillingAccount, Plan
from billing.ratelimits import slot_acquire, slot_release
from checks.models import Check
from checks.services import check_request, target_add
from tenants.api_keys import api_key_create, api_key_revoke
from tenants.audit.models import AuditEvent
from tenants.audit.services import Actor
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookMessage
from webhooks.services import (
    RETRY_SCHEDULE,
    SLOT_KIND,
    delivery_attempt,
    retry_wait,
    webhook_deliveries_replay_failed,
    webhook_delivery_replay,
    webhook_endpoint_create,
    webhook_endpoint_secret_rotate,
    webhook_endpoint_test,
    webhook_event_emit,
)
from webhooks.tasks import delivery_attempt_task

from .webhook_receiver import Receiver

pytestmark = pytest.mark.django_db

ACTOR = Actor.system("tests")
FOUND = "19131243000197"  # the fake registries' sample company


@pytest.fixture(autouse=True)
def on_pro(org_a):
    """Org A on Pro (webhooks), in the test's transaction."""
    pro(org_a)


def pro(org):
    BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code="pro"))


@pytest.fixture
def receiver():
    with Receiver() as server:
        yield server


def endpoint_for(org, receiver, **kwargs):
    new = webhook_endpoint_create(organization=org, actor=ACTOR, url=receiver.url(), **kwargs)
    return new.endpoint, new.secret


def emit(org, type="check.completed", data=None, *, capture):
    with capture(execute=True):
        with transaction.atomic():
            return webhook_event_emit(organization=org, type=type, data=data or {"n": 1})


def deliveries(org):
    with schema_context(org.schema_name):
        return list(WebhookDelivery.objects.order_by("id"))


def attempt(org, delivery_id, number):
    with schema_context(org.schema_name):
        return delivery_attempt(delivery_id=delivery_id, number=number)


def test_a_secret_is_whsec_and_base64_of_random_bytes_and_is_stored_encrypted(org_a, receiver):
    endpoint, secret = endpoint_for(org_a, receiver)
    assert secret.startswith("whsec_") and 24 <= len(base64.b64decode(secret[6:])) <= 64
    assert secret not in endpoint.secret_encrypted and secret[6:] not in endpoint.secret_encrypted
    with schema_context(org_a.schema_name):
        audit = AuditEvent.objects.filter(action="webhook_endpoint.created").latest("id")
    assert audit.after["url"] == receiver.url() and secret not in str(audit.after)


def test_a_committed_event_is_delivered_signed_per_standard_webhooks(org_a, receiver,
                                                                     django_capture_on_commit_callbacks):
    _endpoint, secret = endpoint_for(org_a, receiver)
    message = emit(org_a, "check.completed", {"check_id": 7, "name": "Açaí"},
                   capture=django_capture_on_commit_callbacks)
    [payload] = receiver.verify(secret)  # standardwebhooks' own verification
    assert payload == {"type": "check.completed", "timestamp": payload["timestamp"],
                       "data": {"check_id": 7, "name": "Açaí"}}
    request = receiver.requests[0]
    assert request.headers["webhook-id"] == message.event_id and message.event_id.startswith("msg_")
    assert request.headers["webhook-signature"].startswith("v1,")
    assert request.headers["Content-Type"] == "application/json"
    [delivery] = deliveries(org_a)
    assert (delivery.status, delivery.attempts) == ("succeeded", 1)
    with schema_context(org_a.schema_name):
        [try_] = WebhookAttempt.objects.filter(delivery=delivery)
    assert (try_.status, try_.response_status, try_.response_body) == ("succeeded", 200, "ok")
    assert try_.latency_ms is not None
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(request.body, request.headers)


def test_a_rolled_back_change_sends_nothing_and_a_committed_one_is_sent_exactly_once(
        org_a, receiver, django_capture_on_commit_callbacks):
    endpoint_for(org_a, receiver)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            webhook_event_emit(organization=org_a, type="check.completed", data={"n": 1})
            raise RuntimeError("the change fails")
    assert callbacks == [] and receiver.requests == []
    with schema_context(org_a.schema_name):
        assert not WebhookMessage.objects.exists()
    message = emit(org_a, capture=django_capture_on_commit_callbacks)
    [delivery] = deliveries(org_a)
    # The broker hands the same task over again (acks_late, a worker restart): the try is not sent twice.
    with schema_context(org_a.schema_name):
        delivery_attempt_task.apply(args=(delivery.pk, 1))
        delivery_attempt_task(delivery.pk, 1)
    assert [r.headers["webhook-id"] for r in receiver.requests] == [message.event_id]
    with schema_context(org_a.schema_name):
        assert WebhookAttempt.objects.filter(delivery=delivery).count() == 1


def test_only_enabled_endpoints_subscribed_to_the_type_get_a_delivery(org_a, django_capture_on_commit_callbacks):
    with Receiver() as all_events, Receiver() as keys_only, Receiver() as disabled:
        endpoint_for(org_a, all_events)
        endpoint_for(org_a, keys_only, event_types=["api_key.created"])
        off, _secret = endpoint_for(org_a, disabled)
        with schema_context(org_a.schema_name):
            WebhookEndpoint.objects.filter(pk=off.pk).update(enabled=False)
        emit(org_a, "check.completed", capture=django_capture_on_commit_callbacks)
        emit(org_a, "api_key.created", capture=django_capture_on_commit_callbacks)
    assert [r.headers["webhook-id"] is not None for r in all_events.requests] == [True, True]
    assert len(keys_only.requests) == 1 and disabled.requests == []


def test_nothing_is_written_when_no_endpoint_wants_the_event(org_a, django_capture_on_commit_callbacks):
    assert emit(org_a, capture=django_capture_on_commit_callbacks) is None
    with schema_context(org_a.schema_name):
        assert not WebhookMessage.objects.exists()


def test_unknown_event_types_and_unsafe_urls_are_refused(org_a, receiver, settings):
    with pytest.raises(ValidationError):
        endpoint_for(org_a, receiver, event_types=["no.such.event"])
    settings.WEBHOOKS_ALLOW_HTTP = False
    with pytest.raises(ValidationError):
        endpoint_for(org_a, receiver)
    for url in ("https://user:secret@example.com/hook", "https://169.254.169.254/latest", "https://10.0.0.1/x"):
        with pytest.raises(ValidationError):
            webhook_endpoint_create(organization=org_a, actor=ACTOR, url=url)


def test_a_rotated_secret_keeps_the_old_one_valid_for_24_hours(org_a, receiver,
                                                               django_capture_on_commit_callbacks):
    endpoint, old = endpoint_for(org_a, receiver)
    new = webhook_endpoint_secret_rotate(organization=org_a, actor=ACTOR, endpoint=endpoint)
    emit(org_a, capture=django_capture_on_commit_callbacks)
    request = receiver.requests[-1]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(request.body, request.headers)
    Webhook(new).verify(request.body, request.headers)
    with schema_context(org_a.schema_name):
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
            previous_secret_expires_at=timezone.now() - timedelta(seconds=1))
    emit(org_a, capture=django_capture_on_commit_callbacks)
    request = receiver.requests[-1]
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    Webhook(new).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(request.body, request.headers)


def test_failures_are_retried_on_the_schedule_with_the_same_id_until_a_2xx(org_a, receiver,
                                                                          django_capture_on_commit_callbacks):
    _endpoint, secret = endpoint_for(org_a, receiver)
    receiver.reply_next(500, body=b"boom")
    receiver.reply_next(302, {"Location": "https://example.com/"})  # a redirect is a failure, never followed
    message = emit(org_a, capture=django_capture_on_commit_callbacks)
    [delivery] = deliveries(org_a)
    assert (delivery.status, delivery.attempts) == ("pending", 1)
    assert delivery.next_attempt_at > timezone.now()
    second = attempt(org_a, delivery.pk, 2)
    assert (second.status, second.next_number) == ("pending", 3)
    assert 300 * 0.9 <= second.retry_in <= 300 * 1.1  # the third try waits 5 min (±10 % jitter)
    third = attempt(org_a, delivery.pk, 3)
    assert third.status == "succeeded" and third.next_number is None
    assert {r.headers["webhook-id"] for r in receiver.requests} == {message.event_id}
    receiver.verify(secret)
    with schema_context(org_a.schema_name):
        tries = list(WebhookAttempt.objects.filter(delivery=delivery).values_list(
            "number", "status", "response_status", "response_body"))
    assert tries == [(1, "failed", 500, "boom"), (2, "failed", 302, ""), (3, "succeeded", 200, "ok")]


def test_the_schedule_and_retry_after():
    assert RETRY_SCHEDULE == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    for number, seconds in enumerate(RETRY_SCHEDULE[1:], start=2):
        assert seconds * 0.9 <= retry_wait(number) <= seconds * 1.1


def test_retry_after_is_honoured_on_429_and_503(org_a, receiver, django_capture_on_commit_callbacks):
    endpoint_for(org_a, receiver)
    receiver.reply_next(429, {"Retry-After": "120"})
    emit(org_a, capture=django_capture_on_commit_callbacks)
    [delivery] = deliveries(org_a)
    assert delivery.next_attempt_at - timezone.now() > timedelta(seconds=100)  # not the schedule's 5 s
    receiver.reply_next(503, {"Retry-After": "3600"})
    outcome = attempt(org_a, delivery.pk, 2)
    assert outcome.retry_in == 3600


def test_a_410_disables_the_endpoint_and_cancels_its_pending_deliveries(org_a, receiver,
                                                                       django_capture_on_commit_callbacks):
    endpoint, _secret = endpoint_for(org_a, receiver)
    receiver.reply_next(500)
    emit(org_a, capture=django_capture_on_commit_callbacks)
    receiver.reply_next(410)
    emit(org_a, capture=django_capture_on_commit_callbacks)
    first, second = deliveries(org_a)
    assert (first.status, second.status) == ("cancelled", "failed")
    with schema_context(org_a.schema_name):
        endpoint.refresh_from_db()
    assert (endpoint.enabled, endpoint.disabled_reason) == (False, "gone")
    assert attempt(org_a, first.pk, 2).status == "cancelled" and len(receiver.requests) == 2


def test_a_delivery_that_fails_every_try_ends_failed(org_a, receiver, django_capture_on_commit_callbacks):
    endpoint_for(org_a, receiver)
    for _ in RETRY_SCHEDULE:
        receiver.reply_next(500)
    emit(org_a, capture=django_capture_on_commit_callbacks)
    [delivery] = deliveries(org_a)
    outcomes = [attempt(org_a, delivery.pk, number) for number in range(2, len(RETRY_SCHEDULE) + 1)]
    assert [o.status for o in outcomes] == ["pending"] * (len(RETRY_SCHEDULE) - 2) + ["failed"]
    assert outcomes[-1].next_number is None
    [delivery] = deliveries(org_a)
    assert (delivery.status, delivery.attempts) == ("failed", len(RETRY_SCHEDULE))
    assert len(receiver.requests) == len(RETRY_SCHEDULE)


def test_an_endpoint_at_its_concurrency_cap_waits_its_turn(org_a, receiver, settings,
                                                           django_capture_on_commit_callbacks):
    settings.WEBHOOKS_ENDPOINT_CONCURRENCY = 1
    endpoint, _secret = endpoint_for(org_a, receiver)
    held = slot_acquire(kind=f"{SLOT_KIND}:{org_a.pk}", organization_id=endpoint.pk, limit=1, lease_seconds=30)
    assert held is not None
    try:
        emit(org_a, capture=django_capture_on_commit_callbacks)
        [delivery] = deliveries(org_a)
        outcome = attempt(org_a, delivery.pk, 1)
        assert (outcome.status, outcome.next_number) == ("pending", 1) and outcome.retry_in is not None
        assert receiver.requests == [] and delivery.attempts == 0
    finally:
        slot_release(held)
    assert attempt(org_a, delivery.pk, 1).status == "succeeded" and len(receiver.requests) == 1


def test_a_try_whose_worker_died_mid_send_is_recorded_failed_and_the_next_one_follows(
        org_a, receiver, django_capture_on_commit_callbacks):
    endpoint_for(org_a, receiver)
    with django_capture_on_commit_callbacks(execute=False):  # the first try is not queued here
        webhook_event_emit(organization=org_a, type="check.completed", data={})
    [delivery] = deliveries(org_a)
    with schema_context(org_a.schema_name):  # try 1 was claimed, then its worker died before recording
        WebhookAttempt.objects.create(delivery=delivery, number=1, started_at=timezone.now() - timedelta(minutes=5))
        WebhookDelivery.objects.filter(pk=delivery.pk).update(attempts=1)
    outcome = attempt(org_a, delivery.pk, 1)  # the task comes back (acks_late)
    assert (outcome.status, outcome.next_number) == ("pending", 2) and receiver.requests == []
    with schema_context(org_a.schema_name):
        assert WebhookAttempt.objects.get(delivery=delivery, number=1).status == "failed"
    assert attempt(org_a, delivery.pk, 2).status == "succeeded" and len(receiver.requests) == 1


def test_a_test_event_goes_to_that_endpoint_only(org_a, django_capture_on_commit_callbacks):
    with Receiver() as chosen, Receiver() as other:
        endpoint, secret = endpoint_for(org_a, chosen)
        endpoint_for(org_a, other)
        with django_capture_on_commit_callbacks(execute=True):
            webhook_endpoint_test(organization=org_a, endpoint=endpoint)
    [payload] = chosen.verify(secret)
    assert payload["type"] == "webhook.test" and payload["data"] == {"endpoint_id": endpoint.pk}
    assert other.requests == []


def test_api_keys_created_and_revoked_are_events(org_a, tenant_world, receiver,
                                                 django_capture_on_commit_callbacks):
    _endpoint, secret = endpoint_for(org_a, receiver, event_types=["api_key.created", "api_key.revoked"])
    with django_capture_on_commit_callbacks(execute=True):
        new = api_key_create(organization=org_a, name="CI", scopes=["read"], actor=ACTOR,
                             user=tenant_world["a"]["owner"])
    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(key=new.key, actor=ACTOR, reason="leaked")
    created, revoked = receiver.verify(secret)
    assert created["type"] == "api_key.created" and created["data"]["id"] == new.key.pk
    assert created["data"]["scopes"] == ["read"] and new.raw not in str(created)
    assert revoked["type"] == "api_key.revoked" and revoked["data"]["reason"] == "leaked"


def test_a_finished_check_is_a_check_completed_event(registries, funded, receiver,
                                                     django_capture_on_commit_callbacks):
    org_a, _org_b = funded
    pro(org_a)
    _endpoint, secret = endpoint_for(org_a, receiver, event_types=["check.completed"])
    with schema_context(org_a.schema_name):
        target = target_add(cnpj=FOUND, label="Supplier")
        with django_capture_on_commit_callbacks(execute=True):  # the check runs (eagerly), then its event goes
            check = check_request(organization=org_a, target=target)
        check.refresh_from_db()
    assert check.status == Check.Status.SUCCEEDED
    [payload] = receiver.verify(secret)
    assert payload["type"] == "check.completed"
    data = payload["data"]
    assert (data["check_id"], data["cnpj"], data["status"], data["label"]) == (check.pk, FOUND, "succeeded", "Supplier")
    assert data["company_name"] and Decimal(data["credits"]) > 0
    assert connection.schema_name == "public"


def test_a_check_answered_from_the_cache_is_a_check_completed_event_too(registries, funded, receiver,
                                                                       django_capture_on_commit_callbacks):
    from checks.cache import cached_lookup

    org_a, _org_b = funded
    pro(org_a)
    cached_lookup(FOUND)  # another organization's lookup filled the shared cache
    _endpoint, secret = endpoint_for(org_a, receiver)
    with schema_context(org_a.schema_name):
        target = target_add(cnpj=FOUND)
        with django_capture_on_commit_callbacks(execute=True):
            check = check_request(organization=org_a, target=target)
    assert check.cache_hit
    [payload] = receiver.verify(secret)
    assert (payload["type"], payload["data"]["check_id"], payload["data"]["cache_hit"]) == (
        "check.completed", check.pk, True)


def test_after_a_downgrade_endpoints_are_disabled_not_deleted(org_a, receiver, django_capture_on_commit_callbacks):
    endpoint, _secret = endpoint_for(org_a, receiver)
    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="starter"))
    emit(org_a, capture=django_capture_on_commit_callbacks)
    [delivery] = deliveries(org_a)
    assert delivery.status == "cancelled" and receiver.requests == []
    with schema_context(org_a.schema_name):
        endpoint.refresh_from_db()
    assert (endpoint.enabled, endpoint.disabled_reason) == (False, "plan")



def test_failed_deliveries_are_replayed_with_the_same_id(org_a, receiver, django_capture_on_commit_callbacks):
    endpoint, secret = endpoint_for(org_a, receiver)
    receiver.reply_next(410)  # the endpoint is gone: disabled, the delivery failed
    message = emit(org_a, capture=django_capture_on_commit_callbacks)
    [delivery] = deliveries(org_a)
    assert delivery.status == "failed"
    with schema_context(org_a.schema_name):
        delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery.pk)
    with pytest.raises(ValidationError):  # a disabled endpoint receives nothing, replays included
        webhook_delivery_replay(organization=org_a, delivery=delivery)
    with schema_context(org_a.schema_name):
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(enabled=True, disabled_reason="")
    with django_capture_on_commit_callbacks(execute=True):
        replayed = webhook_deliveries_replay_failed(organization=org_a, endpoint=endpoint,
                                                    since=timezone.now() - timedelta(hours=1))
    assert replayed == 1
    [delivery] = deliveries(org_a)
    assert (delivery.status, delivery.attempts) == ("succeeded", 2)
    assert [r.headers["webhook-id"] for r in receiver.requests] == [message.event_id] * 2
    receiver.verify(secret)


def test_members_added_and_removed_are_events(org_a, tenant_world, receiver, settings,
                                              django_capture_on_commit_callbacks):
    import uuid

    from accounts.models import User
    from tenants.services import invitation_accept, invitation_create, membership_remove

    settings.INVITATIONS_PER_ORGANIZATION_PER_HOUR = 10_000
    _endpoint, secret = endpoint_for(org_a, receiver, event_types=["member.added", "member.removed"])
    email = f"joiner-{uuid.uuid4().hex[:8]}@example.com"
    with django_capture_on_commit_callbacks(execute=True):
        sent = invitation_create(organization=org_a, email=email, role="member",
                                 invited_by=tenant_world["a"]["owner"], actor=ACTOR)
        membership = invitation_accept(token=sent.token, user=User.objects.create(email=email), actor=ACTOR)
    membership_id = membership.pk
    with django_capture_on_commit_callbacks(execute=True):
        membership_remove(membership=membership, actor=ACTOR)
    added, removed = receiver.verify(secret)
    assert added["type"] == "member.added" and added["data"]["email"] == email and added["data"]["role"] == "member"
    assert removed["type"] == "member.removed" and removed["data"]["membership_id"] == membership_id


def test_a_monitoring_alert_is_an_alert_created_event(registries, funded, receiver,
                                                      django_capture_on_commit_callbacks):
    from checks.models import Alert, Report, Target
    from checks.services import report_write

    org_a, _org_b = funded
    pro(org_a)
    _endpoint, secret = endpoint_for(org_a, receiver, event_types=["alert.created"])
    with schema_context(org_a.schema_name):
        target = target_add(cnpj=FOUND, schedule=Target.Schedule.DAILY)
        with django_capture_on_commit_callbacks(execute=True):
            check = check_request(organization=org_a, target=target)
        first = Report.objects.get(check_run_id=check.pk)
        closed = {**first.data, "situacao": {"code": 8, "label": "BAIXADA", "since": "2026-10-01", "motivo": None}}
        with django_capture_on_commit_callbacks(execute=True):
            report = report_write(target=target, check=None, record=closed, provider="cnpjws")
        alert = Alert.objects.get(report=report)
    [payload] = receiver.verify(secret)
    assert payload["type"] == "alert.created"
    assert (payload["data"]["alert_id"], payload["data"]["cnpj"]) == (alert.pk, FOUND)
    assert "status" in payload["data"]["kinds"] and payload["data"]["summary"]["risk"][1] == "BLOCKER"
