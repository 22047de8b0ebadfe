"""The anonymous trial at /try: five messages per visitor, a per-address cap, then signup keeps the chat."""

from __future__ import annotations

import pytest
from django.test import Client
from django_tenants.utils import schema_context

from chat.models import Thread
from chat.trial import COOKIE
from core.redis_clients import redis_client

from .fake_llm import Answer, FakeGemini, FakeOpenAI

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def clean_redis(settings):
    settings.CHAT_DEMO_DELAY = 0
    client = redis_client()
    for pattern in ("trial:*", "chat:*"):
        for key in client.scan_iter(pattern):
            client.delete(key)


@pytest.fixture
def ask(django_capture_on_commit_callbacks):
    def post(client: Client, content: str = "Hello!", ip: str = "203.0.113.7"):
        with django_capture_on_commit_callbacks(execute=True):
            return client.post("/try/", {"content": content}, REMOTE_ADDR=ip)

    return post


def test_five_messages_then_a_signup_prompt(ask):
    visitor = Client()
    page = visitor.get("/try/").content.decode()
    assert "5 free messages left" in page and "Prumo demo" in page
    for i in range(5):
        assert ask(visitor, f"question {i}").status_code == 302
    page = visitor.get("/try/").content.decode()
    assert "0 free messages left" in page
    assert 'data-testid="trial-signup"' in page and "/accounts/signup/?next=/orgs/new/" in page
    assert page.count('class="msg msg-assistant status-complete"') == 5
    assert "built-in demo model" in page  # the answers were streamed and stored
    ask(visitor, "one more")
    assert "one more" not in visitor.get("/try/").content.decode()


def test_rotating_cookies_stops_at_the_per_address_limit(ask, settings):
    settings.TRIAL_MESSAGES_PER_IP = 7
    accepted = 0
    for _ in range(4):
        visitor = Client()  # a fresh cookie each time
        for i in range(5):
            ask(visitor, f"spam {i}", ip="198.51.100.1")
        accepted += visitor.get("/try/").content.decode().count('class="msg msg-user')
    assert accepted == 7
    # Another address is not affected.
    other = Client()
    ask(other, "hi", ip="198.51.100.2")
    assert "hi" in other.get("/try/").content.decode()


def test_trial_answers_with_the_cheapest_configured_model(ask, settings):
    openai, gemini = FakeOpenAI().start(), FakeGemini(Answer(["Cheap answer"])).start()
    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS,
                              "openai": {"base_url": openai.url, "api_key": "k"},
                              "gemini": {"base_url": gemini.url, "api_key": "k"}}
    try:
        visitor = Client()
        ask(visitor, "Which model?")
        assert "Cheap answer" in visitor.get("/try/").content.decode()
        assert (openai.count, gemini.count) == (0, 1)
        assert gemini.last.path.endswith("gemini-2.5-flash-lite:streamGenerateContent")
    finally:
        openai.stop()
        gemini.stop()


def test_other_visitors_cannot_read_a_trial_answer(ask):
    visitor = Client()
    ask(visitor, "mine")
    assert visitor.get("/try/m/2/").status_code == 200
    assert Client().get("/try/m/2/").status_code == 404
    assert Client().get("/try/m/2/events/").status_code == 404


def test_signup_brings_the_trial_conversation_into_the_new_organization(ask, tenant_world):
    visitor = Client()
    ask(visitor, "Keep this question")
    cookie = visitor.cookies[COOKIE].value
    newcomer = Client()
    newcomer.cookies[COOKIE] = cookie
    newcomer.force_login(tenant_world["a"]["member"])
    response = newcomer.post("/orgs/new/", {"name": "Trial Org", "slug": "trial-org"})
    assert response.status_code == 302
    from tenants.models import Organization

    org = Organization.objects.get(slug="trial-org")
    with schema_context(org.schema_name):
        thread = Thread.objects.get()
        rows = list(thread.messages.order_by("id").values_list("role", "content"))
    assert thread.user == tenant_world["a"]["member"]
    assert rows[0] == ("user", "Keep this question") and rows[1][0] == "assistant" and rows[1][1]
    # Claimed once: a second organization does not get it again.
    newcomer.post("/orgs/new/", {"name": "Second", "slug": "trial-org-2"})
    with schema_context(Organization.objects.get(slug="trial-org-2").schema_name):
        assert not Thread.objects.exists()
