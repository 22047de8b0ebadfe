"""Celery tasks for Stripe billing: thin, idempotent, safe to retry."""

from __future__ import annotations

from datetime import datetime

from celery import shared_task

from tenants.models import Organization

from .dunning import downgrade_notify_owners, dunning_run


@shared_task(acks_late=True, max_retries=5, retry_backoff=True)
def billing_dunning_run(now: str | None = None) -> int:
    """Beat: drop past-due accounts whose grace period is over to Free. `now` (ISO 8601) is for tests."""
    return dunning_run(now=datetime.fromisoformat(now) if now else None)


@shared_task(acks_late=True, max_retries=5, retry_backoff=True)
def billing_downgrade_notify(organization_id: int, previous_plan: str) -> int:
    organization = Organization.objects.get(pk=organization_id)
    return downgrade_notify_owners(organization=organization, previous_plan=previous_plan)
