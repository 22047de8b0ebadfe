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
"""

from __future__ import annotations

import statistics
import time

import pytest
from django.db import transaction
from django_tenants.utils import schema_context

from billing.models import BillingAccount, Plan
from tenants.audit.services import Actor, audit_record
from tests.webhook_receiver import Receiver
from webhooks.models import WebhookDelivery
from webhooks.services import delivery_attempt, webhook_endpoint_create, webhook_event_emit

pytestmark = pytest.mark.django_db

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
