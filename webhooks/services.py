"""Outbound webhooks' writes: endpoints (audited), the outbox, and the delivery state machine.

The outbox: `webhook_event_emit` writes the message and one delivery per subscribed, enabled
endpoint inside the caller's transaction, and queues the first try on commit, so a change that
rolls back sends nothing and a committed one is never lost.

A delivery is PENDING until one try succeeds (2xx → SUCCEEDED), the endpoint answers 410 (it is
disabled, the delivery FAILED), or the last try of RETRY_SCHEDULE fails (FAILED: a dead letter);
a disabled endpoint's pending deliveries are CANCELLED. A try is claimed before anything is sent
(its `WebhookAttempt` row, unique per number, and `attempts = number` under a row lock), so a task
run twice never sends the same try twice; a try whose worker died while sending is recorded as
failed when its task comes back (acks_late) after STALE_SECONDS, and the next one is scheduled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from email.utils import parsedate_to_datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage
from django.db import connection, transaction
from django.db.models import Max, Min
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django_tenants.utils import schema_context

from accounts.models import User
from billing.ratelimits import slot_acquire, slot_release
from billing.selectors import entitlements_for
from core.egress import (
    TIMEOUT_SECONDS,
    EgressError,
    EgressFailed,
    EgressRefused,
    EgressResponse,
    Resolver,
    address_refusal,
    egress_post,
    networks_parse,
    system_resolve,
    url_check,
)
from core.metrics import webhook_delivery_count
from tenants.audit.services import Actor, audit_record
from tenants.models import Organization, Role
from tenants.selectors import current_organization
from tenants.tasks import email_plain_name

from .crypto import secret_decrypt, secret_encrypt
from .events import EVENT_TYPES
from .models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookMessage
from .signing import secret_generate, signed_headers

logger = logging.getLogger(__name__)

# Seconds before each try: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (Standard Webhooks' schedule).
RETRY_SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
JITTER = 0.1  # each wait is spread ±10 %, so a receiver's outage does not end in a burst
RETRY_AFTER_MAX = 36000  # a 429/503's Retry-After is honoured up to the longest wait of the schedule
STALE_SECONDS = TIMEOUT_SECONDS + 45  # a try still "sending" this long after it started died with its worker
SLOT_KIND = "webhooks"
SLOT_RETRY_SECONDS = 2.0  # a try over its endpoint's concurrency cap is queued again this soon (plus up to 1 s)
PREVIOUS_SECRET_HOURS = 24
FAILING_DAYS = 5  # an endpoint whose every try failed for this long (none succeeded since) is disabled
USER_AGENT = "Prumo-Webhooks/1.0"


@dataclass(frozen=True)
class NewEndpoint:
    endpoint: WebhookEndpoint
    secret: str  # shown to its creator once


@dataclass(frozen=True)
class AttemptOutcome:
    status: str  # the delivery's
    next_number: int | None = None  # the try to queue next, in `retry_in` seconds
    retry_in: float | None = None


def allowed_networks():
    return networks_parse(settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS)


def endpoint_url_clean(url: str) -> str:
    """`url` if deliveries may be sent to it (ValidationError otherwise); its host is resolved at each delivery."""
    url = (url or "").strip()
    try:
        destination = url_check(url, allow_http=settings.WEBHOOKS_ALLOW_HTTP)
    except EgressRefused as refused:
        messages = {
            "scheme": _("The URL must start with https://."),
            "userinfo": _("The URL may not contain a user name or password."),
        }
        raise ValidationError(messages.get(refused.reason, _("Enter a valid URL."))) from None
    if len(url) > WebhookEndpoint._meta.get_field("url").max_length:
        raise ValidationError(_("The URL is too long."))
    try:
        literal = address_refusal(destination.host, allowed_networks())
    except ValueError:
        literal = None  # a host name: vetted at each delivery
    if literal is not None:
        raise ValidationError(_("The URL points to a private or reserved address."))
    return url


def event_types_clean(event_types: Iterable[str]) -> list[str]:
    """The chosen event types (empty: all), each from the catalogue."""
    chosen = sorted({str(value) for value in event_types or ()})
    unknown = [value for value in chosen if value not in EVENT_TYPES]
    if unknown:
        raise ValidationError(_("Unknown event types: %(types)s") % {"types": ", ".join(unknown)})
    return chosen


def endpoint_secrets(endpoint: WebhookEndpoint, *, now=None) -> list[str]:
    """The secrets deliveries are signed with: the current one, then the previous one while it is valid."""
    now = now or timezone.now()
    secrets = [secret_decrypt(endpoint.secret_encrypted)]
    if endpoint.previous_secret_encrypted and endpoint.previous_secret_expires_at and \
            endpoint.previous_secret_expires_at > now:
        secrets.append(secret_decrypt(endpoint.previous_secret_encrypted))
    return secrets


def _audit_view(endpoint: WebhookEndpoint) -> dict:
    return {"url": endpoint.url, "description": endpoint.description, "event_types": endpoint.event_types,
            "enabled": endpoint.enabled, "include_message_text": endpoint.include_message_text}


@transaction.atomic
def webhook_endpoint_create(*, organization: Organization, actor: Actor, url: str, description: str = "",
                            event_types: Iterable[str] = (), enabled: bool = True,
                            include_message_text: bool = False) -> NewEndpoint:
    secret = secret_generate()
    with schema_context(organization.schema_name):
        endpoint = WebhookEndpoint.objects.create(
            url=endpoint_url_clean(url), description=description.strip()[:200],
            event_types=event_types_clean(event_types), secret_encrypted=secret_encrypt(secret), enabled=enabled,
            include_message_text=include_message_text,
            disabled_reason="" if enabled else WebhookEndpoint.DisabledReason.MANUAL)
    audit_record(organization=organization, actor=actor, action="webhook_endpoint.created", target=endpoint,
                 after=_audit_view(endpoint))
    return NewEndpoint(endpoint=endpoint, secret=secret)


@transaction.atomic
def webhook_endpoint_update(*, organization: Organization, actor: Actor, endpoint: WebhookEndpoint, url: str,
                            description: str, event_types: Iterable[str], enabled: bool,
                            include_message_text: bool | None = None) -> WebhookEndpoint:
    before = _audit_view(endpoint)
    endpoint.url = endpoint_url_clean(url)
    endpoint.description = description.strip()[:200]
    endpoint.event_types = event_types_clean(event_types)
    if include_message_text is not None:
        endpoint.include_message_text = include_message_text
    if enabled != endpoint.enabled:
        endpoint.enabled = enabled
        endpoint.disabled_reason = "" if enabled else WebhookEndpoint.DisabledReason.MANUAL
    with schema_context(organization.schema_name):
        endpoint.save(update_fields=["url", "description", "event_types", "enabled", "disabled_reason",
                                     "include_message_text", "updated_at"])
        if not endpoint.enabled:
            _pending_cancel(endpoint)
    audit_record(organization=organization, actor=actor, action="webhook_endpoint.updated", target=endpoint,
                 before=before, after=_audit_view(endpoint))
    return endpoint


@transaction.atomic
def webhook_endpoint_delete(*, organization: Organization, actor: Actor, endpoint: WebhookEndpoint) -> None:
    audit_record(organization=organization, actor=actor, action="webhook_endpoint.deleted", target=endpoint,
                 before=_audit_view(endpoint))
    with schema_context(organization.schema_name):
        endpoint.delete()


@transaction.atomic
def webhook_endpoint_secret_rotate(*, organization: Organization, actor: Actor, endpoint: WebhookEndpoint) -> str:
    """A new signing secret (returned once); the current one keeps signing for PREVIOUS_SECRET_HOURS."""
    secret = secret_generate()
    endpoint.previous_secret_encrypted = endpoint.secret_encrypted
    endpoint.previous_secret_expires_at = timezone.now() + timedelta(hours=PREVIOUS_SECRET_HOURS)
    endpoint.secret_encrypted = secret_encrypt(secret)
    with schema_context(organization.schema_name):
        endpoint.save(update_fields=["secret_encrypted", "previous_secret_encrypted", "previous_secret_expires_at",
                                     "updated_at"])
    audit_record(organization=organization, actor=actor, action="webhook_endpoint.secret_rotated", target=endpoint)
    return secret


def webhook_endpoint_test(*, organization: Organization, endpoint: WebhookEndpoint,
                          actor: Actor | None = None) -> WebhookMessage:
    """Send a `webhook.test` event to this endpoint only (a disabled endpoint's is cancelled, not sent). Audited."""
    message = webhook_event_emit(organization=organization, type="webhook.test",
                                 data={"endpoint_id": endpoint.pk}, endpoints=[endpoint])
    assert message is not None
    audit_record(organization=organization, actor=actor or Actor.system("webhooks"),
                 action="webhook_endpoint.tested", target=endpoint)
    return message


def _pending_cancel(endpoint: WebhookEndpoint) -> int:
    return WebhookDelivery.objects.filter(endpoint=endpoint, status=WebhookDelivery.Status.PENDING).update(
        status=WebhookDelivery.Status.CANCELLED, finished_at=timezone.now(), next_attempt_at=None)


def webhook_endpoint_disable(*, endpoint: WebhookEndpoint, reason: str) -> bool:
    """Disable the endpoint (in the current schema) and cancel its pending deliveries; whether it was enabled."""
    with transaction.atomic():
        changed = WebhookEndpoint.objects.filter(pk=endpoint.pk, enabled=True).update(
            enabled=False, disabled_reason=reason, updated_at=timezone.now())
        endpoint.enabled, endpoint.disabled_reason = False, reason
        _pending_cancel(endpoint)
        audit_record(organization=current_organization(), actor=Actor.system("webhooks"),
                     action="webhook_endpoint.disabled", target=endpoint, after={"reason": reason})
    logger.warning("webhook endpoint %s disabled (%s)", endpoint.pk, reason)
    return bool(changed)


def endpoint_failing_since(endpoint: WebhookEndpoint):
    """When the endpoint's current run of failed tries began (None: its last try succeeded, or none failed)."""
    tries = WebhookAttempt.objects.filter(delivery__endpoint=endpoint)
    last_success = tries.filter(status=WebhookAttempt.Status.SUCCEEDED).aggregate(at=Max("started_at"))["at"]
    failed = tries.filter(status=WebhookAttempt.Status.FAILED)
    if last_success is not None:
        failed = failed.filter(started_at__gt=last_success)
    return failed.aggregate(at=Min("started_at"))["at"]


def _failing_check(endpoint: WebhookEndpoint, *, now) -> bool:
    """Disable an endpoint failing for FAILING_DAYS and tell its organization's owners and admins; whether it was."""
    since = endpoint_failing_since(endpoint)
    if since is None or since > now - timedelta(days=FAILING_DAYS):
        return False
    if not webhook_endpoint_disable(endpoint=endpoint, reason=WebhookEndpoint.DisabledReason.FAILING):
        return False
    from .tasks import endpoint_failing_notify_task

    organization_id, endpoint_id = current_organization().pk, endpoint.pk
    transaction.on_commit(lambda: endpoint_failing_notify_task.delay(organization_id, endpoint_id, since.isoformat()))
    return True


def endpoint_failing_notify(*, organization: Organization, endpoint_id: int, since) -> int:
    """E-mail the organization's owners and admins, each in their language, that an endpoint was disabled for
    failing since `since`; how many were sent."""
    with schema_context(organization.schema_name):
        endpoint = WebhookEndpoint.objects.filter(pk=endpoint_id).first()
    if endpoint is None:
        return 0
    recipients = User.objects.filter(memberships__organization=organization, is_active=True,
                                     memberships__role__in=[Role.OWNER, Role.ADMIN]).distinct()
    path = reverse("webhook_endpoint", args=[organization.slug, endpoint_id])
    url = settings.SITE_URL.rstrip("/") + path
    sent = 0
    for user in recipients:
        with translation.override(user.language):
            context = {"organization": email_plain_name(organization.name), "endpoint": endpoint.url,
                       "days": FAILING_DAYS, "since": since.date().isoformat(), "url": url}
            subject = _("A webhook endpoint of %(organization)s was disabled") % context
            body = _(
                "Every delivery to the webhook endpoint %(endpoint)s of %(organization)s has failed since "
                "%(since)s (%(days)s days without a success), so it has been disabled and receives no more "
                "events.\n\n"
                "Once the receiver works again, enable the endpoint and send the failed events again from its "
                "page:\n%(url)s\n"
            ) % context
        EmailMessage(subject, body, None, [user.email], headers={"Content-Language": user.language}).send()
        sent += 1
    return sent


def webhook_delivery_replay(*, organization: Organization, delivery: WebhookDelivery,
                            actor: Actor | None = None) -> WebhookDelivery:
    """Send a finished delivery's message again (same `webhook-id`): it is pending again and its next try is
    queued now; past the schedule's last try, a replay is one try. The endpoint must be enabled. Audited."""
    delivery = _delivery_replay(organization=organization, delivery=delivery)
    audit_record(organization=organization, actor=actor or Actor.system("webhooks"),
                 action="webhook_endpoint.replayed", target=delivery.endpoint, after={"deliveries": [delivery.pk]})
    return delivery


def _delivery_replay(*, organization: Organization, delivery: WebhookDelivery) -> WebhookDelivery:
    if not delivery.endpoint.enabled:
        raise ValidationError(_("Enable the endpoint first: a disabled endpoint receives nothing."))
    schema = organization.schema_name
    with schema_context(schema), transaction.atomic():
        replayed = WebhookDelivery.objects.filter(pk=delivery.pk, status__in=WebhookDelivery.FINAL).update(
            status=WebhookDelivery.Status.PENDING, finished_at=None, next_attempt_at=timezone.now())
        delivery.refresh_from_db()
        if replayed:
            number = delivery.attempts + 1
            transaction.on_commit(lambda: deliveries_enqueue([delivery.pk], schema=schema, number=number))
    return delivery


def webhook_deliveries_replay_failed(*, organization: Organization, endpoint: WebhookEndpoint, since,
                                     actor: Actor | None = None) -> int:
    """Replay every delivery to `endpoint` created since `since` that failed or was cancelled; how many.
    Audited as one event."""
    with schema_context(organization.schema_name):
        failed = list(WebhookDelivery.objects.select_related("endpoint").filter(
            endpoint=endpoint, created_at__gte=since,
            status__in=[WebhookDelivery.Status.FAILED, WebhookDelivery.Status.CANCELLED]))
    for delivery in failed:
        _delivery_replay(organization=organization, delivery=delivery)
    if failed:
        audit_record(organization=organization, actor=actor or Actor.system("webhooks"),
                     action="webhook_endpoint.replayed", target=endpoint,
                     after={"deliveries": [delivery.pk for delivery in failed], "since": since.isoformat()})
    return len(failed)


def _timestamp(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def webhook_event_emit(*, organization: Organization, type: str, data: dict, private: dict | None = None,
                       endpoints: Iterable[WebhookEndpoint] | None = None) -> WebhookMessage | None:
    """Write an event to the outbox, in the caller's transaction, with a delivery to each enabled endpoint that
    subscribes to `type` (or to `endpoints`); its first tries are queued when the transaction commits. None when
    no endpoint wants it (nothing is written).

    `private` (people's words: a chat answer's text) is added to `data` only for the endpoints that include message
    text: they get a message of their own (another `webhook-id`), the others one without it."""
    schema = organization.schema_name
    # In the caller's schema and transaction (as it nearly always is): no schema switch and no savepoint to pay for.
    here = contextlib.nullcontext() if connection.schema_name == schema else schema_context(schema)
    with here, transaction.atomic(savepoint=False):
        if endpoints is None:
            endpoints = [e for e in WebhookEndpoint.objects.filter(enabled=True) if e.subscribes_to(type)]
        endpoints = list(endpoints)
        if not endpoints:
            return None
        groups = [(data, endpoints)]
        if private:
            groups = [(data, [e for e in endpoints if not e.include_message_text]),
                      ({**data, **private}, [e for e in endpoints if e.include_message_text])]
        now = timezone.now()
        messages, ids = [], []
        for payload_data, group in groups:
            if not group:
                continue
            message = WebhookMessage.objects.create(
                type=type, timestamp=now, payload={"type": type, "timestamp": _timestamp(now), "data": payload_data})
            deliveries = WebhookDelivery.objects.bulk_create(
                [WebhookDelivery(message=message, endpoint=endpoint, next_attempt_at=now) for endpoint in group])
            messages.append(message)
            ids += [delivery.pk for delivery in deliveries]
        transaction.on_commit(lambda: deliveries_enqueue(ids, schema=schema))
    return messages[0]


def deliveries_enqueue(delivery_ids: Iterable[int], *, schema: str, number: int | None = None,
                       countdown: float | None = None) -> None:
    """Queue a try of each delivery in `schema` (`number`: that try; default the first)."""
    from .tasks import delivery_attempt_task

    with schema_context(schema):
        for delivery_id in delivery_ids:
            delivery_attempt_task.apply_async((delivery_id, number or 1), countdown=countdown)


def message_body(message: WebhookMessage) -> bytes:
    return json.dumps(message.payload, separators=(",", ":"), ensure_ascii=False).encode()


def _retry_after(response: EgressResponse | None) -> float | None:
    if response is None or response.status not in (429, 503):
        return None
    value = (response.headers.get("retry-after") or "").strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = (parsedate_to_datetime(value) - timezone.now()).total_seconds()
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def retry_wait(next_number: int, response: EgressResponse | None = None) -> float:
    """Seconds before try `next_number` (2..len(RETRY_SCHEDULE)): the schedule's, with jitter, or a longer
    Retry-After of a 429/503."""
    scheduled = RETRY_SCHEDULE[next_number - 1] * random.uniform(1 - JITTER, 1 + JITTER)
    return max(scheduled, _retry_after(response) or 0.0)


def delivery_attempt(*, delivery_id: int, number: int, resolve: Resolver = system_resolve) -> AttemptOutcome:
    """Make try `number` of a delivery, once, within its endpoint's concurrency cap; what to do next."""
    delivery = WebhookDelivery.objects.select_related("endpoint", "message").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
        return AttemptOutcome(delivery.status if delivery else "")
    if delivery.attempts >= number:
        return _claimed_before(delivery, number)
    if not delivery.endpoint.enabled:
        with transaction.atomic():
            _pending_cancel(delivery.endpoint)
        return AttemptOutcome(WebhookDelivery.Status.CANCELLED)
    organization = current_organization()
    if not entitlements_for(organization).webhooks:  # a downgrade: endpoints are kept, disabled
        webhook_endpoint_disable(endpoint=delivery.endpoint, reason=WebhookEndpoint.DisabledReason.PLAN)
        return AttemptOutcome(WebhookDelivery.Status.CANCELLED)
    slot = slot_acquire(kind=f"{SLOT_KIND}:{organization.pk}", organization_id=delivery.endpoint_id,
                        limit=settings.WEBHOOKS_ENDPOINT_CONCURRENCY, lease_seconds=STALE_SECONDS)
    if slot is None:
        return AttemptOutcome(delivery.status, next_number=number, retry_in=SLOT_RETRY_SECONDS + random.uniform(0, 1))
    try:
        attempt = _claim(delivery, number)
        if attempt is None:
            return AttemptOutcome(WebhookDelivery.objects.get(pk=delivery_id).status)
        response, error, latency_ms, outcome = _send(delivery, resolve)
        return _record(delivery, attempt, response=response, error=error, latency_ms=latency_ms, outcome=outcome)
    finally:
        slot_release(slot)


def _claimed_before(delivery: WebhookDelivery, number: int) -> AttemptOutcome:
    """A task for a try already claimed: nothing to send, unless that try died mid-send (then it failed)."""
    attempt = WebhookAttempt.objects.filter(delivery=delivery, number=number).first()
    stale = timezone.now() - timedelta(seconds=STALE_SECONDS)
    if attempt is None or attempt.status != WebhookAttempt.Status.SENDING or attempt.started_at > stale \
            or delivery.attempts != number:
        return AttemptOutcome(delivery.status)
    return _record(delivery, attempt, response=None, error=_("interrupted: the worker stopped while sending"),
                   latency_ms=None, outcome="interrupted")


def _claim(delivery: WebhookDelivery, number: int) -> WebhookAttempt | None:
    with transaction.atomic():
        locked = WebhookDelivery.objects.select_for_update().get(pk=delivery.pk)
        if locked.status != WebhookDelivery.Status.PENDING or locked.attempts != number - 1:
            return None
        # Should this try die with its worker, the sweeper finds it due once it is stale.
        locked.attempts, locked.next_attempt_at = number, timezone.now() + timedelta(seconds=STALE_SECONDS)
        locked.save(update_fields=["attempts", "next_attempt_at"])
        delivery.attempts = number
        return WebhookAttempt.objects.create(delivery=locked, number=number)


def _send(delivery: WebhookDelivery, resolve: Resolver) -> tuple[EgressResponse | None, str, int, str]:
    message, endpoint = delivery.message, delivery.endpoint
    body = message_body(message)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               **signed_headers(secrets=endpoint_secrets(endpoint), msg_id=message.event_id,
                                timestamp=int(time.time()), body=body)}
    started = time.monotonic()
    try:
        response = egress_post(endpoint.url, content=body, headers=headers, allow_http=settings.WEBHOOKS_ALLOW_HTTP,
                               allowed=allowed_networks(), resolve=resolve)
        error, outcome = "", ""
    except EgressError as failure:
        response, error = None, str(failure)
        outcome = ("timeout" if isinstance(failure, EgressFailed) and failure.reason == "timeout"
                   else "connection" if isinstance(failure, EgressFailed) else "refused")
    return response, error[:255], int((time.monotonic() - started) * 1000), outcome


def _record(delivery: WebhookDelivery, attempt: WebhookAttempt, *, response: EgressResponse | None, error: str,
            latency_ms: int | None, outcome: str) -> AttemptOutcome:
    now = timezone.now()
    succeeded = response is not None and 200 <= response.status < 300
    if response is not None:
        outcome = "success" if succeeded else "gone" if response.status == 410 else "failure"
    transaction.on_commit(lambda: webhook_delivery_count(outcome))
    if response is not None and not succeeded and not error:
        error = _("HTTP %(status)s") % {"status": response.status}
    attempt.status = WebhookAttempt.Status.SUCCEEDED if succeeded else WebhookAttempt.Status.FAILED
    attempt.response_status = response.status if response is not None else None
    attempt.response_body = response.body_head if response is not None else ""
    attempt.latency_ms, attempt.error = latency_ms, error[:255]
    number = attempt.number
    with transaction.atomic():
        attempt.save(update_fields=["status", "response_status", "response_body", "latency_ms", "error"])
        pending = WebhookDelivery.objects.filter(pk=delivery.pk, status=WebhookDelivery.Status.PENDING)
        if succeeded:
            pending.update(status=WebhookDelivery.Status.SUCCEEDED, finished_at=now, next_attempt_at=None)
            return AttemptOutcome(WebhookDelivery.Status.SUCCEEDED)
        gone = response is not None and response.status == 410
        if gone or number >= len(RETRY_SCHEDULE):
            pending.update(status=WebhookDelivery.Status.FAILED, finished_at=now, next_attempt_at=None)
            if gone:
                webhook_endpoint_disable(endpoint=delivery.endpoint, reason=WebhookEndpoint.DisabledReason.GONE)
            else:
                _failing_check(delivery.endpoint, now=now)
            return AttemptOutcome(WebhookDelivery.Status.FAILED)
        if _failing_check(delivery.endpoint, now=now):  # its pending deliveries, this one included, are cancelled
            return AttemptOutcome(WebhookDelivery.Status.CANCELLED)
        wait = retry_wait(number + 1, response)
        pending.update(next_attempt_at=now + timedelta(seconds=wait))
    return AttemptOutcome(WebhookDelivery.Status.PENDING, next_number=number + 1, retry_in=wait)


def dead_letters_purge(*, now=None) -> int:
    """Delete the deliveries that failed for good (dead letters) over WEBHOOKS_DEAD_LETTER_DAYS ago, their tries, and
    the messages left without a delivery; how many deliveries went."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.WEBHOOKS_DEAD_LETTER_DAYS)
    with transaction.atomic():
        dead = WebhookDelivery.objects.filter(status=WebhookDelivery.Status.FAILED, finished_at__lt=cutoff)
        messages = set(dead.values_list("message_id", flat=True))
        _total, deleted = dead.delete()
        WebhookMessage.objects.filter(pk__in=messages, deliveries__isnull=True).delete()
    return deleted.get(WebhookDelivery._meta.label, 0)


def deliveries_due(*, now=None, grace: timedelta = timedelta(minutes=5)) -> int:
    """Queue again the pending deliveries whose next try is overdue (its task was lost); a try already claimed is
    never sent twice, so a duplicate is harmless."""
    now = now or timezone.now()
    due = list(WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING, next_attempt_at__lt=now - grace)
               .values_list("pk", "attempts")[:1000])
    sending = set(WebhookAttempt.objects.filter(delivery_id__in=[pk for pk, _n in due],
                                                status=WebhookAttempt.Status.SENDING)
                  .values_list("delivery_id", "number"))
    for delivery_id, attempts in due:
        # A try that died mid-send is queued again to be recorded as failed (which schedules the next one).
        number = attempts if (delivery_id, attempts) in sending else attempts + 1
        deliveries_enqueue([delivery_id], schema=connection.schema_name, number=number)
    return len(due)
