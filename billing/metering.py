"""Metered overage: each closed day's credits reported to a Stripe Billing meter.

Organizations whose plan has `metered_overage` and a Stripe customer get one meter event
per day with the credits they used (from DailyUsage); the Stripe price attached to the
meter decides what is billed (e.g. a tier free up to the plan's included credits). A day
is reported once: its `MeterReport` row is unique per organization and day, and the
identifier sent with the event makes Stripe refuse a duplicate after a lost response.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import stripe
from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from .models import ZERO, BillingAccount, DailyUsage, MeterReport
from .stripe import stripe_request_options
from .usage import usage_rollup

LOOKBACK_DAYS = 7  # closed days still reported after an outage


def meter_reports_prepare(*, today: date | None = None) -> list[MeterReport]:
    """Create the pending reports for closed days not reported yet (days with usage only)."""
    today = today or timezone.now().date()
    usage_rollup()  # fold in the last events before reading the closed days
    accounts = BillingAccount.objects.filter(plan__metered_overage=True).exclude(stripe_customer_id="")
    days = (DailyUsage.objects
            .filter(organization_id__in=accounts.values("pk"), day__lt=today,
                    day__gte=today - timedelta(days=LOOKBACK_DAYS))
            .values("organization_id", "day").annotate(credits=Sum("credits")).filter(credits__gt=ZERO))
    created = []
    for row in days:
        report, was_created = MeterReport.objects.get_or_create(
            organization_id=row["organization_id"], day=row["day"],
            defaults={"credits": row["credits"],
                      "identifier": f"prumo-{row['organization_id']}-{row['day']:%Y%m%d}"},
        )
        if was_created:
            created.append(report)
    return created


def meter_report_send(*, report_id: int) -> MeterReport:
    """Send one pending report to Stripe; a failure is recorded, then raised so the task retries."""
    failure: stripe.StripeError | None = None
    with transaction.atomic():
        report = MeterReport.objects.select_for_update().get(pk=report_id)
        if report.status == MeterReport.Status.SENT:
            return report
        customer_id = BillingAccount.objects.values_list("stripe_customer_id", flat=True).get(
            pk=report.organization_id)
        report.attempts += 1
        try:
            stripe.billing.MeterEvent.create(
                event_name=settings.STRIPE_METER_EVENT_NAME, identifier=report.identifier,
                timestamp=int(datetime.combine(report.day, time(23, 59, 59), tzinfo=UTC).timestamp()),
                payload={"stripe_customer_id": customer_id, "value": str(report.credits)}, **stripe_request_options(),
            )
        except stripe.InvalidRequestError as error:
            # A duplicate identifier means an earlier attempt got through (its answer was lost).
            if getattr(error, "code", "") != "duplicate_meter_event":
                failure = error
        except stripe.StripeError as error:
            failure = error
        if failure is None:
            report.status, report.sent_at, report.last_error = MeterReport.Status.SENT, timezone.now(), ""
        else:
            report.last_error = str(failure)[:255]
        report.save(update_fields=["status", "sent_at", "attempts", "last_error"])
    if failure is not None:
        raise failure
    return report
