from __future__ import annotations

import logging
from datetime import datetime

from celery import shared_task

from tenants.models import Organization

from .services import credits_grant_monthly, grant_period

logger = logging.getLogger(__name__)


@shared_task(acks_late=True, max_retries=5, retry_backoff=True)
def credits_grant_monthly_all(period: str | None = None) -> int:
    """Beat: this month's plan grant for every organization; safe to run any number of times.

    `period` (YYYY-MM) is for tests and back-fills. Returns how many grants were made.
    """
    period = period or grant_period()
    granted = 0
    for organization in Organization.objects.exclude(schema_name="public").iterator():
        try:
            movement = credits_grant_monthly(organization, period=period)
        except Exception:
            # One organization's failure must not stop everyone else's grant; the next run retries it.
            logger.exception("monthly grant failed for %s (%s)", organization.slug, period)
            continue
        granted += bool(movement and movement.created)
    return granted


@shared_task(acks_late=True, max_retries=5, retry_backoff=True)
def usage_rollup_task() -> int:
    """Beat: fold new usage events into the daily rollups (idempotent, incremental)."""
    from .usage import usage_rollup

    return usage_rollup()


@shared_task(acks_late=True)
def meter_reports_run() -> int:
    """Beat: report each closed day's credits of metered plans to Stripe, one task per day."""
    from .metering import meter_reports_prepare
    from .models import MeterReport

    meter_reports_prepare()
    pending = list(MeterReport.objects.filter(status=MeterReport.Status.PENDING).values_list("pk", flat=True))
    for report_id in pending:
        meter_report_send_task.apply_async(args=[report_id], queue="billing")
    return len(pending)


@shared_task(bind=True, acks_late=True, max_retries=8)
def meter_report_send_task(self, report_id: int) -> str:
    """Send one report; Stripe errors retry with exponential backoff (the identifier makes it safe)."""
    import stripe

    from .metering import meter_report_send

    try:
        return meter_report_send(report_id=report_id).status
    except stripe.StripeError as error:
        raise self.retry(exc=error, countdown=min(2 ** self.request.retries * 30, 3600)) from error


@shared_task(acks_late=True, max_retries=5, retry_backoff=True)
def billing_dunning_run(now: str | None = None) -> int:
    """Beat: drop past-due accounts whose grace period is over to Free. `now` (ISO 8601) is for tests."""
    from .dunning import dunning_run

    return dunning_run(now=datetime.fromisoformat(now) if now else None)


@shared_task(acks_late=True, max_retries=5, retry_backoff=True)
def billing_downgrade_notify(organization_id: int, previous_plan: str) -> int:
    from .dunning import downgrade_notify_owners

    organization = Organization.objects.get(pk=organization_id)
    return downgrade_notify_owners(organization=organization, previous_plan=previous_plan)
