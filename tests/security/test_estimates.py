"""Issue 11, item 5: everything sent to a provider is held, limited and billed.

/v1 runs in this process (real PostgreSQL and Redis) against a fake OpenAI that reports the usage
each test chooses. `tools` and `response_format` are capped and counted in the estimate that the
tokens-per-minute limit and the credit hold use; usage beyond the hold is debited as its own ledger
entry, as far as the balance covers it, and what it cannot cover is raised (audit event, warning).
"""

from __future__ import annotations

import json
import logging
from decimal import Decimal

import pytest
from django_tenants.utils import schema_context

from billing.ledger import credit_settle
from billing.models import BillingAccount, CreditEntry, CreditReservation, UsageEvent
from billing.selectors import ledger_sum
from chat.snapshot import org_config_bump
from core.redis_clients import redis_client

from ..fake_llm import Answer, FakeOpenAI
from ..orgs import organization_drop
from .inprocess_v1 import api_organization, ask, balance_set, post, redis_forget

PRICE_IN, PRICE_OUT = Decimal("40"), Decimal("160")  # openai/gpt-4.1-mini, credits per million tokens


@pytest.fixture(scope="module")
def upstream():
    fake = FakeOpenAI(Answer(["Fine"], input_tokens=9, output_tokens=1)).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def api_org(tenant_world, django_db_blocker):
    with django_db_blocker.unblock():
        org, key = api_organization(tenant_world["a"]["owner"])
    yield org, key
    with django_db_blocker.unblock():
        organization_drop(org)


@pytest.fixture
def gateway(settings, upstream, api_org, django_db_blocker):
    providers = {name: dict(config) for name, config in settings.LLM_PROVIDERS.items()}
    providers["openai"] = {"base_url": upstream.url, "api_key": "sk-platform-key-000000000000"}
    settings.LLM_PROVIDERS = providers
    upstream.reset()
    redis_forget("chat:breaker:*", "rl:*")
    with django_db_blocker.unblock():  # the app reads snapshots on Django's ORM; the pool sees committed rows
        org_config_bump()
        balance_set(api_org[0], Decimal("1000"))
        yield api_org


def tools_of_size(size: int) -> list[dict]:
    """Function tools whose JSON is about `size` bytes (long descriptions, as a hostile body would send)."""
    tool = {"type": "function", "function": {"name": "lookup", "description": "x" * 1000,
                                             "parameters": {"type": "object", "properties": {}}}}
    count = max(1, size // len(json.dumps(tool)))
    return [{**tool, "function": {**tool["function"], "name": f"lookup_{i}"}} for i in range(count)]


def hold_of(org, response) -> CreditReservation:
    completion = response.json()["id"].removeprefix("chatcmpl-")
    return CreditReservation.objects.get(key=f"v1:{org.pk}:{completion}")


def test_an_oversized_tools_or_response_format_is_refused_naming_it(gateway, upstream, settings):
    _org, key = gateway
    tools = tools_of_size(400 * 1024)
    assert len(json.dumps(tools)) > 400 * 1024
    settings.GATEWAY_TOOLS_MAX_COUNT = 10_000  # the size, not the count, refuses this one
    response = ask(key, tools=tools)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tools" and response.json()["error"]["type"] == "invalid_request_error"
    assert "tools" in response.json()["error"]["message"]
    settings.GATEWAY_TOOLS_MAX_COUNT = 128
    response = ask(key, tools=tools_of_size(200 * 1000)[:129] * 1)
    assert response.status_code == 400 and response.json()["error"]["param"] == "tools"
    schema = {"type": "object", "description": "y" * (80 * 1024)}
    response = ask(key, response_format={"type": "json_schema", "json_schema": {"name": "big", "schema": schema}})
    assert response.status_code == 400 and response.json()["error"]["param"] == "response_format"
    assert upstream.count == 0


def test_tools_are_estimated_limited_and_held(gateway, upstream):
    org, key = gateway
    plain = ask(key, "What is the weather?")
    redis_forget("rl:*")
    tools = tools_of_size(40 * 1024)
    tool_bytes = len(json.dumps(tools, separators=(",", ":")))
    assert 35 * 1024 < tool_bytes <= 64 * 1024
    with_tools = ask(key, "What is the weather?", tools=tools, tool_choice="auto")
    assert plain.status_code == with_tools.status_code == 200
    assert upstream.last.body["tools"] == tools  # what was counted is what was sent
    # The tokens-per-minute counter took the tools' tokens (one per 4 bytes) on top of the messages'.
    taken = (int(plain.headers["x-ratelimit-remaining-tokens"])
             - int(with_tools.headers["x-ratelimit-remaining-tokens"]))
    assert taken >= tool_bytes // 4
    # And so did the hold (at the model's input price).
    extra_hold = hold_of(org, with_tools).amount - hold_of(org, plain).amount
    assert extra_hold >= Decimal(tool_bytes // 4) * PRICE_IN / 1_000_000


def test_tools_count_toward_the_context_window(gateway, settings):
    _org, key = gateway
    settings.CHAT_DEMO_MODEL_ENABLED = True
    demo = {"model": "demo/prumo-demo", "messages": [{"role": "user", "content": "Hi"}]}  # an 8,192-token window
    assert post(key, demo).status_code == 200
    response = post(key, {**demo, "tools": tools_of_size(40 * 1024)})  # ~10,000 tokens of tools
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_usage_beyond_the_hold_is_debited_once(gateway, upstream):
    org, key = gateway
    before = BillingAccount.objects.get(pk=org.pk).credits
    upstream.answer_next(Answer(["Long"], input_tokens=1_000_000, output_tokens=10))
    redis_forget("rl:*")
    response = ask(key)
    assert response.status_code == 200 and response.json()["usage"]["prompt_tokens"] == 1_000_000
    cost = (1_000_000 * PRICE_IN + 10 * PRICE_OUT) / 1_000_000
    hold = hold_of(org, response)
    assert hold.status == "settled" and hold.actual == cost and hold.amount < cost
    entries = list(CreditEntry.objects.filter(reservation=hold).order_by("id").values_list(
        "idempotency_key", "amount"))
    assert entries == [(f"{hold.key}:reserve", -hold.amount), (f"{hold.key}:release", hold.amount),
                       (f"{hold.key}:debit", -hold.amount), (f"{hold.key}:overage", -(cost - hold.amount))]
    account = BillingAccount.objects.get(pk=org.pk)
    assert account.credits == before - cost == ledger_sum(organization=org)
    assert UsageEvent.objects.get(request_id=hold.key).credits == cost
    # The minute's token counter holds what the provider counted, not the smaller estimate.
    assert int(redis_client().get(f"rl:tok:org:{org.pk}")) >= 1_000_010
    # A retried settlement moves nothing more.
    credit_settle(reservation=hold, actual=cost, beyond_hold=True)
    assert CreditEntry.objects.filter(reservation=hold).count() == 4
    assert BillingAccount.objects.get(pk=org.pk).credits == before - cost


def test_an_overage_the_balance_cannot_cover_is_recorded_and_raised(gateway, upstream, caplog):
    org, key = gateway
    balance_set(org, Decimal("1"))
    upstream.answer_next(Answer(["Long"], input_tokens=1_000_000, output_tokens=10))
    with caplog.at_level(logging.WARNING, logger="billing.ledger"):
        response = ask(key)
    assert response.status_code == 200
    cost = (1_000_000 * PRICE_IN + 10 * PRICE_OUT) / 1_000_000
    hold = hold_of(org, response)
    covered = Decimal("1") - hold.amount  # what was left once the hold itself was paid
    overage = CreditEntry.objects.get(idempotency_key=f"{hold.key}:overage")
    assert overage.amount == -covered
    uncovered = cost - hold.amount - covered
    assert Decimal(overage.metadata["uncovered"]) == uncovered > 0
    assert BillingAccount.objects.get(pk=org.pk).credits == 0 == ledger_sum(organization=org)  # never negative
    with schema_context(org.schema_name):
        from tenants.audit.models import AuditEvent

        event = AuditEvent.objects.get(action="credits.overage_uncovered", target_id=str(hold.pk))
        assert Decimal(event.after["uncovered"]) == uncovered
    assert any("overage uncovered" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.django_db
def test_the_chat_page_charges_usage_beyond_its_hold(client_for, org_a, funded, settings, upstream,
                                                     django_capture_on_commit_callbacks):
    from chat.models import Message

    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS,
                              "openai": {"base_url": upstream.url, "api_key": "sk-platform-key-000000000000"}}
    upstream.reset()
    redis_forget("chat:breaker:*")
    upstream.answer_next(Answer(["Long"], input_tokens=2_000_000, output_tokens=10))
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for("a", "owner").post(f"/o/{org_a.slug}/chat/new/",
                                                 {"model": "openai/gpt-4o-mini", "content": "Hi"})
    assert response.status_code == 302 and upstream.count >= 1  # the answer (then its title, maybe)
    cost = (2_000_000 * Decimal("15") + 10 * Decimal("60")) / 1_000_000  # gpt-4o-mini's prices
    with schema_context(org_a.schema_name):
        answer = Message.objects.filter(role=Message.Role.ASSISTANT).order_by("-id").first()
        assert answer.status == Message.Status.COMPLETE and answer.credits == cost
        key = answer.billing_key
    hold = CreditReservation.objects.get(key=key)
    assert hold.amount < cost
    assert CreditEntry.objects.get(idempotency_key=f"{key}:overage").amount == -(cost - hold.amount)
    assert sum(CreditEntry.objects.filter(reservation=hold).values_list("amount", flat=True)) == -cost
    # (the thread's title, asked of a model afterwards, is billed on its own)
    assert BillingAccount.objects.get(pk=org_a.pk).credits <= Decimal("500") - cost
