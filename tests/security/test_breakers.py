"""Issue 11, item 4: one organization cannot open a provider's circuit breaker for everyone.

Organization A brings its own OpenAI key, organization B uses the platform's; both call /v1 (in
this process, real PostgreSQL and Redis) against one fake OpenAI. A's key failing (locally, or
at the provider) must leave B's answers alone; a provider's Retry-After opens a breaker for at
most CHAT_BREAKER_MAX_COOLDOWN; the settings page refuses keys that cannot be real.
"""

from __future__ import annotations

import pytest
from django_tenants.utils import schema_context

from chat.catalog.crypto import key_encrypt
from chat.catalog.models import ProviderKey
from chat.routing import CircuitBreaker, breaker_name
from chat.snapshot import org_config_bump
from core.redis_clients import redis_client

from ..fake_llm import RATE_LIMIT, SERVER_ERROR, Answer, FakeOpenAI
from ..orgs import organization_drop
from .inprocess_v1 import api_organization, ask, redis_forget

PLATFORM_KEY = "sk-platform-key-0000000000"
A_KEY = "sk-org-a-own-key-1111111111"


@pytest.fixture(scope="module")
def upstream():
    fake = FakeOpenAI(Answer(["Still", " here"], input_tokens=7, output_tokens=2)).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def orgs(tenant_world, django_db_blocker):
    """A (its own OpenAI key) and B (the platform key), committed: the gateway's pool reads them."""
    with django_db_blocker.unblock():
        a, a_key = api_organization(tenant_world["a"]["owner"])
        b, b_key = api_organization(tenant_world["b"]["owner"])
    yield {"a": (a, a_key), "b": (b, b_key)}
    with django_db_blocker.unblock():
        organization_drop(a)
        organization_drop(b)


@pytest.fixture
def world(settings, upstream, orgs, django_db_blocker):
    providers = {name: dict(config) for name, config in settings.LLM_PROVIDERS.items()}
    providers["openai"] = {"base_url": upstream.url, "api_key": PLATFORM_KEY}
    settings.LLM_PROVIDERS = providers
    upstream.reset()
    redis_forget("chat:breaker:*", "rl:*")
    with django_db_blocker.unblock():  # the app reads keys and snapshots on Django's ORM, committed
        yield orgs
        ProviderKey.objects.filter(organization__in=[orgs["a"][0], orgs["b"][0]]).delete()
        org_config_bump()
    redis_forget("chat:breaker:*", "rl:*")


def own_key(org, secret: str) -> None:
    """Store `secret` as the organization's OpenAI key as a row (a key saved before keys were checked)."""
    ProviderKey.objects.update_or_create(organization=org, provider="openai",
                                         defaults={"encrypted_key": key_encrypt(secret), "last4": secret[-4:]})


def breaker_keys() -> list[str]:
    return sorted(redis_client().scan_iter("chat:breaker:*"))


def test_a_key_that_cannot_be_sent_fails_locally_and_counts_nowhere(world, upstream, settings):
    (a, a_key), (_b, b_key) = world["a"], world["b"]
    own_key(a, "sk-chavé-da-organização-1234")
    for _ in range(2 * settings.CHAT_BREAKER_FAILURES):
        response = ask(a_key)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "provider_key_invalid" and error["type"] == "invalid_request_error"
        assert "cannot be sent in an HTTP header" in error["message"] and "AI providers" in error["message"]
    assert upstream.count == 0  # nothing left this process
    assert breaker_keys() == []  # not a failure of the provider, nor of the key at the provider
    response = ask(b_key)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Still here"
    assert upstream.last.headers["authorization"] == f"Bearer {PLATFORM_KEY}"


def test_an_own_keys_failures_open_its_breaker_for_that_organization_only(world, upstream, settings):
    (a, a_key), (_b, b_key) = world["a"], world["b"]
    own_key(a, A_KEY)
    failures = settings.CHAT_BREAKER_FAILURES
    upstream.fail_next(SERVER_ERROR, times=failures)
    for _ in range(failures):
        assert ask(a_key).status_code == 503
    assert upstream.count == failures
    assert all(r.headers["authorization"] == f"Bearer {A_KEY}" for r in upstream.requests)
    # A's breaker is open: A's next call is refused here, the provider never sees it.
    assert redis_client().exists(CircuitBreaker(breaker_name("openai", A_KEY)).open_key)
    assert ask(a_key).status_code == 503
    assert upstream.count == failures
    # The platform key's breaker never counted A's failures: B is served.
    platform = CircuitBreaker(breaker_name("openai"))
    assert not redis_client().exists(platform.open_key) and not redis_client().exists(platform.failures_key)
    response = ask(b_key)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "Still here"
    assert upstream.count == failures + 1 and upstream.last.headers["authorization"] == f"Bearer {PLATFORM_KEY}"


def test_a_providers_retry_after_opens_the_breaker_for_at_most_the_cap(world, upstream, settings):
    _b, b_key = world["b"]
    upstream.fail_next(RATE_LIMIT, retry_after=86400)
    response = ask(b_key)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) <= settings.CHAT_BREAKER_MAX_COOLDOWN
    ttl = redis_client().ttl(CircuitBreaker(breaker_name("openai")).open_key)
    assert 0 < ttl <= settings.CHAT_BREAKER_MAX_COOLDOWN


@pytest.mark.django_db
def test_the_chat_page_says_why_a_key_that_cannot_be_sent_failed(client_for, org_a, funded, settings, upstream,
                                                                 django_capture_on_commit_callbacks):
    from chat.models import Message

    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, "openai": {"base_url": upstream.url, "api_key": ""}}
    upstream.reset()
    redis_forget("chat:breaker:*")
    ProviderKey.objects.create(organization=org_a, provider="openai", encrypted_key=key_encrypt("sk-ключ-12345678"),
                               last4="5678")
    client = client_for("a", "owner")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/o/{org_a.slug}/chat/new/", {"model": "openai/gpt-4o-mini", "content": "Hi"})
    assert response.status_code == 302
    with schema_context(org_a.schema_name):
        answer = Message.objects.filter(role=Message.Role.ASSISTANT).order_by("-id").first()
        assert answer.status == Message.Status.FAILED
        assert "key for this provider cannot be used" in answer.error
    assert "key for this provider cannot be used" in client.get(response["Location"]).content.decode()
    assert upstream.count == 0 and breaker_keys() == []


URL = "/o/{slug}/settings/ai-providers/"


@pytest.mark.django_db
@pytest.mark.parametrize(("provider", "secret", "message"), [
    ("openai", "sk-chavé-com-acento-000000", "only printable ASCII"),
    ("openai", "sk-has a space-0000000000", "only printable ASCII"),
    ("anthropic", "sk-proj-not-an-anthropic-key-00", "keys start with “sk-ant-”"),
    ("gemini", "sk-looks-like-openai-00000000", "keys start with “AIza”"),
    ("deepseek", "sk-short", "between 20 and 300 characters"),
])
def test_keys_that_cannot_be_real_are_refused_on_save(client_for, org_a, provider, secret, message):
    response = client_for("a", "admin").post(URL.format(slug=org_a.slug), {"provider": provider, "secret": secret})
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not ProviderKey.objects.filter(organization=org_a, provider=provider).exists()


@pytest.mark.django_db
def test_the_optional_test_call_refuses_a_key_the_provider_refuses(client_for, org_a, settings, upstream):
    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, "openai": {"base_url": upstream.url, "api_key": ""}}
    upstream.reset()
    client = client_for("a", "admin")
    upstream.fail_next("auth")
    response = client.post(URL.format(slug=org_a.slug), {"provider": "openai", "secret": A_KEY, "test": "on"})
    assert response.status_code == 200 and "The provider refused this key" in response.content.decode()
    assert not ProviderKey.objects.filter(organization=org_a, provider="openai").exists()
    response = client.post(URL.format(slug=org_a.slug), {"provider": "openai", "secret": A_KEY, "test": "on"})
    assert response.status_code == 302
    assert ProviderKey.objects.filter(organization=org_a, provider="openai").exists()
    assert [(r.method, r.path, r.headers["authorization"]) for r in upstream.requests] == [
        ("GET", "/models", f"Bearer {A_KEY}")] * 2


def test_a_request_that_cannot_be_built_is_a_configuration_error_not_a_provider_failure():
    """Whatever fails before a byte leaves (here a base URL httpx cannot speak to) is CONFIG: the router
    never counts it against the provider's breaker."""
    import asyncio

    from chat.providers import ChatMessage, ChatRequest, ProviderError, Timeouts
    from chat.providers.openai import OpenAIAdapter
    from chat.routing import BREAKER_KINDS

    async def attempt() -> ProviderError:
        async with OpenAIAdapter(api_key=A_KEY, base_url="ftp://127.0.0.1:1/v1", timeouts=Timeouts(),
                                 provider="openai") as adapter:
            try:
                async for _event in adapter.stream(ChatRequest(model="gpt-4.1-mini", max_tokens=10,
                                                               messages=[ChatMessage("user", "Hi")])):
                    pass
            except ProviderError as error:
                return error
        raise AssertionError("the request went out")

    error = asyncio.run(attempt())
    assert error.kind == ProviderError.CONFIG and error.kind not in BREAKER_KINDS
    assert "could not be built" in error.message
