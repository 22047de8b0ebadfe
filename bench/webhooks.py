"""Outbound webhooks benchmark: the outbox's added cost per change, and delivery throughput.

    DATABASE_URL=... REDIS_URL=... .venv/bin/python -m pytest -q -s -p no:cacheprovider bench/webhooks.py

Runs in pytest's own test database (created and dropped by pytest-django; the database of
DATABASE_URL is never written) with the session organizations of conftest.py, in a transaction
that is rolled back. Figures (printed; recorded in bench/RESULTS.md):

  1. a change (one audit row in a transaction, as services write) with no endpoint, then with the
     outbox write (`webhook_event_emit`: the message, one delivery, the on-commit queueing) when
     nobody listens (one SELECT) and when one endpoint listens; p50/p95 per change
  2. deliveries per second made one after another by one thread (what one solo worker does per
     task, without the broker's round trip) to a local receiver: signing, SSRF vetting, the
     HTTP call, the attempt's rows
  3. (`-k worker`) events per second delivered end to end through a REAL Celery worker (a subprocess on
     the `webhooks` queue, threads pool, --concurrency=4, as tests/servers.py starts it): events committed
     in batches of 100 (the on-commit queueing to Redis), the worker's tries, a local receiver, until every
     delivery is recorded succeeded. BENCH_WEBHOOK_EVENTS (default 1000) events over BENCH_WEBHOOK_ENDPOINTS
     (default 4) endpoints, so the per-endpoint concurrency cap (2) is not what limits it. This one commits
     (the worker must see the rows) and removes what it wrote afterwards.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
from django.db import connection, transaction
from django_tenants.utils import schema_context

from billing.models import BillingAccount, Plan
from tenants.audit.services import Actor, audit_record
from tests.webhook_receiver import Receiver
from webhooks.models import WebhookAttempt, WebhookDelivery
from webhooks.services import delivery_attempt, webhook_endpoint_create, webhook_event_emit

CHANGES = 300
DELIVERIES = 300
ACTOR = Actor.system("bench")


def _timed(function, count: int) -> list[float]:
    times = []
    for index in range(count):
        started = time.perf_counter()
        function(index)
        times.append((time.perf_counter() - started) * 1000)
    return times


def _report(name: str, times: list[float]) -> None:
    ordered = sorted(times)
    print(f"{name}: n={len(times)} p50={statistics.median(ordered):.2f} ms "
          f"p95={ordered[int(len(ordered) * 0.95) - 1]:.2f} ms mean={statistics.fmean(ordered):.2f} ms")


@pytest.mark.django_db
def test_outbox_cost_and_delivery_throughput(org_a, django_capture_on_commit_callbacks):
    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="pro"))

    def change(index: int) -> None:
        with transaction.atomic():
            audit_record(organization=org_a, actor=ACTOR, action="bench.change", target_type="bench",
                         target_id=str(index))

    def change_with_event(index: int) -> None:
        with transaction.atomic():
            audit_record(organization=org_a, actor=ACTOR, action="bench.change", target_type="bench",
                         target_id=str(index))
            webhook_event_emit(organization=org_a, type="check.completed", data={"check_id": index})

    with Receiver() as receiver, django_capture_on_commit_callbacks(execute=False):
        _timed(change, 50)  # warm up
        _report("1a change, no outbox", _timed(change, CHANGES))
        _report("1b change + emit, no endpoint listens", _timed(change_with_event, CHANGES))
        webhook_endpoint_create(organization=org_a, actor=ACTOR, url=receiver.url())
        _report("1c change + emit, one endpoint listens", _timed(change_with_event, CHANGES))
        with schema_context(org_a.schema_name):
            ids = list(WebhookDelivery.objects.order_by("id").values_list("pk", flat=True))[:DELIVERIES]
            started = time.perf_counter()
            outcomes = [delivery_attempt(delivery_id=pk, number=1).status for pk in ids]
            elapsed = time.perf_counter() - started
    assert outcomes.count("succeeded") == len(ids) == len(receiver.requests)
    print(f"2 deliveries, one thread: {len(ids)} in {elapsed:.2f} s = {len(ids) / elapsed:.0f} events/s "
          f"({elapsed / len(ids) * 1000:.2f} ms each)")


def test_delivery_throughput_through_a_real_worker(tenant_world, django_db_blocker, tmp_path):
    from celery import current_app

    from tests.servers import database_url, start_celery_worker
    from webhooks.models import WebhookEndpoint, WebhookMessage

    events = int(os.environ.get("BENCH_WEBHOOK_EVENTS", "1000"))
    endpoint_count = int(os.environ.get("BENCH_WEBHOOK_ENDPOINTS", "4"))
    org = tenant_world["a"]["org"]
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    with django_db_blocker.unblock():
        assert connection.settings_dict["NAME"].startswith("test_")
        url = database_url(connection.settings_dict)
    worker = start_celery_worker(database_url=url, redis_url=redis_url, workdir=tmp_path, email_dir=tmp_path,
                                 queues="webhooks")
    eager, current_app.conf.task_always_eager = current_app.conf.task_always_eager, False  # through Redis
    with Receiver() as receiver, django_db_blocker.unblock():
        accounts = BillingAccount.objects.filter(pk=org.pk)
        plan = accounts.get().plan
        accounts.update(plan=Plan.objects.get(code="pro"))
        endpoints = [webhook_endpoint_create(organization=org, actor=ACTOR, url=receiver.url(path=f"/hook/{i}"),
                                             event_types=["webhook.test"]).endpoint for i in range(endpoint_count)]
        try:
            started = time.perf_counter()
            for first in range(0, events, 100):
                with transaction.atomic():
                    for index in range(first, min(first + 100, events)):
                        webhook_event_emit(organization=org, type="webhook.test", data={"bench": index},
                                           endpoints=[endpoints[index % endpoint_count]])
            queued = time.perf_counter() - started
            with schema_context(org.schema_name):
                mine = WebhookDelivery.objects.filter(endpoint__in=endpoints)
                deadline = time.monotonic() + 600
                while mine.filter(status="succeeded").count() < events and time.monotonic() < deadline:
                    time.sleep(0.1)
                elapsed = time.perf_counter() - started
                done = mine.filter(status="succeeded").count()
                tries = WebhookAttempt.objects.filter(delivery__endpoint__in=endpoints).count()
            assert done == events, f"{done} of {events} delivered; worker log: {worker.process.log()[-3000:]}"
            print(f"3 through a real worker (threads x4, {endpoint_count} endpoints): {events} events in "
                  f"{elapsed:.2f} s = {events / elapsed:.0f} events/s end to end (queued in {queued:.2f} s; "
                  f"{tries} tries, {len(receiver.requests)} requests received)")
        finally:
            current_app.conf.task_always_eager = eager
            worker.process.stop()
            with schema_context(org.schema_name):
                messages = list(WebhookDelivery.objects.filter(endpoint__in=endpoints)
                                .values_list("message_id", flat=True))
                WebhookEndpoint.objects.filter(pk__in=[e.pk for e in endpoints]).delete()
                WebhookMessage.objects.filter(pk__in=messages).delete()
            accounts.update(plan=plan)
