from __future__ import annotations

from celery import shared_task

from tenants.models import Organization

from .services import credits_grant_monthly, grant_period


@shared_task(acks_late=True, max_retries=5, retry_backoff=True)
def credits_grant_monthly_all() -> int:
    """Beat: this month's plan grant for every organization; safe to run any number of times."""
    period = grant_period()
    granted = 0
    for organization in Organization.objects.exclude(schema_name="public").iterator():
        movement = credits_grant_monthly(organization, period=period)
        granted += bool(movement and movement.created)
    return granted


@shared_task(acks_late=True, max_retries=5, retry_backoff=True)
def usage_rollup_task() -> int:
    """Beat: fold new usage events into the daily rollups (idempotent, incremental)."""
    from .usage import usage_rollup

    return usage_rollup()
