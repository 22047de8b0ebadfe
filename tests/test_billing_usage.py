"""Usage events at the prices in force, daily rollups (incremental, idempotent), usage pages."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import DailyUsage, Price, UsageEvent
from billing.usage import UnknownPrice, usage_cost, usage_record, usage_rollup

pytestmark = pytest.mark.django_db

MODEL = "test/usage-model"  # not in the seeded catalog: this test owns its prices
CHECK = "test-usage-check"  # nor in the seeded check prices


@pytest.fixture
def prices():
    old = Price.objects.create(kind="model", key=MODEL, input_per_million=Decimal("150"),
                               output_per_million=Decimal("600"),
                               effective_from=timezone.now() - timedelta(days=365))
    check = Price.objects.create(kind="check", key=CHECK, per_unit=Decimal("2.5"),
                                 effective_from=timezone.now() - timedelta(days=365))
    return old, check


def _at(day: int, hour: int = 12) -> datetime:
    today = timezone.now().date()
    return datetime.combine(today - timedelta(days=day), datetime.min.time(), tzinfo=UTC) + timedelta(
        hours=hour
    )


def _use(org, user, *, tokens=(1000, 500), when=None, key=MODEL, kind="model", units=0, request_id=None):
    cost = usage_cost(kind=kind, key=key, input_tokens=tokens[0], output_tokens=tokens[1], units=units, at=when)
    return usage_record(organization=org, user=user, kind=kind, key=key, input_tokens=tokens[0],
                        output_tokens=tokens[1], units=units, credits=cost.credits, price=cost.price,
                        request_id=request_id or uuid.uuid4().hex, occurred_at=when)


def test_cost_uses_the_price_in_force_and_events_keep_it(prices, org_a, tenant_world):
    user = tenant_world["a"]["member"]
    first = _use(org_a, user, when=_at(3))
    assert first.credits == Decimal("0.45")  # 1000 × 150/1M + 500 × 600/1M
    Price.objects.create(kind="model", key=MODEL, input_per_million=Decimal("300"),
                         output_per_million=Decimal("1200"), effective_from=_at(1, 0))
    second = _use(org_a, user, when=_at(0))
    assert second.credits == Decimal("0.9")
    first.refresh_from_db()
    assert (first.input_per_million, first.credits) == (Decimal("150"), Decimal("0.45"))
    with pytest.raises(UnknownPrice):
        usage_cost(kind="model", key="nobody/none", input_tokens=1)


def test_the_same_request_is_recorded_once(prices, org_a, tenant_world):
    a = _use(org_a, tenant_world["a"]["member"], request_id="req-7")
    b = _use(org_a, tenant_world["a"]["member"], request_id="req-7")
    assert a.pk == b.pk and UsageEvent.objects.filter(request_id="req-7").count() == 1


def test_rollup_is_incremental_idempotent_and_counts_late_events(prices, org_a, tenant_world):
    member, owner = tenant_world["a"]["member"], tenant_world["a"]["owner"]
    usage_rollup()  # events other tests committed (live-server chat answers) are not this test's
    for _ in range(3):
        _use(org_a, member, when=_at(2))
    _use(org_a, owner, when=_at(2))
    _use(org_a, None, kind="check", key=CHECK, units=2, tokens=(0, 0), when=_at(1))
    assert usage_rollup() == 5
    assert usage_rollup() == 0  # nothing new: nothing changes

    def bucket(user, day):
        return DailyUsage.objects.get(organization=org_a, day=_at(day).date(), key=MODEL, user=user)

    assert (bucket(member, 2).events, bucket(member, 2).credits) == (3, Decimal("1.35"))
    _use(org_a, member, when=_at(2))  # arrives late for an already rolled-up day
    assert usage_rollup() == 1
    assert (bucket(member, 2).events, bucket(member, 2).credits) == (4, Decimal("1.8"))
    check = DailyUsage.objects.get(organization=org_a, kind="check", user=None)
    assert (check.units, check.credits) == (2, Decimal("5"))
    total = sum(DailyUsage.objects.filter(organization=org_a).values_list("credits", flat=True))
    assert total == sum(UsageEvent.objects.filter(organization=org_a).values_list("credits", flat=True))


def test_usage_page_shows_charts_members_and_exports_csv(prices, client_for, org_a, org_b, tenant_world):
    member = tenant_world["a"]["member"]
    _use(org_a, member, when=_at(1))
    _use(org_a, tenant_world["a"]["owner"], tokens=(2000, 1000), when=_at(0))
    _use(org_b, tenant_world["b"]["member"], tokens=(99999, 99999), when=_at(0))
    usage_rollup()
    client = client_for("a", "viewer")
    html = client.get(f"/o/{org_a.slug}/billing/usage/").content.decode()
    assert html.count("<rect ") >= 30 + 1  # a bar per day of the default 30-day range, one per model
    assert "1.35 credits from" in html  # 0.45 + 0.9, org B's usage not included
    assert "member-a@example.com" in html and "owner-a@example.com" in html
    assert "member-b@example.com" not in html

    response = client.get(f"/o/{org_a.slug}/billing/usage/", {"format": "csv"})
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert sorted(row["member"] for row in rows) == ["member-a@example.com", "owner-a@example.com"]
    assert sum(Decimal(row["credits"]) for row in rows) == Decimal("1.35")


def test_usage_range_errors_are_clear(client_for, org_a):
    client = client_for("a")
    backwards = client.get(f"/o/{org_a.slug}/billing/usage/", {"start": "2026-05-10", "end": "2026-05-01"})
    assert backwards.status_code == 400 and "on or before the end date" in backwards.content.decode()
    too_long = client.get(f"/o/{org_a.slug}/billing/usage/", {"start": "2020-01-01", "end": "2026-01-01"})
    assert too_long.status_code == 400
    garbage = client.get(f"/o/{org_a.slug}/billing/usage/", {"start": "yesterday"})
    assert garbage.status_code == 400 and "Enter a valid date" in garbage.content.decode()


def test_usage_page_reads_rollups_with_a_fixed_number_of_queries(prices, client_for, org_a, tenant_world,
                                                                 django_assert_max_num_queries):
    for day in range(10):
        _use(org_a, tenant_world["a"]["member"], when=_at(day))
    usage_rollup()
    client = client_for("a")
    with django_assert_max_num_queries(10):
        assert client.get(f"/o/{org_a.slug}/billing/usage/").status_code == 200


def test_staff_see_top_organizations_and_daily_totals(prices, admin_client, org_a, org_b, tenant_world):
    _use(org_a, tenant_world["a"]["member"], when=_at(0))
    _use(org_b, tenant_world["b"]["member"], tokens=(10_000, 10_000), when=_at(0))
    usage_rollup()
    html = admin_client.get("/admin/billing/dailyusage/").content.decode()
    top = html[html.index('id="top-organizations"'):html.index('id="totals-per-day"')]
    assert top.index(org_b.name) < top.index(org_a.name)  # org B used more
    assert "7.95" in html[html.index('id="totals-per-day"'):]  # 0.45 + 7.5 today
