"""Webhook deliveries' Celery tasks (the `webhooks` queue): thin and idempotent, in the organization's schema."""

from __future__ import annotations

import smtplib
from datetime import datetime

from celery import shared_task
from django.db import OperationalError, connection

from tenants.models import Organization
from tenants.tasks import task_per_organization

from .services import (
    dead_letters_purge,
    deliveries_due,
    deliveries_enqueue,
    delivery_attempt,
    endpoint_failing_notify,
)


@shared_task(bind=True, acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5,
             ignore_result=True)
def delivery_attempt_task(self, delivery_id: int, number: int) -> str:
    """Try `number` of a delivery (sent at most once however often this runs), then queue the next one if due.

    Run eagerly (in-process tests) the next try is not queued: an eager countdown would not wait."""
    outcome = delivery_attempt(delivery_id=delivery_id, number=number)
    if outcome.next_number is not None and not self.request.is_eager:
        deliveries_enqueue([delivery_id], schema=connection.schema_name, number=outcome.next_number,
                           countdown=outcome.retry_in)
    return outcome.status


@shared_task(ignore_result=True)
def deliveries_due_fanout() -> int:
    """Beat: each organization queues again its deliveries whose next try is overdue (a lost task)."""
    return task_per_organization(deliveries_due_task)


@shared_task(acks_late=True, ignore_result=True)
def deliveries_due_task() -> int:
    return deliveries_due()


@shared_task(ignore_result=True)
def dead_letters_purge_fanout() -> int:
    """Beat, daily: each organization deletes its dead letters past their retention (WEBHOOKS_DEAD_LETTER_DAYS)."""
    return task_per_organization(dead_letters_purge_task)


@shared_task(acks_late=True, ignore_result=True)
def dead_letters_purge_task() -> int:
    return dead_letters_purge()


@shared_task(acks_late=True, autoretry_for=(OSError, smtplib.SMTPException), retry_backoff=True, max_retries=5,
             ignore_result=True)
def endpoint_failing_notify_task(organization_id: int, endpoint_id: int, since: str) -> int:
    """E-mail the owners and admins that an endpoint was disabled for failing (see services._failing_check)."""
    organization = Organization.objects.get(pk=organization_id)
    return endpoint_failing_notify(organization=organization, endpoint_id=endpoint_id,
                                   since=datetime.fromisoformat(since))
