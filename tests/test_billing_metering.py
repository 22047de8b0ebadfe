"""Metered overage: each closed day's credits reach the Stripe meter exactly once, through outages."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
import stripe
from django.utils import timezone

from billing.metering import meter_report_send, meter_reports_prepare
from billing.models import BillingAccount, Plan, Price
from billing.services import billing_account_ensure
from billing.tasks import meter_reports_run
from billing.usage import usage_cost, usage_record

from .fake_stripe import API_VERSION

pytestmark = pytest.mark.django_db
METER_PATH = "/v1/billing/meter_events"


@pytest.fixture
def metered_org(org_a, tenant_world):
    Price.objects.create(kind="check", key="cnpj", per_unit=Decimal("2.5"),
                         effective_from=timezone.now() - timedelta(days=30))
    billing_account_ensure(org_a)
    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="pro"), stripe_customer_id="cus_42")
    today = timezone.now().date()
    for days_ago, checks in ((2, 2), (1, 3), (0, 5)):  # today is not closed yet
        when = datetime.combine(today - timedelta(days=days_ago), time(12), tzinfo=UTC)
        cost = usage_cost(kind="check", key="cnpj", units=checks, at=when)
        usage_record(organization=org_a, user=tenant_world["a"]["member"], kind="check", key="cnpj", units=checks,
                     credits=cost.credits, price=cost.price, request_id=uuid.uuid4().hex, occurred_at=when)
    return org_a


def test_closed_days_are_reported_once_with_their_credits(metered_org, fake):
    assert meter_reports_run() == 2
    events = fake.calls_to("POST", METER_PATH)
    assert sorted(call.params["payload"]["value"] for call in events) == ["5.000000", "7.500000"]
    assert {call.params["payload"]["stripe_customer_id"] for call in events} == {"cus_42"}
    assert meter_reports_run() == 0  # nothing pending: nothing sent again
    assert len(fake.calls_to("POST", METER_PATH)) == 2


def test_an_outage_is_recorded_and_the_retry_counts_once(metered_org, fake):
    report = meter_reports_prepare()[0]
    fake.fail_next("POST", METER_PATH, times=1, status=500)
    with pytest.raises(stripe.APIError):
        meter_report_send(report_id=report.pk)  # the task retries on this, with backoff
    report.refresh_from_db()
    assert (report.status, report.attempts) == ("pending", 1)
    assert "Stripe is having a moment" in report.last_error
    assert meter_report_send(report_id=report.pk).status == "sent"
    assert meter_report_send(report_id=report.pk).attempts == 2  # already sent: nothing more
    assert len(fake.objects["billing.meter_event"]) == 1


def test_a_lost_response_is_recognized_by_its_identifier(metered_org, fake):
    report = meter_reports_prepare()[0]
    # Stripe got the event but our process died before recording it.
    stripe.billing.MeterEvent.create(event_name="prumo_credits", identifier=report.identifier,
                                     payload={"stripe_customer_id": "cus_42", "value": str(report.credits)},
                                     api_key="sk_test_" + "0" * 24, stripe_version=API_VERSION)
    assert meter_report_send(report_id=report.pk).status == "sent"
    assert len(fake.objects["billing.meter_event"]) == 1


def test_plans_without_metered_overage_report_nothing(metered_org, fake):
    BillingAccount.objects.filter(pk=metered_org.pk).update(plan=Plan.objects.get(code="starter"))
    assert meter_reports_run() == 0
    assert fake.calls_to("POST", METER_PATH) == []
