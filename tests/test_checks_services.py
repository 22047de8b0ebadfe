"""Checks end to end in process: targets, the state machine, the shared cache, billing and quotas,
reports with signals, monitoring alerts and retention, against the local fake registries."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.utils import timezone
from django_tenants.utils import schema_context

from billing.ledger import credit_debit
from billing.models import BillingAccount, CreditReservation, Plan, UsageEvent
from checks.cache import cache_stats, cached_lookup
from checks.models import Alert, Check, Report, Target
from checks.services import (
    CheckRefused,
    check_request,
    check_run,
    checks_reap,
    monitoring_run,
    report_write,
    reports_purge,
    target_add,
)

from .fake_registries import PROVIDERS, RATE_LIMIT, SERVER_ERROR

pytestmark = pytest.mark.django_db

FOUND = "19131243000197"  # the sample company (BrasilAPI / minha-receita / cnpj.ws payloads)
ABSENT = "11222333000181"  # valid, in no registry






def balance(org) -> Decimal:
    return BillingAccount.objects.get(pk=org.pk).credits


def request_and_run(org, cnpj, *, capture, **kwargs) -> Check:
    with schema_context(org.schema_name):
        target = target_add(cnpj=cnpj, label=kwargs.pop("label", ""))
        with capture(execute=True):  # on commit, the task runs (eagerly, in process)
            check = check_request(organization=org, target=target, **kwargs)
        check.refresh_from_db()
        return check


def test_a_found_company_gets_a_report_billed_at_the_lookup_price(registries, funded,
                                                                  django_capture_on_commit_callbacks):
    org_a, _org_b = funded
    check = request_and_run(org_a, "19.131.243/0001-97", capture=django_capture_on_commit_callbacks)
    assert check.status == Check.Status.SUCCEEDED and not check.cache_hit and check.provider
    assert balance(org_a) == Decimal("495")  # the 5-credit lookup
    with schema_context(org_a.schema_name):
        report = Report.objects.get(check_run=check)
        target = Target.objects.get(cnpj=FOUND)
        assert report.data["cnpj"] == FOUND and report.risk_level in ("LOW", "MEDIUM", "HIGH", "BLOCKER")
        assert all({"code", "severity", "evidence", "texts"} <= set(s) for s in report.signals)
        assert (target.status, target.risk_level) == ("succeeded", report.risk_level) and target.company_name
        assert list(check.attempts.values_list("provider", "outcome"))[-1] == (check.provider, "found")
    usage = UsageEvent.objects.get(request_id=check.billing_key)
    assert (usage.kind, usage.key, usage.units, usage.credits) == ("check", "cnpj", 1, Decimal("5"))
    assert CreditReservation.objects.get(key=check.billing_key).status == "settled"


def test_another_organization_is_answered_from_the_cache_at_once_at_the_cached_price(
        registries, funded, django_capture_on_commit_callbacks):
    org_a, org_b = funded
    request_and_run(org_a, FOUND, capture=django_capture_on_commit_callbacks)
    asked = sum(registries.counts().values())
    with schema_context(org_b.schema_name):
        target = target_add(cnpj=FOUND)
        check = check_request(organization=org_b, target=target)  # no task: answered in the request
        assert check.status == Check.Status.SUCCEEDED and check.cache_hit
        assert Report.objects.filter(target=target).count() == 1
    assert sum(registries.counts().values()) == asked  # no registry asked again
    assert balance(org_b) == Decimal("499")
    assert UsageEvent.objects.get(request_id=check.billing_key).key == "cnpj_cached"


def test_refresh_bypasses_the_cache(registries, funded, django_capture_on_commit_callbacks):
    org_a, _ = funded
    request_and_run(org_a, FOUND, capture=django_capture_on_commit_callbacks)
    asked = registries.count("brasilapi")  # cnpj.ws does not have this company; BrasilAPI answers
    check = request_and_run(org_a, FOUND, capture=django_capture_on_commit_callbacks, refresh=True)
    assert check.status == Check.Status.SUCCEEDED and not check.cache_hit
    assert registries.count("brasilapi") == asked + 1


def test_a_company_in_no_registry_is_not_found_and_cached_as_such(registries, funded,
                                                                  django_capture_on_commit_callbacks):
    org_a, org_b = funded
    check = request_and_run(org_a, ABSENT, capture=django_capture_on_commit_callbacks)
    assert check.status == Check.Status.NOT_FOUND
    with schema_context(org_a.schema_name):
        assert not Report.objects.filter(target__cnpj=ABSENT).exists()
    again = request_and_run(org_b, ABSENT, capture=django_capture_on_commit_callbacks)
    assert again.status == Check.Status.NOT_FOUND and again.cache_hit  # the negative cache


def test_every_registry_rate_limited_puts_the_check_back_in_the_queue(registries, funded):
    org_a, _ = funded
    for provider in PROVIDERS:
        registries.fail(provider, RATE_LIMIT, retry_after=30)
    with schema_context(org_a.schema_name):
        check = check_request(organization=org_a, target=target_add(cnpj=FOUND), enqueue=False)
        outcome = check_run(check.pk)
        check.refresh_from_db()
        assert outcome.retry_in and outcome.retry_in >= 1 and check.status == Check.Status.PENDING
        assert check.run_after > timezone.now()
        assert check_run(check.pk).retry_in  # still throttled: the cooldowns hold, nobody was asked
    assert CreditReservation.objects.get(key=check.billing_key).status == "open"


def test_failing_registries_fail_the_check_after_its_tries_and_release_the_hold(registries, funded, settings):
    org_a, _ = funded
    settings.CHECKS_MAX_RUNS = 2
    for provider in PROVIDERS:
        registries.fail(provider, SERVER_ERROR, times=None)
    with schema_context(org_a.schema_name):
        check = check_request(organization=org_a, target=target_add(cnpj=FOUND), enqueue=False)
        assert balance(org_a) == Decimal("495")  # held
        first = check_run(check.pk)
        assert first.status == Check.Status.PENDING and first.retry_in >= 5  # backoff
        second = check_run(check.pk)
        check.refresh_from_db()
    assert second.status == check.status == Check.Status.FAILED and check.error
    assert balance(org_a) == Decimal("500")  # released
    assert not UsageEvent.objects.filter(request_id=check.billing_key).exists()


def test_a_check_already_running_or_done_is_not_run_again(registries, funded, django_capture_on_commit_callbacks):
    org_a, _ = funded
    check = request_and_run(org_a, FOUND, capture=django_capture_on_commit_callbacks)
    asked = sum(registries.counts().values())
    with schema_context(org_a.schema_name):
        assert check_run(check.pk).status == Check.Status.SUCCEEDED  # a redelivered task
    assert sum(registries.counts().values()) == asked
    assert UsageEvent.objects.filter(request_id=check.billing_key).count() == 1


def test_invalid_cnpjs_are_refused_with_their_reason(funded):
    org_a, _ = funded
    with schema_context(org_a.schema_name):
        for raw, code in [("19.131.243/0001-98", "cnpj_checksum"), ("1913124300019", "cnpj_length"),
                          ("１９１３１２４３０００１９７", "cnpj_format")]:
            with pytest.raises(CheckRefused) as refused:
                target_add(cnpj=raw)
            assert refused.value.code == code and refused.value.message


def test_the_monthly_quota_is_enforced_with_a_clear_message(registries, funded):
    org_a, _ = funded
    Plan.objects.filter(code="starter").update(checks_per_month=1)
    with schema_context(org_a.schema_name):
        check_request(organization=org_a, target=target_add(cnpj=FOUND), enqueue=False)
        with pytest.raises(CheckRefused) as refused:
            check_request(organization=org_a, target=target_add(cnpj=ABSENT), enqueue=False)
    assert refused.value.code == "quota_exceeded" and refused.value.status == 402
    assert "1 checks a month" in refused.value.message


def test_not_enough_credits_is_refused_and_nothing_is_left_behind(registries, funded):
    org_a, _ = funded
    credit_debit(organization=org_a, amount=balance(org_a) - Decimal("2"), key=f"drain-{uuid.uuid4()}")
    with schema_context(org_a.schema_name):
        target = target_add(cnpj=FOUND)
        with pytest.raises(CheckRefused) as refused:
            check_request(organization=org_a, target=target, enqueue=False)
        assert not Check.objects.filter(target=target).exists()
    assert refused.value.code == "insufficient_credits"


def test_concurrent_lookups_of_one_cnpj_share_one_upstream_call(registries):
    results = []

    def lookup():
        results.append(cached_lookup(FOUND))

    threads = [threading.Thread(target=lookup) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.result.outcome for r in results] == ["found"] * 6
    assert registries.count("brasilapi") == 1 and registries.count("cnpjws") == 1  # one lookup: 404, then found
    assert sum(not r.hit for r in results) == 1
    stats = cache_stats()
    assert stats["hits"] >= 5 and stats["misses"] >= 1


def _changed(record: dict, **changes) -> dict:
    return {**record, **changes}


def test_a_monitored_target_whose_status_changes_raises_an_alert_and_emails_admins(
        registries, funded, django_capture_on_commit_callbacks):
    org_a, _ = funded
    check = request_and_run(org_a, FOUND, capture=django_capture_on_commit_callbacks)
    with schema_context(org_a.schema_name):
        target = Target.objects.get(cnpj=FOUND)
        target.schedule = Target.Schedule.DAILY
        target.save(update_fields=["schedule"])
        first = Report.objects.get(check_run=check)
        closed = _changed(first.data, situacao={"code": 8, "label": "BAIXADA", "since": "2026-10-01",
                                                "motivo": None})
        with django_capture_on_commit_callbacks(execute=True):
            report = report_write(target=target, check=None, record=closed, provider="cnpjws")
        alert = Alert.objects.get(report=report)
    assert "status" in alert.kinds and "risk" in alert.kinds and report.risk_level == "BLOCKER"
    assert alert.summary["risk"] == [first.risk_level, "BLOCKER"]
    assert mail.outbox and org_a.name in mail.outbox[-1].body and "/checks/targets/" in mail.outbox[-1].body


def test_monitoring_queues_due_targets_only_and_schedules_the_next(registries, funded):
    org_a, _ = funded
    with schema_context(org_a.schema_name):
        due = target_add(cnpj=FOUND, schedule=Target.Schedule.WEEKLY)
        later = target_add(cnpj=ABSENT, schedule=Target.Schedule.DAILY)
        Target.objects.filter(pk=due.pk).update(next_check_at=timezone.now() - timedelta(minutes=1))
        assert monitoring_run(organization=org_a) == 1
        check = Check.objects.get(target=due)
        assert (check.source, check.refresh) == ("monitor", True)
        due.refresh_from_db()
        assert due.next_check_at > timezone.now() + timedelta(days=6)
        assert not Check.objects.filter(target=later).exists()


def test_retention_purges_old_reports_but_keeps_each_targets_latest(registries, funded,
                                                                     django_capture_on_commit_callbacks):
    org_a, _ = funded
    check = request_and_run(org_a, FOUND, capture=django_capture_on_commit_callbacks)
    with schema_context(org_a.schema_name):
        target = Target.objects.get(cnpj=FOUND)
        latest = Report.objects.get(check_run=check)
        old = report_write(target=target, check=None, record=latest.data, provider="cnpjws")
        Report.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=400))
        Report.objects.filter(pk=latest.pk).update(created_at=timezone.now() - timedelta(days=500))
        newest = report_write(target=target, check=None, record=latest.data, provider="cnpjws")
        assert reports_purge() == 2
        assert list(Report.objects.filter(target=target).values_list("pk", flat=True)) == [newest.pk]


def test_lost_checks_are_requeued(registries, funded):
    org_a, _ = funded
    with schema_context(org_a.schema_name):
        check = check_request(organization=org_a, target=target_add(cnpj=FOUND), enqueue=False)
        Check.objects.filter(pk=check.pk).update(created_at=timezone.now() - timedelta(hours=1))
        assert checks_reap() == 1  # queued again (and run eagerly here)
        check.refresh_from_db()
    assert check.status == Check.Status.SUCCEEDED


def test_asking_again_while_a_check_is_queued_returns_it_unbilled(registries, funded):
    org_a, _ = funded
    with schema_context(org_a.schema_name):
        target = target_add(cnpj=FOUND)
        first = check_request(organization=org_a, target=target, enqueue=False)
        again = check_request(organization=org_a, target=target, source=Check.Source.API, enqueue=False)
        monitor = check_request(organization=org_a, target=target, source=Check.Source.MONITOR, enqueue=False)
    assert again.pk == first.pk and monitor.pk != first.pk  # monitoring asks for fresh data anyway
    assert balance(org_a) == Decimal("490")  # two holds, not three


def test_operators_read_the_cache_counters(registries):
    from io import StringIO

    from django.core.management import call_command

    cached_lookup(FOUND)  # a miss: the registries answer, the cache keeps it
    cached_lookup(FOUND)  # a hit
    cached_lookup(FOUND)  # a hit
    out = StringIO()
    call_command("checks_cache_stats", stdout=out)
    assert out.getvalue().strip() == "hits 2  misses 1  hit ratio 66.7%"
