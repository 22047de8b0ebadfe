"""A check answered from the shared cache: one read and one write (issue 12, item 8), the same rows as any
other check, the monthly quota kept in one row per month, and money and quota exact under concurrency
(real PostgreSQL, committed organizations, threads)."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import schema_context

from billing.ledger import credit_debit, credit_grant
from billing.models import BillingAccount, CreditEntry, Plan, UsageEvent
from billing.selectors import ledger_sum
from checks.cache import cached_lookup
from checks.models import Alert, Check, ChecksMonth, Report, Target
from checks.services import (
    CACHE_HIT,
    REQUEST_READ,
    CheckRefused,
    check_cancel,
    check_request,
    checks_settings,
    checks_used_this_month,
    month_of,
    target_add,
)
from tenants.audit.services import Actor
from tenants.services import organization_create

from .orgs import organization_drop
from .test_db_pool import psycopg_watch, wait_until_waiting_on_the_lock

FOUND = "19131243000197"  # the sample company: every fake registry but cnpj.ws knows it
ABSENT = "11222333000181"  # valid, in no registry
CACHED = Decimal("1")  # billing's seeded cached-check price


def balance(org) -> Decimal:
    return BillingAccount.objects.get(pk=org.pk).credits


def used(org) -> int:
    with schema_context(org.schema_name):
        return checks_used_this_month()


def written(org) -> dict[str, int]:
    """What checks have written for `org`: rows in its schema and its ledger and usage."""
    with schema_context(org.schema_name):
        rows = {"checks": Check.objects.count(), "reports": Report.objects.count(), "alerts": Alert.objects.count()}
    return {**rows, "usage": UsageEvent.objects.filter(organization_id=org.pk, kind="check").count(),
            "debits": CreditEntry.objects.filter(organization_id=org.pk, idempotency_key__startswith="check:").count()}


# ---------------------------------------------------------------- in the test's transaction


@pytest.mark.django_db
def test_a_cache_hit_is_one_read_and_one_write_with_every_row_of_a_check(registries, funded, tenant_world):
    org_a, _ = funded
    owner = tenant_world["a"]["owner"]
    cached_lookup(FOUND)  # another organization's lookup filled the shared cache
    before = balance(org_a)
    with schema_context(org_a.schema_name):
        target = target_add(cnpj=FOUND, label="supplier")
        checks_settings()  # the organization's settings row exists (its first check makes it otherwise)
        used_before = checks_used_this_month()
        with CaptureQueriesContext(connection) as first:
            check_request(organization=org_a, target=target, user=owner)
        # The first time on a connection, each statement is prepared; then it is one read and one write.
        assert [q["sql"].split(" AS ")[0] for q in first.captured_queries if q["sql"].startswith("PREPARE")] in (
            [], [f"PREPARE {REQUEST_READ.name}", f"PREPARE {CACHE_HIT.name}"])
        with CaptureQueriesContext(connection) as queries:
            check = check_request(organization=org_a, target=target, user=owner, source=Check.Source.API,
                                  api_key_id=42)
        assert [q["sql"].split("(")[0] for q in queries.captured_queries] == [
            f"EXECUTE {REQUEST_READ.name}", f"EXECUTE {CACHE_HIT.name}"], queries.captured_queries

        stored = Check.objects.get(pk=check.pk)
        assert (stored.status, stored.cache_hit, stored.credits, stored.source) == ("succeeded", True, CACHED, "api")
        assert (stored.requested_by_id, stored.api_key_id, stored.billing_key) == (owner.pk, 42, check.billing_key)
        assert stored.provider and stored.started_at and stored.finished_at
        report = Report.objects.get(check_run=stored)
        assert report.data["cnpj"] == FOUND and report.provider == stored.provider
        assert report.risk_level in ("LOW", "MEDIUM", "HIGH", "BLOCKER") and report.fetched_at
        assert all({"code", "severity", "evidence", "texts"} <= set(s) for s in report.signals)
        target.refresh_from_db()
        assert (target.status, target.risk_level, target.last_checked_at) == ("succeeded", report.risk_level,
                                                                              stored.finished_at)
        assert target.company_name == report.data["razao_social"]
        assert checks_used_this_month() == used_before + 2
    assert balance(org_a) == before - 2 * CACHED
    entry = CreditEntry.objects.get(idempotency_key=check.billing_key)
    assert (entry.kind, entry.amount, entry.balance_after, entry.created_by_id) == ("debit", -CACHED, balance(org_a),
                                                                                   owner.pk)
    assert entry.description == "Check 19.131.243/0001-97 (cached)"
    usage = UsageEvent.objects.get(request_id=check.billing_key)
    assert (usage.organization_id, usage.kind, usage.key, usage.units, usage.credits, usage.per_unit) == (
        org_a.pk, "check", "cnpj_cached", 1, CACHED, CACHED)
    assert (usage.user_id, usage.api_key_id) == (owner.pk, 42)


@pytest.mark.django_db
def test_a_company_known_absent_is_answered_from_the_cache_without_a_report(registries, funded):
    org_a, org_b = funded
    cached_lookup(ABSENT)  # the registries said not found: cached as such
    with schema_context(org_b.schema_name):
        target = target_add(cnpj=ABSENT)
        used_before = checks_used_this_month()
        check = check_request(organization=org_b, target=target)
        assert checks_used_this_month() == used_before + 1
        target.refresh_from_db()
        assert (check.status, check.cache_hit) == ("not_found", True)
        assert not Report.objects.filter(target=target).exists()
        assert (target.status, target.risk_level, target.company_name) == ("not_found", "", "")
    assert UsageEvent.objects.get(request_id=check.billing_key).key == "cnpj_cached"
    assert balance(org_b) == Decimal("499")


@pytest.mark.django_db
def test_a_monitored_target_that_changed_raises_its_alert_from_a_cache_hit(registries, funded,
                                                                           django_capture_on_commit_callbacks):
    org_a, _ = funded
    cached_lookup(FOUND)
    with schema_context(org_a.schema_name):
        target = target_add(cnpj=FOUND, schedule=Target.Schedule.DAILY)
        first = check_request(organization=org_a, target=target)
        closed = Report.objects.get(check_run_id=first.pk)
        # The registry had said the company was closed last time; the cache now says it is active.
        Report.objects.filter(pk=closed.pk).update(
            data={**closed.data, "situacao": {"code": 8, "label": "BAIXADA", "since": "2026-10-01", "motivo": None}},
            risk_level="BLOCKER")
        with django_capture_on_commit_callbacks(execute=True):
            again = check_request(organization=org_a, target=target)
        alert = Alert.objects.get(report__check_run_id=again.pk)
    assert alert.previous_report_id == closed.pk and {"status", "risk"} <= set(alert.kinds)
    assert alert.summary["risk"][0] == "BLOCKER"
    assert mail.outbox and org_a.name in mail.outbox[-1].body


@pytest.mark.django_db
def test_a_cache_hit_the_balance_does_not_cover_writes_nothing(registries, funded):
    org_a, _ = funded
    cached_lookup(FOUND)
    credit_debit(organization=org_a, amount=balance(org_a) - Decimal("0.5"), key=f"drain-{uuid.uuid4()}")
    with schema_context(org_a.schema_name):
        target = target_add(cnpj=FOUND)
        before = (written(org_a), used(org_a), balance(org_a))
        with pytest.raises(CheckRefused) as refused:
            check_request(organization=org_a, target=target)
        target.refresh_from_db()
        assert target.status == "" and target.last_checked_at is None
    assert refused.value.code == "insufficient_credits" and refused.value.status == 402
    assert "costs 1 credits and the balance is 0.5" in refused.value.message
    assert (written(org_a), used(org_a), balance(org_a)) == before and before[2] == Decimal("0.5")


@pytest.mark.django_db
def test_a_cache_hit_over_the_monthly_quota_writes_nothing(registries, funded):
    org_a, _ = funded
    limit = used(org_a) + 2
    Plan.objects.filter(code="starter").update(checks_per_month=limit)  # rolled back with the test
    cached_lookup(FOUND)
    with schema_context(org_a.schema_name):
        target = target_add(cnpj=FOUND)
        check_request(organization=org_a, target=target)
        check_request(organization=org_a, target=target)
        before = (written(org_a), balance(org_a))
        with pytest.raises(CheckRefused) as refused:
            check_request(organization=org_a, target=target)
    assert refused.value.code == "quota_exceeded" and refused.value.status == 402
    assert f"{limit} checks a month and {limit} have been used" in refused.value.message
    assert (written(org_a), balance(org_a), used(org_a)) == (*before, limit)


@pytest.mark.django_db
def test_a_cancelled_check_gives_its_place_in_the_quota_back(registries, funded):
    org_a, _ = funded
    with schema_context(org_a.schema_name):
        used_before = checks_used_this_month()
        check = check_request(organization=org_a, target=target_add(cnpj=ABSENT), enqueue=False)  # queued
        assert checks_used_this_month() == used_before + 1
        assert check_cancel(check)
        assert checks_used_this_month() == used_before
        assert not check_cancel(check)  # already cancelled: nothing given back twice
        assert checks_used_this_month() == used_before


@pytest.mark.django_db
def test_organizations_answered_in_turn_on_one_connection_write_in_their_own_schemas(registries, funded):
    """The two statements are prepared on the connection; each organization's rows still land in its schema."""
    org_a, org_b = funded
    cached_lookup(FOUND)
    targets = {}
    used_before = [used(org_a), used(org_b)]
    for org in (org_a, org_b):
        with schema_context(org.schema_name):
            targets[org.pk] = target_add(cnpj=FOUND)
    checks = []
    for org in (org_a, org_b, org_a, org_b, org_a):
        with schema_context(org.schema_name):
            checks.append((org, check_request(organization=org, target=targets[org.pk])))
    for org, check in checks:
        with schema_context(org.schema_name):
            assert Check.objects.filter(pk=check.pk, billing_key=check.billing_key).exists()
            assert Report.objects.filter(check_run_id=check.pk, target=targets[org.pk]).exists()
    assert [used(org_a), used(org_b)] == [used_before[0] + 3, used_before[1] + 2]
    assert (balance(org_a), balance(org_b)) == (Decimal("497"), Decimal("498"))


# ---------------------------------------------------------------- concurrency, real PostgreSQL

WORKERS = 32


@pytest.fixture
def racing_org(tenant_world, django_db_blocker, registries):
    """A committed organization (other connections see it) on a plan of its own, the sample company cached.

    `make(quota, credits)` sets the plan's monthly checks and makes the balance exactly `credits`."""
    made = []

    def make(*, quota: int | None, credits: Decimal):
        with django_db_blocker.unblock():
            plan = Plan.objects.create(code=f"race-{uuid.uuid4().hex[:8]}", name="Race", checks_per_month=quota,
                                       requests_per_minute=60, tokens_per_minute=10_000, max_upload_mb=5,
                                       audit_retention_days=30, is_public=False)
            org = organization_create(user=tenant_world["b"]["owner"], name=f"Checks race {uuid.uuid4().hex[:6]}",
                                      actor=Actor.system("tests"))
            made.append((org, plan))
            BillingAccount.objects.filter(pk=org.pk).update(plan=plan)
            gap = credits - balance(org)
            if gap > 0:
                credit_grant(organization=org, amount=gap, key=f"{org.pk}:top-up")
            elif gap < 0:
                credit_debit(organization=org, amount=-gap, key=f"{org.pk}:drain")
            cached_lookup(FOUND)
            with schema_context(org.schema_name):
                target = target_add(cnpj=FOUND)
        return org, target

    yield make
    with django_db_blocker.unblock():
        for org, plan in made:
            organization_drop(org)
            plan.delete()


def _in_threads(django_db_blocker, org, jobs: int, job) -> list:
    barrier = threading.Barrier(jobs)

    def run(_):
        try:
            with schema_context(org.schema_name):
                barrier.wait(timeout=30)
                return job()
        except CheckRefused as refused:
            return refused
        finally:
            connections.close_all()

    with django_db_blocker.unblock(), ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(run, range(jobs)))


def test_racing_cache_hits_never_go_over_the_monthly_quota(racing_org, django_db_blocker):
    org, target = racing_org(quota=10, credits=Decimal("1000"))
    results = _in_threads(django_db_blocker, org, WORKERS, lambda: check_request(organization=org, target=target))
    checks = [r for r in results if isinstance(r, Check)]
    refused = [r for r in results if isinstance(r, CheckRefused)]
    assert len(checks) == 10 and len(refused) == WORKERS - 10, results
    assert {r.code for r in refused} == {"quota_exceeded"}
    with django_db_blocker.unblock():
        assert used(org) == 10
        assert written(org) == {"checks": 10, "reports": 10, "alerts": 0, "usage": 10, "debits": 10}
        assert balance(org) == Decimal("990") == ledger_sum(organization=org)


def test_racing_cache_hits_never_overspend(racing_org, django_db_blocker):
    org, target = racing_org(quota=None, credits=12 * CACHED)
    results = _in_threads(django_db_blocker, org, WORKERS, lambda: check_request(organization=org, target=target))
    checks = [r for r in results if isinstance(r, Check)]
    refused = [r for r in results if isinstance(r, CheckRefused)]
    assert len(checks) == 12 and {r.code for r in refused} == {"insufficient_credits"}, results
    with django_db_blocker.unblock():
        assert balance(org) == Decimal("0") == ledger_sum(organization=org)
        assert written(org) == {"checks": 12, "reports": 12, "alerts": 0, "usage": 12, "debits": 12}
        assert used(org) == 12  # refused checks took no place


def test_a_cache_hit_that_loses_the_last_place_to_another_check_writes_nothing(racing_org, django_db_blocker):
    """The check reads one place left; before it writes, another check takes it (a transaction holding the
    month's row). Its statement, already past the balance, fails on the quota and leaves nothing."""
    org, target = racing_org(quota=3, credits=Decimal("100"))
    with django_db_blocker.unblock():
        with schema_context(org.schema_name):
            ChecksMonth.objects.create(month=month_of(), requested=2, quota=3)
        before = (written(org), balance(org))
    outcome = []

    def request():
        try:
            with schema_context(org.schema_name):
                outcome.append(check_request(organization=org, target=target))
        except CheckRefused as refused:
            outcome.append(refused)
        finally:
            connections.close_all()

    with psycopg_watch() as other, django_db_blocker.unblock():
        with other.transaction():
            other.execute(f'UPDATE "{org.schema_name}".checks_checksmonth SET requested = requested + 1')
            thread = threading.Thread(target=request)
            thread.start()
            wait_until_waiting_on_the_lock(other)
        thread.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], CheckRefused), outcome
    assert outcome[0].code == "quota_exceeded" and "3 checks a month" in outcome[0].message
    with django_db_blocker.unblock():
        assert (written(org), balance(org), used(org)) == (*before, 3)
        assert balance(org) == ledger_sum(organization=org)
