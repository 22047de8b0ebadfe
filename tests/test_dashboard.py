"""The organization dashboard: money, plan limits, recent conversations and checks, alerts, the admins' block,
empty states, a bounded number of queries, and 404 for anyone outside the organization."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone, translation
from django_tenants.utils import schema_context

from billing.models import BillingAccount, DailyUsage, Plan
from chat.models import Thread
from checks.models import Alert, Check, ChecksMonth, Report, Target
from checks.services import month_of
from tenants.models import ApiKey

pytestmark = pytest.mark.django_db

# What the owner's dashboard may cost with data present, session, membership, schema switches and the header's
# menu included (15 measured); the same with ten times the rows.
MAX_QUERIES = 16


def text_of(response) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", response.content.decode()).split())


def section(response, testid: str) -> str:
    """The text of the dashboard section marked `data-testid=testid`."""
    match = re.search(rf'<section[^>]*data-testid="{testid}".*?</section>', response.content.decode(), re.S)
    assert match, f"no {testid} section"
    return " ".join(re.sub(r"<[^>]+>", " ", match.group(0)).split())


def add_threads(org, user, count: int, *, prefix: str = "Talk") -> list[Thread]:
    with schema_context(org.schema_name):
        now = timezone.now()
        return [Thread.objects.create(user=user, model_id="demo/echo", title=f"{prefix} {n}",
                                      updated_at=now - timedelta(minutes=count - n)) for n in range(count)]


def add_checks(org, user, count: int, *, alerts: int = 0) -> list[Check]:
    """`count` targets with a check each (the latest first on the page); `alerts` unread alerts on the first."""
    made = []
    with schema_context(org.schema_name):
        for n in range(count):
            target = Target.objects.create(cnpj=f"{uuid.uuid4().int % 10**14:014d}", label=f"Supplier {n}",
                                           created_by=user)
            made.append(Check.objects.create(target=target, requested_by=user, status=Check.Status.SUCCEEDED,
                                             created_at=timezone.now() - timedelta(minutes=count - n)))
        if alerts:
            target = made[0].target
            report = Report.objects.create(target=target, check_run=made[0], data={}, risk_level="low",
                                           provider="brasilapi", fetched_at=timezone.now())
            Alert.objects.bulk_create([Alert(target=target, report=report, kinds=["status"]) for _ in range(alerts)])
    return made


def add_usage(org, *, days: int, per_day: Decimal = Decimal("1.5"), keys: int = 1) -> None:
    today, batch = timezone.localdate(), uuid.uuid4().hex[:6]
    DailyUsage.objects.bulk_create([
        DailyUsage(organization=org, day=today - timedelta(days=d), kind="model", key=f"demo/{batch}-{k}", events=2,
                   credits=per_day) for d in range(days) for k in range(keys)])


@pytest.fixture
def org_a_clean(tenant_world, org_a):
    """Org A as a fresh organization would be: no threads, checks, alerts or usage (other tests' rows are
    removed inside this test's transaction), on Starter with 250 credits."""
    with schema_context(org_a.schema_name):
        Alert.objects.all().delete()
        Report.objects.all().delete()
        Check.objects.all().delete()
        Target.objects.all().delete()
        Thread.objects.all().delete()
        ChecksMonth.objects.all().delete()
    DailyUsage.objects.filter(organization=org_a).delete()
    ApiKey.objects.filter(organization=org_a).delete()
    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="starter"), credits=Decimal("250"))
    return org_a


def test_a_new_organization_dashboard_says_what_to_do_next(client_for, org_a_clean):
    response = client_for("a", "owner").get(f"/o/{org_a_clean.slug}/")
    assert response.status_code == 200
    text = text_of(response)
    assert "No conversations yet. Start a chat" in text
    assert "No checks yet. Check a company" in text
    assert "Nothing spent in the last 30 days." in section(response, "spend")
    assert "No unread alerts." in section(response, "alerts")
    assert "No active API keys." in section(response, "team")
    assert "<svg" not in response.content.decode()
    assert section(response, "credits").startswith("Credit balance 250 0 spent this month")


def test_the_dashboard_shows_money_limits_and_recent_work(client_for, tenant_world, org_a_clean):
    org, owner = org_a_clean, tenant_world["a"]["owner"]
    add_threads(org, owner, 7)
    add_threads(org, tenant_world["a"]["member"], 2, prefix="Private")  # someone else's: never listed
    add_checks(org, owner, 6, alerts=3)
    with schema_context(org.schema_name):
        ChecksMonth.objects.create(month=month_of(), requested=12, quota=200)
    add_usage(org, days=40)  # 40 days of 1.5 credits: 45 in the chart's 30 days
    ApiKey.objects.create(organization=org, name="ci", prefix=uuid.uuid4().hex[:12], key_hash="x", created_by=owner)
    ApiKey.objects.create(organization=org, name="old", prefix=uuid.uuid4().hex[:12], key_hash="x",
                          revoked_at=timezone.now())

    response = client_for("a", "owner").get(f"/o/{org.slug}/")
    assert response.status_code == 200
    html = response.content.decode()

    this_month = Decimal("1.5") * timezone.localdate().day
    assert section(response, "credits") == (
        f"Credit balance 250 {this_month.normalize():f} spent this month Billing and top-ups")
    figures = section(response, "spend")
    assert "45 credits in the last 30 days" in figures
    assert html.count('<rect ') == 30
    assert re.search(r'<svg[^>]+role="img"[^>]+aria-labelledby="spend-chart-title"', html)
    assert "<title id=\"spend-chart-title\">Bar chart: credits spent per day in the last 30 days, 45 in all." in html
    assert 'style="' not in html  # CSP: no inline styles

    plan = section(response, "plan")
    assert "Plan: Starter" in plan
    assert "Seats 4 of 5 used" in plan  # org A's owner, admin, member and viewer
    assert "CNPJ checks this month 12 of 200 used" in plan
    assert "20 a minute per member" in plan

    threads = section(response, "recent-threads")
    assert re.findall(r"Talk \d", threads) == ["Talk 6", "Talk 5", "Talk 4", "Talk 3", "Talk 2"]
    assert "Private" not in threads
    assert re.findall(r"Supplier \d", section(response, "recent-checks")) == [
        "Supplier 5", "Supplier 4", "Supplier 3", "Supplier 2", "Supplier 1"]
    alerts = section(response, "alerts")
    assert "3" in alerts and "Read 3 unread alerts" in alerts
    assert f'href="/o/{org.slug}/checks/alerts/"' in html

    team = section(response, "team")
    assert "4 members" in team and "1 active API key" in team
    assert f'href="/o/{org.slug}/settings/members/"' in html
    assert f'href="/o/{org.slug}/settings/api-keys/"' in html


def test_members_and_viewers_do_not_see_the_team_block(client_for, org_a_clean):
    for role in ("member", "viewer"):
        response = client_for("a", role).get(f"/o/{org_a_clean.slug}/")
        assert response.status_code == 200
        html = response.content.decode()
        assert 'data-testid="team"' not in html
        assert "/settings/api-keys/" not in html
        assert 'data-testid="plan"' in html  # the rest is there
    assert 'data-testid="team"' in client_for("a", "admin").get(f"/o/{org_a_clean.slug}/").content.decode()


def test_a_member_of_another_organization_gets_404(client_for, org_a, org_b):
    assert client_for("b", "owner").get(f"/o/{org_a.slug}/").status_code == 404
    assert client_for("a", "viewer").get(f"/o/{org_b.slug}/").status_code == 404


def _dashboard_queries(client, org) -> int:
    connection.set_schema_to_public()
    connection.cursor().execute("SELECT 1")  # in public, as after any request: the count starts from there
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/o/{org.slug}/")
    assert response.status_code == 200
    return len(queries)


def test_the_dashboard_costs_the_same_queries_whatever_the_organization_holds(client_for, tenant_world,
                                                                                org_a_clean):
    org, owner = org_a_clean, tenant_world["a"]["owner"]
    client = client_for("a", "owner")
    add_threads(org, owner, 3)
    add_checks(org, owner, 3, alerts=2)
    add_usage(org, days=3)
    client.get(f"/o/{org.slug}/")  # the session and caches warm, as for anyone who signed in a while ago
    some = _dashboard_queries(client, org)
    assert some <= MAX_QUERIES

    add_threads(org, owner, 30, prefix="More")
    add_checks(org, owner, 30, alerts=20)
    add_usage(org, days=30, keys=4)
    assert _dashboard_queries(client, org) == some


def test_the_dashboard_in_portuguese(client_for, tenant_world, org_a_clean):
    from accounts.models import User

    owner = tenant_world["a"]["owner"]
    add_threads(org_a_clean, owner, 1)
    User.objects.filter(pk=owner.pk).update(language="pt-br")  # a signed-in user's language wins
    response = client_for("a", "owner").get(f"/o/{org_a_clean.slug}/")
    assert 'lang="pt-br"' in response.content.decode()
    text = text_of(response)
    with translation.override("pt-br"):
        for phrase in ("Recent conversations", "No checks yet.", "Check a company", "Credit balance",
                       "Nothing spent in the last 30 days."):
            translated = translation.gettext(phrase)
            assert translated != phrase, f"{phrase!r} has no pt_BR translation"
            assert translated in text
