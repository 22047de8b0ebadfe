"""/v1 run in this process: chat.v1's ASGI app behind httpx's ASGI transport, the official SDK as
the client, a fake OpenAI upstream. What one call costs in database round trips, and the
per-address limit on calls without a valid key."""

from __future__ import annotations

import httpx
import openai
import pytest

from billing.models import CreditReservation, UsageEvent
from chat import v1
from core.redis_clients import redis_client
from tenants.api_keys import api_key_create
from tenants.audit.services import Actor

from .fake_llm import Answer, FakeOpenAI
from .orgs import organization_drop
from .security.inprocess_v1 import CountingConnection, openai_at, run, starter_organization

CHEAP = "openai/gpt-4.1-mini"


def round_trips(log: list[str]) -> int:
    return log.count("statement") + log.count("pipeline")


@pytest.fixture(scope="module")
def upstream():
    fake = FakeOpenAI(Answer(["Counted", " answer"], input_tokens=12, output_tokens=2)).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def api_org(tenant_world, django_db_blocker):
    """A committed organization on Starter (API access) and a chat key (the pool sees committed rows only)."""
    with django_db_blocker.unblock():
        org = starter_organization(tenant_world["a"]["owner"], name="Inproc")
        key = api_key_create(organization=org, name="in-process", scopes=["chat"], actor=Actor.system())
    yield org, key
    with django_db_blocker.unblock():
        organization_drop(org)


@pytest.fixture
def gateway_settings(settings, upstream, monkeypatch, django_db_blocker):
    with django_db_blocker.unblock():
        openai_at(settings, upstream.url, monkeypatch)
    return settings


def sdk(key: str, client_address: str = "127.0.0.1") -> openai.AsyncOpenAI:
    transport = httpx.ASGITransport(app=v1.application, client=(client_address, 5000))
    return openai.AsyncOpenAI(base_url="http://testserver/v1", api_key=key, max_retries=0,
                              http_client=httpx.AsyncClient(transport=transport))


def test_a_call_takes_two_database_round_trips(gateway_settings, api_org, django_db_blocker):
    """One for the credit hold (before the provider is called), one for the settlement with its usage
    event (after the client has its answer). Key, plan, catalog and prices come from the key cache
    and the per-process snapshot; rate limits live in Redis."""
    org, key = api_org
    messages = [{"role": "user", "content": "Count my round trips"}]

    async def scenario():
        client = sdk(key.raw)
        await client.chat.completions.create(model=CHEAP, messages=messages)  # warms the cache and snapshot
        logs = {}
        for name, stream in (("plain", False), ("stream", True)):
            CountingConnection.log = []
            if stream:
                chunks = [chunk async for chunk in await client.chat.completions.create(
                    model=CHEAP, messages=messages, stream=True, stream_options={"include_usage": True})]
                assert chunks[-1].usage.completion_tokens == 2
            else:
                completion = await client.chat.completions.create(model=CHEAP, messages=messages)
                assert completion.choices[0].message.content == "Counted answer"
            logs[name] = CountingConnection.log
        return logs

    with django_db_blocker.unblock():  # the app reads the catalog and plan (once) on Django's ORM
        logs = run(scenario)
    for log in logs.values():
        # The hold; then the settlement (close the hold, write the usage event) in one pipeline.
        assert log == ["statement", "pipeline", "pipelined statement", "pipelined statement"], log
        assert round_trips(log) == 2
    with django_db_blocker.unblock():
        assert UsageEvent.objects.filter(organization=org, api_key_id=key.key.pk).count() == 3
        assert not CreditReservation.objects.filter(organization=org, status="open").exists()


def test_calls_without_a_valid_key_are_limited_per_address(gateway_settings, django_db_blocker):
    gateway_settings.API_UNAUTHENTICATED_PER_MINUTE = 3
    redis_client().delete("rl:ip:192.0.2.55")

    async def scenario():
        client = sdk("prm_" + "n" * 44, client_address="192.0.2.55")
        statuses = []
        for _ in range(5):
            try:
                await client.models.list()
            except openai.APIStatusError as error:
                statuses.append((error.status_code, error.code, error.response.headers.get("retry-after")))
        return statuses

    with django_db_blocker.unblock():
        statuses = run(scenario)
    assert [status for status, _code, _wait in statuses] == [401, 401, 401, 429, 429]
    assert statuses[0][1] == "invalid_api_key"
    assert statuses[-1][1] == "rate_limit_exceeded" and int(statuses[-1][2]) >= 1


def test_a_key_first_use_of_the_day_is_audited_once_at_no_extra_round_trip(gateway_settings, api_org,
                                                                             django_db_blocker):
    """A completion learns it is the key's first call of the day in its rate-limit round trip (no new one, the
    database round trips unchanged); the event is written by a task after the answer, once a day."""
    from django_tenants.utils import schema_context

    from tenants.audit.models import AuditEvent
    from tenants.audit.records import api_key_day_mark

    org, key = api_org
    messages = [{"role": "user", "content": "Audit my first call"}]

    def used() -> list:
        with django_db_blocker.unblock(), schema_context(org.schema_name):
            return list(AuditEvent.objects.filter(action="api_key.used", actor_id=str(key.key.pk)))

    async def scenario():
        client = sdk(key.raw)
        await client.chat.completions.create(model=CHEAP, messages=messages)  # warms the cache and snapshot
        redis_client().delete(api_key_day_mark(key.key.pk))
        CountingConnection.log = []
        await client.chat.completions.create(model=CHEAP, messages=messages)
        log = list(CountingConnection.log)
        await client.models.list()
        await client.chat.completions.create(model=CHEAP, messages=messages)
        return log

    earlier = len(used())
    with django_db_blocker.unblock():
        log = run(scenario)
    assert round_trips(log) == 2, log
    events = used()
    assert len(events) == earlier + 1
    assert events[-1].actor_type == "api_key" and events[-1].ip_address == "127.0.0.1"


def test_models_calls_mark_the_day_after_the_answer(gateway_settings, api_org, django_db_blocker):
    from django_tenants.utils import schema_context

    from tenants.audit.models import AuditEvent
    from tenants.audit.records import api_key_day_mark

    org, key = api_org
    redis_client().delete(api_key_day_mark(key.key.pk))

    async def scenario():
        client = sdk(key.raw)
        for _ in range(3):
            await client.models.list()

    with django_db_blocker.unblock():
        with schema_context(org.schema_name):
            before = AuditEvent.objects.filter(action="api_key.used").count()
        run(scenario)
        with schema_context(org.schema_name):
            assert AuditEvent.objects.filter(action="api_key.used").count() == before + 1
    assert redis_client().exists(api_key_day_mark(key.key.pk))
