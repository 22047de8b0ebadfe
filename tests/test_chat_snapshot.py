"""The per-process snapshots of what chat knows about an organization (chat.snapshot): what they hold, what one
costs to build, and when a change reaches them."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import BillingAccount, Plan
from chat import snapshot
from core.redis_clients import redis_client

pytestmark = pytest.mark.django_db


def test_the_catalog_is_read_once_and_each_organization_adds_its_plan_and_keys(org_a, org_b):
    with CaptureQueriesContext(connection) as first:
        a = snapshot.org_config_now(org_a.pk)
    with CaptureQueriesContext(connection) as second:
        b = snapshot.org_config_now(org_b.pk)
    with CaptureQueriesContext(connection) as again:
        snapshot.org_config_now(org_a.pk)
    assert len(second) == 2, [query["sql"][:80] for query in second.captured_queries]  # account with plan, keys
    assert len(first) > len(second) and len(again) == 0
    assert a.names is b.names  # one catalog
    assert "demo/prumo-demo" in a.options and a.entitlements.messages_per_minute > 0


def test_a_plan_change_reaches_this_process_at_once_and_the_others_within_a_second(
        org_a, monkeypatch, django_capture_on_commit_callbacks):
    account = BillingAccount.objects.get(pk=org_a.pk)
    before = snapshot.org_config_now(org_a.pk).entitlements.messages_per_minute
    business = Plan.objects.get(code="business")
    assert business.messages_per_minute != before
    with django_capture_on_commit_callbacks(execute=True):
        account.plan = business
        account.save()  # chat.signals: a new version, on commit
    assert snapshot.org_config_now(org_a.pk).entitlements.messages_per_minute == business.messages_per_minute

    # Another process's change: a new version in Redis and a row this process has not seen.
    Plan.objects.filter(pk=business.pk).update(messages_per_minute=business.messages_per_minute + 7)
    redis_client().set(snapshot.CONFIG_VERSION_KEY, "another-process")
    assert snapshot.org_config_now(org_a.pk).entitlements.messages_per_minute == business.messages_per_minute
    monkeypatch.setattr(snapshot, "VERSION_READ_SECONDS", 0)  # a second later
    assert snapshot.org_config_now(org_a.pk).entitlements.messages_per_minute == business.messages_per_minute + 7
