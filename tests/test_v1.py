"""/v1: the official OpenAI SDK against the production-style server, answered by a fake OpenAI.

The server (gunicorn + uvicorn worker) is started for this module with OPENAI_BASE_URL
pointing at a local fake that speaks OpenAI's wire format, so the whole path runs for real:
SDK → /v1 → key cache → plan → credit hold → router → adapter (openai SDK) → fake → settle.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import openai
import pytest

from billing.models import BillingAccount, CreditReservation, Plan, UsageEvent
from tenants.api_keys import api_key_create
from tenants.audit.services import Actor
from tenants.services import organization_create

from .fake_llm import SERVER_ERROR, Answer, FakeGemini, FakeOpenAI
from .orgs import organization_drop
from .servers import start_live_server

CHEAP = "openai/gpt-4.1-mini"


def eventually(check, timeout: float = 10.0):
    """`check()`'s value once it stops raising AssertionError (or DoesNotExist): the gateway settles
    and meters a call after the client has its answer, so the rows land a moment later."""
    import time

    from django.core.exceptions import ObjectDoesNotExist

    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, ObjectDoesNotExist):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def upstream():
    openai_fake = FakeOpenAI(Answer(["Hello", " from", " upstream", "."], input_tokens=21, output_tokens=4)).start()
    gemini_fake = FakeGemini(Answer(["Gemini", " here"], input_tokens=9, output_tokens=2)).start()
    yield {"openai": openai_fake, "gemini": gemini_fake}
    openai_fake.stop()
    gemini_fake.stop()


@pytest.fixture(scope="module")
def gateway(upstream, test_database_url, redis_url, tmp_path_factory):
    server = start_live_server(
        database_url=test_database_url, redis_url=redis_url, workdir=tmp_path_factory.mktemp("v1"),
        env_extra={"OPENAI_BASE_URL": upstream["openai"].url, "OPENAI_API_KEY": "sk-upstream",
                   "GEMINI_BASE_URL": upstream["gemini"].url, "GEMINI_API_KEY": "gm-upstream",
                   "LLM_READ_TIMEOUT": "3"},
    )
    yield server
    server.process.stop()


@pytest.fixture(scope="module")
def orgs(tenant_world, django_db_blocker):
    """Two committed organizations of their own (the server sees only committed data), dropped afterwards."""
    with django_db_blocker.unblock():
        made = {key: organization_create(user=tenant_world["a"]["owner"], name=f"V1 {key} {uuid.uuid4().hex[:6]}",
                                         actor=Actor.system("tests"))
                for key in ("a", "b", "c", "d", "free")}
        # A: Starter (60 requests/min, room for this module). B and C: a small plan with API access
        # (10 requests, 20,000 tokens a minute). D: Business. "free" keeps Free, which has no API access.
        small = Plan.objects.create(code=f"v1-small-{uuid.uuid4().hex[:6]}", name="Small API", model_tiers=["basic"],
                                    requests_per_minute=10, tokens_per_minute=20_000, max_upload_mb=5,
                                    audit_retention_days=7, api_access=True, is_public=False)
        BillingAccount.objects.filter(pk=made["a"].pk).update(plan=Plan.objects.get(code="starter"))
        BillingAccount.objects.filter(pk__in=[made["b"].pk, made["c"].pk]).update(plan=small)
        BillingAccount.objects.filter(pk=made["d"].pk).update(plan=Plan.objects.get(code="business"))
    # Organization ids restart with a new test database, Redis counters do not (the embedded Redis keeps
    # its data between runs): start from zero.
    from billing.ratelimits import rate_limit_keys
    from core.redis_clients import redis_client

    for org in made.values():
        redis_client().delete(*rate_limit_keys(org.pk, 0))
    yield made
    with django_db_blocker.unblock():
        for org in made.values():
            organization_drop(org)
        small.delete()


@pytest.fixture(scope="module")
def keys(orgs, django_db_blocker):
    """Org A with the chat scope, org A read-only, org B (whose balance a test empties)."""
    from billing.ratelimits import rate_limit_keys
    from core.redis_clients import redis_client

    with django_db_blocker.unblock():
        made = {
            "a": api_key_create(organization=orgs["a"], name="v1 tests", scopes=["chat"], actor=Actor.system()),
            "a_read": api_key_create(organization=orgs["a"], name="v1 read", scopes=["read"], actor=Actor.system()),
            "b": api_key_create(organization=orgs["b"], name="v1 b", scopes=["chat"], actor=Actor.system()),
            "c1": api_key_create(organization=orgs["c"], name="v1 c1", scopes=["chat"], actor=Actor.system()),
            "c2": api_key_create(organization=orgs["c"], name="v1 c2", scopes=["chat"], actor=Actor.system()),
            "d": api_key_create(organization=orgs["d"], name="v1 d", scopes=["chat"], actor=Actor.system()),
            "free": api_key_create(organization=orgs["free"], name="v1 free", scopes=["chat"], actor=Actor.system()),
        }
    for new in made.values():  # ids restart with a new test database, Redis counters do not
        redis_client().delete(*rate_limit_keys(new.key.organization_id, new.key.pk))
    return made


@pytest.fixture(autouse=True)
def breakers_closed():
    """Failures other tests provoked must not leave a provider's circuit open for these."""
    from core.redis_clients import redis_client

    for key in redis_client().scan_iter("chat:breaker:*"):
        redis_client().delete(key)


@pytest.fixture
def upstream_reset(upstream):
    for fake in upstream.values():
        fake.reset()
    yield upstream


def client(gateway, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key.raw, max_retries=0, timeout=20)


def test_models_lists_what_the_plan_allows(gateway, keys):
    ids = {model.id for model in client(gateway, keys["a"]).models.list()}
    assert CHEAP in ids and "gemini/gemini-2.5-flash-lite" in ids
    assert "openai/gpt-5" not in ids  # premium: not on the Free plan


def test_completion_through_the_official_sdk(gateway, keys, upstream_reset, django_db_blocker):
    raw = client(gateway, keys["a"]).chat.completions.with_raw_response.create(
        model="gpt-4.1-mini", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=50, temperature=0.3, top_p=0.9, stop=["END"], user="customer-42",
        response_format={"type": "text"})
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from upstream."
    assert completion.choices[0].finish_reason == "stop" and completion.model == CHEAP
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (21, 4)
    assert raw.headers["x-request-id"] and float(raw.headers["x-prumo-overhead-ms"]) >= 0
    sent = upstream_reset["openai"].last.body
    assert sent["model"] == "gpt-4.1-mini" and sent["max_completion_tokens"] == 50
    assert (sent["temperature"], sent["top_p"], sent["stop"], sent["user"]) == (0.3, 0.9, ["END"], "customer-42")
    assert sent["response_format"] == {"type": "text"}
    with django_db_blocker.unblock():
        usage = eventually(lambda: UsageEvent.objects.get(
            request_id=f"v1:{keys['a'].key.organization_id}:{completion.id[9:]}"))
    assert (usage.api_key_id, usage.key, usage.input_tokens, usage.output_tokens) == (keys["a"].key.pk, CHEAP, 21, 4)
    assert usage.credits == Decimal("0.00148")  # 21 × 40 + 4 × 160 per million


def test_streaming_with_usage(gateway, keys, upstream_reset):
    stream = client(gateway, keys["a"]).chat.completions.create(
        model=CHEAP, messages=[{"role": "user", "content": "Stream please"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from upstream."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4


def test_other_providers_answer_in_openai_shape(gateway, keys, upstream_reset):
    completion = client(gateway, keys["a"]).chat.completions.create(
        model="gemini/gemini-2.5-flash-lite", messages=[{"role": "user", "content": "Hi"}])
    assert completion.choices[0].message.content == "Gemini here" and completion.usage.completion_tokens == 2
    assert completion.model == "gemini/gemini-2.5-flash-lite"
    # A model the plan allows but whose provider nobody configured.
    with pytest.raises(openai.InternalServerError) as raised:
        client(gateway, keys["a"]).chat.completions.create(model="anthropic/claude-haiku-4-5",
                                                           messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 503 and raised.value.code == "model_unavailable"


def test_errors_use_openais_envelope(gateway, keys):
    bad = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="prm_" + "x" * 44, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        bad.chat.completions.create(model=CHEAP, messages=[{"role": "user", "content": "x"}])
    assert raised.value.code == "invalid_api_key" and raised.value.response.headers["x-request-id"]
    sdk = client(gateway, keys["a"])
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.chat.completions.create(model="nope/missing", messages=[{"role": "user", "content": "x"}])
    assert raised.value.code == "model_not_found"
    with pytest.raises(openai.PermissionDeniedError) as raised:
        sdk.chat.completions.create(model="openai/gpt-5", messages=[{"role": "user", "content": "x"}])
    assert raised.value.code == "model_not_allowed"
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(model=CHEAP, messages=[{"role": "user", "content": "x"}], temperature=7)
    assert raised.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(model=CHEAP, messages=[])
    assert raised.value.param == "messages"
    with pytest.raises(openai.PermissionDeniedError) as raised:
        client(gateway, keys["a_read"]).chat.completions.create(model=CHEAP,
                                                                messages=[{"role": "user", "content": "x"}])
    assert raised.value.code == "insufficient_scope"


def test_a_plan_without_api_access_is_refused(gateway, keys):
    for call in (lambda sdk: sdk.models.list(),
                 lambda sdk: sdk.chat.completions.create(model=CHEAP, messages=[{"role": "user", "content": "x"}])):
        with pytest.raises(openai.PermissionDeniedError) as raised:
            call(client(gateway, keys["free"]))
        assert raised.value.code == "plan_without_api_access"


def test_not_enough_credits_is_402(gateway, keys, orgs, django_db_blocker):
    org_b = orgs["b"]
    with django_db_blocker.unblock():
        balance = BillingAccount.objects.get(pk=org_b.pk).credits
        BillingAccount.objects.filter(pk=org_b.pk).update(credits=0)
    try:
        with pytest.raises(openai.APIStatusError) as raised:
            client(gateway, keys["b"]).chat.completions.create(model=CHEAP, messages=[{"role": "user", "content": "x"}])
        assert raised.value.status_code == 402 and raised.value.code == "insufficient_credits"
    finally:
        with django_db_blocker.unblock():
            BillingAccount.objects.filter(pk=org_b.pk).update(credits=balance)


def test_upstream_failure_is_503_and_the_hold_is_released(gateway, keys, upstream_reset, django_db_blocker):
    upstream_reset["openai"].fail_next(SERVER_ERROR, times=5)
    upstream_reset["gemini"].fail_next(SERVER_ERROR, times=5)
    with pytest.raises(openai.InternalServerError) as raised:
        client(gateway, keys["a"]).chat.completions.create(model=CHEAP, messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 503 and raised.value.code == "upstream_unavailable"
    with django_db_blocker.unblock():
        open_holds = CreditReservation.objects.filter(key__startswith=f"v1:{keys['a'].key.organization_id}:",
                                                      status=CreditReservation.Status.OPEN)

        def released():
            assert not open_holds.exists()

        eventually(released)


# ---------------------------------------------------------------- plan rate limits


@pytest.fixture(scope="module")
def second_gateway(upstream, test_database_url, redis_url, tmp_path_factory):
    """Another server process on the same database and Redis: limits must hold across both."""
    server = start_live_server(
        database_url=test_database_url, redis_url=redis_url, workdir=tmp_path_factory.mktemp("v1-second"),
        env_extra={"OPENAI_BASE_URL": upstream["openai"].url, "OPENAI_API_KEY": "sk-upstream",
                   "WEB_CONCURRENCY": "2"},
    )
    yield server
    server.process.stop()


def test_success_carries_the_rate_limit_headers(gateway, keys, upstream_reset):
    raw = client(gateway, keys["a"]).chat.completions.with_raw_response.create(
        model=CHEAP, messages=[{"role": "user", "content": "hi"}], max_tokens=100)
    assert raw.headers["x-ratelimit-limit-requests"] == "60"
    assert int(raw.headers["x-ratelimit-remaining-requests"]) < 60
    assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")


def test_the_plan_limit_is_exact_across_server_processes(gateway, second_gateway, keys, upstream_reset):
    """10 requests a minute for the organization, whichever key and server they use."""
    from concurrent.futures import ThreadPoolExecutor

    def call(i: int) -> tuple[int, dict]:
        server = (gateway, second_gateway)[i % 2]
        key = keys["c1"] if i % 3 else keys["c2"]
        try:
            raw = client(server, key).chat.completions.with_raw_response.create(
                model=CHEAP, messages=[{"role": "user", "content": f"call {i}"}], max_tokens=10)
            return raw.http_response.status_code, dict(raw.headers)
        except openai.APIStatusError as error:
            return error.status_code, dict(error.response.headers)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(call, range(40)))
    statuses = [status for status, _headers in results]
    assert statuses.count(200) == 10 and statuses.count(429) == 30, statuses
    limited = next(headers for status, headers in results if status == 429)
    assert int(limited["retry-after"]) >= 1 and limited["x-ratelimit-remaining-requests"] == "0"


def test_a_request_over_the_token_limit_is_refused(gateway, keys, upstream_reset):
    with pytest.raises(openai.RateLimitError) as raised:  # 20,000 tokens a minute
        client(gateway, keys["b"]).chat.completions.create(
            model=CHEAP, messages=[{"role": "user", "content": "x " * 50_000}], max_tokens=10)
    assert raised.value.code == "rate_limit_exceeded" and raised.value.type == "tokens"


# ---------------------------------------------------------------- credits under concurrency


def test_credits_for_exactly_n_calls_serve_exactly_n_of_4n_concurrent_calls(
        gateway, second_gateway, keys, orgs, upstream_reset, django_db_blocker):
    """Each call costs exactly its hold (the fake reports the prompt estimate and max_tokens as usage)."""
    from concurrent.futures import ThreadPoolExecutor

    from billing.ledger import credit_debit
    from billing.selectors import ledger_sum, price_for
    from chat.gateway import params_parse, prompt_tokens_estimate

    n, max_tokens = 5, 10
    messages = [{"role": "user", "content": "one call"}]
    prompt = prompt_tokens_estimate(params_parse(json.dumps({"model": CHEAP, "messages": messages}).encode()).messages)
    upstream_reset["openai"].answer = Answer(["ok"], input_tokens=prompt, output_tokens=max_tokens)
    org = orgs["d"]
    with django_db_blocker.unblock():
        price = price_for(kind="model", key=CHEAP)
        per_call = (prompt * price.input_per_million + max_tokens * price.output_per_million) / 1_000_000
        balance = BillingAccount.objects.get(pk=org.pk).credits
        credit_debit(organization=org, amount=balance - n * per_call, key=f"v1-test-drain-{org.pk}")

    def call(i: int) -> int:
        try:
            client((gateway, second_gateway)[i % 2], keys["d"]).chat.completions.create(
                model=CHEAP, messages=messages, max_tokens=max_tokens)
            return 200
        except openai.APIStatusError as error:
            return error.status_code

    with ThreadPoolExecutor(max_workers=4 * n) as pool:
        statuses = list(pool.map(call, range(4 * n)))
    assert statuses.count(200) == n and statuses.count(402) == 3 * n, statuses
    with django_db_blocker.unblock():
        def settled():
            assert not CreditReservation.objects.filter(organization=org, status="open").exists()

        eventually(settled)
        final = BillingAccount.objects.get(pk=org.pk).credits
        assert final == 0 and final == ledger_sum(organization=org)
        assert UsageEvent.objects.filter(organization=org, api_key_id=keys["d"].key.pk).count() == n


# ---------------------------------------------------------------- tools, models, disconnects, holds


def test_tool_calls_come_back_in_openais_shape(gateway, keys, upstream_reset):
    tools = [{"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    call = upstream_reset["openai"].tool_call_next("weather", {"city": "Recife"})
    completion = client(gateway, keys["a"]).chat.completions.create(
        model=CHEAP, messages=[{"role": "user", "content": "Weather in Recife?"}], tools=tools, tool_choice="auto")
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [made] = choice.message.tool_calls
    assert (made.id, made.function.name, json.loads(made.function.arguments)) == (call.id, "weather",
                                                                                  {"city": "Recife"})
    assert upstream_reset["openai"].last.body["tools"] == tools

    # The follow-up turn carries the call and its result back to the provider, in its wire shape.
    upstream_reset["openai"].tool_call_next("weather", {"city": "Natal"})
    stream = client(gateway, keys["a"]).chat.completions.create(
        model=CHEAP, stream=True, tools=tools,
        messages=[{"role": "user", "content": "Weather in Recife?"},
                  {"role": "assistant", "content": None, "tool_calls": [made.model_dump()]},
                  {"role": "tool", "tool_call_id": made.id, "content": "31 °C, sunny"},
                  {"role": "user", "content": "And Natal?"}])
    chunks = list(stream)
    fragments = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert fragments[0].function.name == "weather" and fragments[0].id
    assert json.loads("".join(f.function.arguments or "" for f in fragments)) == {"city": "Natal"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    sent = upstream_reset["openai"].last.body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == made.id and sent[2] == {"role": "tool", "tool_call_id": made.id,
                                                                      "content": "31 °C, sunny"}


def test_a_tool_message_without_its_call_id_names_the_parameter(gateway, keys):
    with pytest.raises(openai.BadRequestError) as raised:
        client(gateway, keys["a"]).chat.completions.create(
            model=CHEAP, messages=[{"role": "user", "content": "x"}, {"role": "tool", "content": "result"}])
    assert raised.value.param == "messages[1].tool_call_id"


def test_models_retrieve_by_id_and_alias(gateway, keys):
    sdk = client(gateway, keys["a"])
    assert sdk.models.retrieve(CHEAP).id == CHEAP
    assert sdk.models.retrieve("gpt-4.1-mini").id == CHEAP
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("openai/gpt-5")  # premium: not on this plan


def test_a_client_gone_mid_stream_is_billed_for_what_was_produced(gateway, keys, orgs, upstream_reset,
                                                                    django_db_blocker):
    import httpx

    fake = upstream_reset["openai"]
    fake.answer_next(Answer([f"word{i} " for i in range(40)], input_tokens=30, output_tokens=40))
    fake.chunk_delay = 0.05
    try:
        body = {"model": CHEAP, "stream": True, "messages": [{"role": "user", "content": "Talk for a while"}]}
        with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=20,
                          headers={"Authorization": f"Bearer {keys['a'].raw}"}) as response:
            assert response.status_code == 200
            completion_id, seen = None, 0
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    completion_id = json.loads(line[6:])["id"]
                    seen += 1
                if seen == 4:
                    break  # leave: the connection closes mid-answer
    finally:
        fake.chunk_delay = 0.0
    key = f"v1:{orgs['a'].pk}:{completion_id.removeprefix('chatcmpl-')}"
    with django_db_blocker.unblock():
        hold = eventually(lambda: CreditReservation.objects.get(key=key, status="settled"))
        usage = UsageEvent.objects.get(request_id=key)
    assert 0 < usage.output_tokens < 40 and usage.input_tokens > 0  # what was produced, estimated
    assert 0 < hold.actual == usage.credits < hold.amount


def test_holds_of_a_dead_process_are_released_by_the_reaper(orgs, django_db_blocker, settings):
    from datetime import timedelta

    from django.utils import timezone

    from billing.ledger import credit_reserve
    from chat.gateway import holds_reap

    org = orgs["a"]
    with django_db_blocker.unblock():
        before = BillingAccount.objects.get(pk=org.pk).credits
        hold = credit_reserve(organization=org, amount=Decimal("1.5"), key=f"v1:{org.pk}:{uuid.uuid4().hex}")
        fresh = credit_reserve(organization=org, amount=Decimal("1"), key=f"v1:{org.pk}:{uuid.uuid4().hex}")
        CreditReservation.objects.filter(pk=hold.pk).update(
            created_at=timezone.now() - timedelta(seconds=settings.GATEWAY_HOLD_TIMEOUT_SECONDS + 1))
        assert holds_reap() >= 1
        assert CreditReservation.objects.get(pk=hold.pk).status == "released"
        assert CreditReservation.objects.get(pk=fresh.pk).status == "open"  # a call may still be running
        from billing.ledger import credit_release

        credit_release(reservation=fresh)
        assert BillingAccount.objects.get(pk=org.pk).credits == before
