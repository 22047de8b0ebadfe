"""Chat end to end in process: pages, answers streamed through fake providers, billing, stop, crash."""

from __future__ import annotations

import re
import threading
import time
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django_tenants.utils import schema_context

from accounts.models import User
from billing.models import BillingAccount, CreditEntry, CreditReservation, UsageEvent
from billing.selectors import ledger_sum
from chat import generation, tasks
from chat.catalog.models import Model
from chat.catalog.selectors import model_resolve
from chat.models import Attachment, Message, Thread
from chat.services import cancel_key
from core.redis_clients import redis_client

from .fake_llm import SERVER_ERROR, Answer, FakeGemini, FakeOpenAI

pytestmark = pytest.mark.django_db

CHEAP = "openai/gpt-4.1-mini"  # basic tier: the Free plan may use it
FALLBACK = "gemini/gemini-2.5-flash-lite"  # its first fallback


@pytest.fixture(autouse=True)
def clean_redis():
    client = redis_client()
    for key in client.scan_iter("chat:*"):
        client.delete(key)
    yield


@pytest.fixture
def providers(settings):
    """Fake OpenAI and Gemini servers configured as the platform's providers."""
    openai, gemini = FakeOpenAI().start(), FakeGemini().start()
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "openai": {"base_url": openai.url, "api_key": "sk-platform-openai"},
        "gemini": {"base_url": gemini.url, "api_key": "platform-gemini"},
    }
    settings.LLM_READ_TIMEOUT = 2
    yield {"openai": openai, "gemini": gemini}
    openai.stop()
    gemini.stop()


@pytest.fixture
def send(django_capture_on_commit_callbacks):
    """POST a question; the answer's Celery task runs eagerly when the send commits."""

    def post(client, org, content: str, *, model: str = CHEAP, thread: Thread | None = None, **extra):
        url = f"/o/{org.slug}/chat/t/{thread.pk}/send/" if thread else f"/o/{org.slug}/chat/new/"
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(url, {"model": model, "content": content, **extra})

    return post


def latest_thread(org) -> Thread:
    with schema_context(org.schema_name):
        return Thread.objects.latest("id")


def messages_of(org, thread) -> list[Message]:
    with schema_context(org.schema_name):
        return list(thread.messages.order_by("id"))


# ---------------------------------------------------------------- catalog


def test_catalog_is_seeded_with_real_models_prices_and_aliases():
    assert Model.objects.filter(provider="openai").count() >= 3
    assert {m.provider for m in Model.objects.all()} >= {"openai", "anthropic", "gemini", "deepseek", "ollama", "demo"}
    assert model_resolve("claude-sonnet").id == "anthropic/claude-sonnet-4-5"
    assert model_resolve("gpt-4.1-mini").id == CHEAP
    assert model_resolve("nope/nothing") is None
    from billing.selectors import price_for

    assert price_for(kind="model", key=CHEAP).output_per_million == Decimal("160")


def test_model_picker_lists_only_what_the_plan_and_configured_providers_allow(client_for, org_a, providers):
    page = client_for("a").get(f"/o/{org_a.slug}/chat/").content.decode()
    assert 'value="openai/gpt-4.1-mini"' in page  # basic tier, provider configured
    assert 'value="openai/gpt-5"' not in page  # premium: not on the Free plan
    assert 'value="anthropic/claude-haiku-4-5"' not in page  # no Anthropic key anywhere
    assert 'value="demo/prumo-demo"' in page


def test_demo_model_is_off_when_disabled(client_for, org_a, settings):
    settings.CHAT_DEMO_MODEL_ENABLED = False
    page = client_for("a").get(f"/o/{org_a.slug}/chat/").content.decode()
    assert "demo/prumo-demo" not in page
    assert "No AI model is available" in page


# ---------------------------------------------------------------- answering and billing


def test_answer_streams_from_the_provider_and_is_billed_exactly(client_for, org_a, providers, send):
    providers["openai"].answer = Answer(["Olá", ", mundo", "!"], input_tokens=1200, output_tokens=300)
    response = send(client_for("a"), org_a, "Say hello in Portuguese")
    assert response.status_code == 302
    thread = latest_thread(org_a)
    question, answer = messages_of(org_a, thread)
    assert (question.role, question.content) == ("user", "Say hello in Portuguese")
    assert (answer.status, answer.content, answer.served_model_id) == ("complete", "Olá, mundo!", CHEAP)
    assert (answer.input_tokens, answer.output_tokens, answer.usage_estimated) == (1200, 300, False)
    # 1,200 × 40 + 300 × 160 credits per million tokens.
    expected = Decimal("0.096")
    assert answer.credits == expected
    # The answer moved exactly its cost out of the balance (its hold came back in full).
    moved = CreditEntry.objects.filter(idempotency_key__startswith=f"chat:{org_a.schema_name}:{answer.pk}:")
    assert sum(entry.amount for entry in moved) == -expected
    usage = UsageEvent.objects.get(organization=org_a, request_id=f"chat:{org_a.schema_name}:{answer.pk}")
    assert (usage.key, usage.input_tokens, usage.output_tokens, usage.credits) == (CHEAP, 1200, 300, expected)
    reservation = CreditReservation.objects.get(key=f"chat:{org_a.schema_name}:{answer.pk}")
    assert reservation.status == "settled" and reservation.actual == expected
    assert BillingAccount.objects.get(pk=org_a.pk).credits == ledger_sum(organization=org_a)
    sent = providers["openai"].last.body
    assert sent["model"] == "gpt-4.1-mini" and sent["stream"] is True
    assert sent["messages"][-1] == {"role": "user", "content": "Say hello in Portuguese"}
    # The page shows the rendered answer with its tokens and credits.
    page = client_for("a").get(f"/o/{org_a.slug}/chat/t/{thread.pk}/").content.decode()
    assert "Olá, mundo!" in page and "1200 in · 300 out" in page and "0.096 credits" in page


def test_fallback_before_the_first_byte_is_billed_at_the_model_that_served(client_for, org_a, providers, send):
    providers["openai"].fail_next(SERVER_ERROR)
    providers["gemini"].answer = Answer(["From Gemini"], input_tokens=100, output_tokens=10)
    send(client_for("a"), org_a, "Hello?")
    answer = messages_of(org_a, latest_thread(org_a))[-1]
    assert (answer.status, answer.content, answer.model_id, answer.served_model_id) == (
        "complete", "From Gemini", CHEAP, FALLBACK)
    usage = UsageEvent.objects.get(request_id=f"chat:{org_a.schema_name}:{answer.pk}")
    assert usage.key == FALLBACK
    assert usage.credits == Decimal("0.0014")  # 100 × 10 + 10 × 40 per million


def test_open_circuit_skips_the_failing_provider(client_for, org_a, providers, send, settings):
    settings.CHAT_BREAKER_FAILURES = 2
    providers["openai"].fail_next(SERVER_ERROR, times=2)
    client = client_for("a")
    for question in ("one", "two"):
        send(client, org_a, question)
    assert providers["openai"].count == 2
    send(client, org_a, "three")
    assert providers["openai"].count == 2  # the breaker is open: OpenAI was not called
    assert messages_of(org_a, latest_thread(org_a))[-1].served_model_id == FALLBACK


def test_error_after_the_first_byte_keeps_the_text_and_says_interrupted(client_for, org_a, providers, send):
    from .fake_llm import CUT

    providers["openai"].answer = Answer(["Part one. ", "Part two. ", "Part three."], input_tokens=50, output_tokens=9)
    providers["openai"].fail_next(CUT, cut_after=1)
    send(client_for("a"), org_a, "Tell me three parts")
    answer = messages_of(org_a, latest_thread(org_a))[-1]
    assert answer.status == "interrupted" and answer.content == "Part one. "
    assert providers["gemini"].count == 0  # never splice another model onto a started answer
    assert answer.usage_estimated and answer.output_tokens > 0 and answer.credits > 0


def test_not_enough_credits_keeps_the_question_and_links_to_top_up(client_for, org_a, providers, send):
    BillingAccount.objects.filter(pk=org_a.pk).update(credits=0)
    response = send(client_for("a"), org_a, "Will you answer?")
    assert response.status_code == 400
    page = response.content.decode()
    assert "Not enough credits for this answer." in page and f"/o/{org_a.slug}/billing/#top-up" in page
    assert "Will you answer?" in page  # the composer keeps the text
    assert providers["openai"].count == 0
    with schema_context(org_a.schema_name):
        assert not Message.objects.filter(content="Will you answer?").exists()


def test_model_outside_the_plan_is_refused(client_for, org_a, providers, send):
    response = send(client_for("a"), org_a, "hi", model="openai/gpt-5")
    assert response.status_code == 400
    assert "not available on your plan" in response.content.decode()


# ---------------------------------------------------------------- stop and crash


def test_stop_ends_the_answer_within_a_second_and_bills_what_was_produced(client_for, org_a, providers, send):
    fake = providers["openai"]
    fake.answer = Answer([f"word{i} " for i in range(200)], input_tokens=40, output_tokens=200)
    fake.chunk_delay = 0.05  # 10 s for the whole answer
    client = client_for("a")
    stopper = threading.Thread(target=lambda: (time.sleep(0.6), _stop_latest_answer(org_a)))
    stopper.start()
    started = time.monotonic()
    send(client, org_a, "Count slowly")
    elapsed = time.monotonic() - started
    stopper.join()
    answer = messages_of(org_a, latest_thread(org_a))[-1]
    assert answer.status == "stopped"
    assert elapsed < 0.6 + 1.0
    assert answer.content.startswith("word0 ") and len(answer.content.split()) < 200
    assert answer.usage_estimated and answer.output_tokens > 0 and answer.credits > 0
    assert UsageEvent.objects.filter(request_id=f"chat:{org_a.schema_name}:{answer.pk}").count() == 1


def _stop_latest_answer(org) -> None:
    # From another thread: only Redis, as the Stop button's view does.
    client = redis_client()
    for key in client.zrange(generation.ACTIVE_SET, 0, -1):
        if f":{org.schema_name}:" in key:
            client.set(cancel_key(key), "1", ex=60)


def test_dead_worker_answer_is_closed_as_interrupted_and_billed_once(client_for, org_a, providers, send,
                                                                      settings):
    client = client_for("a")
    send(client, org_a, "first question")
    thread = latest_thread(org_a)
    with schema_context(org_a.schema_name):
        question = Message.objects.create(thread=thread, role="user", content="second question")
        answer = Message.objects.create(thread=thread, role="assistant", status="streaming", model_id=CHEAP,
                                        max_tokens=100, prompt_tokens_estimate=30)
        key = answer.stream_key
    redis = redis_client()
    redis.xadd(key, {"t": "start", "model": CHEAP, "name": "GPT-4.1 mini"})
    redis.xadd(key, {"t": "delta", "d": "The worker wrote this "})
    redis.xadd(key, {"t": "delta", "d": "and then died."})
    redis.zadd(generation.ACTIVE_SET, {key: time.time() - settings.CHAT_HEARTBEAT_TIMEOUT - 1})
    # A redelivered task does not generate it again...
    with schema_context(org_a.schema_name):
        generation.answer_generate(answer.pk)
    assert providers["openai"].count == 1
    # ...and the reaper finds nothing left to do.
    assert tasks.generations_reap() == 0
    with schema_context(org_a.schema_name):
        answer.refresh_from_db()
    assert answer.status == "interrupted"
    assert answer.content == "The worker wrote this and then died."
    assert answer.usage_estimated and answer.input_tokens == 30 and answer.output_tokens > 0
    assert UsageEvent.objects.filter(request_id=f"chat:{org_a.schema_name}:{answer.pk}").count() == 1
    assert [f["t"] for _id, f in redis.xrange(key)][-1] == "end"
    assert question.pk < answer.pk


def test_reaper_closes_answers_whose_heartbeat_stopped(org_a, settings, tenant_world):
    with schema_context(org_a.schema_name):
        thread = Thread.objects.create(user=tenant_world["a"]["owner"], model_id=CHEAP)
        Message.objects.create(thread=thread, role="user", content="hi")
        answer = Message.objects.create(thread=thread, role="assistant", status="streaming", model_id=CHEAP,
                                        max_tokens=100, prompt_tokens_estimate=10)
        key = answer.stream_key
    redis = redis_client()
    redis.xadd(key, {"t": "delta", "d": "half an answer"})
    redis.zadd(generation.ACTIVE_SET, {key: time.time() - 60})
    assert tasks.generations_reap() == 1
    with schema_context(org_a.schema_name):
        answer.refresh_from_db()
    assert (answer.status, answer.content) == ("interrupted", "half an answer")
    assert redis.zscore(generation.ACTIVE_SET, key) is None


# ---------------------------------------------------------------- the thread page


def test_answer_markdown_is_rendered_and_sanitized(client_for, org_a, providers, send):
    providers["openai"].answer = Answer(["# Title\n\n", "<script>alert(1)</script> ", "[x](javascript:alert(1))\n\n",
                                         "```python\nprint('hi')\n```"])
    send(client_for("a"), org_a, "markdown please")
    thread = latest_thread(org_a)
    page = client_for("a").get(f"/o/{org_a.slug}/chat/t/{thread.pk}/").content.decode()
    assert "<h1>Title</h1>" in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'href="javascript' not in page.lower()
    assert 'class="codeblock"' in page and 'class="highlight"' in page


def test_regenerate_replaces_the_last_answer_and_edit_reasks(client_for, org_a, providers, send,
                                                             django_capture_on_commit_callbacks):
    client = client_for("a")
    providers["openai"].answer = Answer(["first"])
    send(client, org_a, "question")
    thread = latest_thread(org_a)
    providers["openai"].answer = Answer(["second"])
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/o/{org_a.slug}/chat/t/{thread.pk}/regenerate/")
    assert [(m.role, m.content) for m in messages_of(org_a, thread)] == [("user", "question"), ("assistant", "second")]
    providers["openai"].answer = Answer(["third"])
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/o/{org_a.slug}/chat/t/{thread.pk}/edit/", {"content": "better question"})
    assert [(m.role, m.content) for m in messages_of(org_a, thread)] == [
        ("user", "better question"), ("assistant", "third")]
    assert providers["openai"].last.body["messages"][-1]["content"] == "better question"


def test_follow_up_sends_the_history_and_the_system_prompt(client_for, org_a, providers, send):
    client = client_for("a")
    providers["openai"].answer = Answer(["4"])
    send(client, org_a, "2+2?", system_prompt="Answer with digits only.")
    thread = latest_thread(org_a)
    send(client, org_a, "times 3?", thread=thread)
    sent = providers["openai"].last.body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"] == "Answer with digits only." and sent[2]["content"] == "4"


def test_thread_gets_an_automatic_title_from_the_cheapest_model(client_for, org_a, providers, send):
    providers["gemini"].answer = Answer(["\"Portuguese greetings\"\n"], input_tokens=30, output_tokens=3)
    send(client_for("a"), org_a, "How do I say hello in Portuguese?")
    thread = latest_thread(org_a)
    assert (thread.title, thread.title_is_auto) == ("Portuguese greetings", True)
    # The cheapest allowed model, Gemini Flash-Lite (10/40 per million), named it and was paid for it.
    title_usage = UsageEvent.objects.get(request_id=f"chat-title:{org_a.schema_name}:{thread.pk}")
    assert (title_usage.key, title_usage.input_tokens, title_usage.output_tokens) == (FALLBACK, 30, 3)


def test_rename_pin_delete(client_for, org_a, providers, send):
    client = client_for("a")
    send(client, org_a, "to be renamed")
    thread = latest_thread(org_a)
    client.post(f"/o/{org_a.slug}/chat/t/{thread.pk}/rename/", {"title": "My title"})
    client.post(f"/o/{org_a.slug}/chat/t/{thread.pk}/pin/", {"pinned": "1"})
    thread = latest_thread(org_a)
    assert (thread.title, thread.title_is_auto, thread.pinned) == ("My title", False, True)
    client.post(f"/o/{org_a.slug}/chat/t/{thread.pk}/delete/")
    with schema_context(org_a.schema_name):
        assert not Thread.objects.filter(pk=thread.pk).exists()


def test_sidebar_search_matches_titles_and_message_text(client_for, org_a, tenant_world):
    owner = tenant_world["a"]["owner"]
    with schema_context(org_a.schema_name):
        by_title = Thread.objects.create(user=owner, model_id=CHEAP, title="Quarterly taxes")
        by_text = Thread.objects.create(user=owner, model_id=CHEAP, title="Misc")
        Message.objects.create(thread=by_text, role="user", content="what about TAXES on imports?")
        Thread.objects.create(user=owner, model_id=CHEAP, title="Unrelated")
    html = client_for("a").get(f"/o/{org_a.slug}/chat/threads/", {"q": "taxes"}).content.decode()
    assert f"/chat/t/{by_title.pk}/" in html and f"/chat/t/{by_text.pk}/" in html and "Unrelated" not in html


# ---------------------------------------------------------------- privacy


def test_threads_are_private_to_their_member(client_for, org_a, providers, send):
    send(client_for("a", "owner"), org_a, "private question")
    thread = latest_thread(org_a)
    answer = messages_of(org_a, thread)[-1]
    colleague = client_for("a", "admin")
    for url in (f"/o/{org_a.slug}/chat/t/{thread.pk}/", f"/o/{org_a.slug}/chat/m/{answer.pk}/"):
        assert colleague.get(url).status_code == 404
    for url in (f"/o/{org_a.slug}/chat/t/{thread.pk}/send/", f"/o/{org_a.slug}/chat/t/{thread.pk}/delete/",
                f"/o/{org_a.slug}/chat/m/{answer.pk}/stop/"):
        assert colleague.post(url, {"content": "x"}).status_code == 404
    assert "private question" not in colleague.get(f"/o/{org_a.slug}/chat/").content.decode()


# ---------------------------------------------------------------- attachments


def test_text_attachment_goes_into_the_context_and_downloads_only_for_its_owner(client_for, org_a, providers, send):
    upload = SimpleUploadedFile("notes.md", b"# Notes\n\nThe secret number is 42.\n", content_type="text/html")
    response = send(client_for("a"), org_a, "What is the secret number?", files=upload)
    assert response.status_code == 302
    sent = providers["openai"].last.body["messages"][-1]["content"]
    assert "[Attached file: notes.md]" in sent and "The secret number is 42." in sent
    with schema_context(org_a.schema_name):
        attachment = Attachment.objects.latest("id")
    assert (attachment.kind, attachment.content_type) == ("markdown", "text/markdown; charset=utf-8")
    assert attachment.file.name.startswith(f"{org_a.schema_name}/chat/")
    download = client_for("a").get(f"/o/{org_a.slug}/chat/files/{attachment.token}/")
    assert download.status_code == 200
    assert download["Content-Disposition"].startswith("attachment")
    assert download["X-Content-Type-Options"] == "nosniff"
    assert b"".join(download.streaming_content).startswith(b"# Notes")
    assert client_for("a", "admin").get(f"/o/{org_a.slug}/chat/files/{attachment.token}/").status_code == 404


def test_unsupported_file_is_refused_with_a_clear_message(client_for, org_a, providers, send):
    upload = SimpleUploadedFile("page.txt", b"<!doctype html><script>alert(1)</script>", content_type="text/plain")
    response = send(client_for("a"), org_a, "read this", files=upload)
    assert response.status_code == 400
    assert "This file type is not supported" in response.content.decode()
    assert providers["openai"].count == 0


def test_image_needs_a_vision_model(client_for, org_a, providers, send):
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    response = send(client_for("a"), org_a, "what is this?", model="deepseek/deepseek-chat",
                    files=SimpleUploadedFile("x.png", png))
    # DeepSeek is not configured here, so the picker refuses it before looking at images.
    assert response.status_code == 400
    response = send(client_for("a"), org_a, "what is this?", files=SimpleUploadedFile("x.png", png))
    assert response.status_code == 302
    content = providers["openai"].last.body["messages"][-1]["content"]
    assert any(part.get("type") == "image_url" for part in content)


def test_upload_over_the_plan_limit_is_refused(client_for, org_a, providers, send):
    big = SimpleUploadedFile("big.txt", b"a" * (5 * 1024 * 1024 + 1))
    response = send(client_for("a"), org_a, "read this", files=big)
    assert response.status_code == 400
    assert "larger than your plan allows (5 MB)" in response.content.decode()


# ---------------------------------------------------------------- numbers


def test_thread_page_with_500_messages_uses_a_bounded_number_of_queries(client_for, org_a, tenant_world,
                                                                       django_assert_max_num_queries):
    owner = tenant_world["a"]["owner"]
    with schema_context(org_a.schema_name):
        thread = Thread.objects.create(user=owner, model_id=CHEAP, title="Long")
        Message.objects.bulk_create([
            Message(thread=thread, role="user" if i % 2 == 0 else "assistant", content=f"message **{i}**")
            for i in range(500)
        ])
    client = client_for("a")
    client.get(f"/o/{org_a.slug}/chat/t/{thread.pk}/")  # warm caches
    with django_assert_max_num_queries(25):
        response = client.get(f"/o/{org_a.slug}/chat/t/{thread.pk}/")
    assert response.content.decode().count('data-testid="message"') == 500


def test_sidebar_with_1000_threads_uses_a_bounded_number_of_queries(client_for, org_a, tenant_world,
                                                                   django_assert_max_num_queries):
    owner = tenant_world["a"]["owner"]
    with schema_context(org_a.schema_name):
        Thread.objects.bulk_create([Thread(user=owner, model_id=CHEAP, title=f"Thread {i}") for i in range(1000)])
        total = Thread.objects.filter(user=owner).count()  # other tests may have committed a few
    pages = -(-total // 50)
    client = client_for("a")
    with django_assert_max_num_queries(25):
        home = client.get(f"/o/{org_a.slug}/chat/")
    assert home.content.decode().count("/chat/t/") == 50 and "Load more" in home.content.decode()
    with django_assert_max_num_queries(12):
        page = client.get(f"/o/{org_a.slug}/chat/threads/", {"page": pages - 1})
    assert page.content.decode().count("/chat/t/") == 50 and "Load more" in page.content.decode()
    last = client.get(f"/o/{org_a.slug}/chat/threads/", {"page": pages}).content.decode()
    assert "Load more" not in last and last.count("/chat/t/") == total - 50 * (pages - 1)


def test_credits_entries_for_one_answer(client_for, org_a, providers, send):
    send(client_for("a"), org_a, "ledger please")
    answer = messages_of(org_a, latest_thread(org_a))[-1]
    kinds = list(CreditEntry.objects.filter(idempotency_key__startswith=f"chat:{org_a.schema_name}:{answer.pk}:")
                 .order_by("id").values_list("kind", flat=True))
    assert kinds == ["reserve", "release", "debit"]


def test_deleting_an_account_deletes_its_conversations_everywhere(org_a, tenant_world):
    from accounts.models import User
    from tenants.models import Membership

    person = User.objects.create_user(email="leaving@example.com", password="correct-horse-battery")
    Membership.objects.create(user=person, organization=org_a, role="member")
    with schema_context(org_a.schema_name):
        thread = Thread.objects.create(user=person, model_id=CHEAP, title="Mine")
        Message.objects.create(thread=thread, role="user", content="bye")
        kept = Thread.objects.create(user=tenant_world["a"]["owner"], model_id=CHEAP, title="Not mine")
    person.delete()
    with schema_context(org_a.schema_name):
        assert not Thread.objects.filter(pk=thread.pk).exists()
        assert Thread.objects.filter(pk=kept.pk).exists()


def test_a_refused_question_keeps_its_files_for_the_retry(client_for, org_a, providers, send):
    balance = BillingAccount.objects.get(pk=org_a.pk).credits
    BillingAccount.objects.filter(pk=org_a.pk).update(credits=0)
    upload = SimpleUploadedFile("facts.txt", b"The answer is 7.")
    refused = send(client_for("a"), org_a, "What is the answer?", files=upload)
    assert refused.status_code == 400
    with schema_context(org_a.schema_name):
        attachment = Attachment.objects.get(filename="facts.txt", message__isnull=True)
    page = refused.content.decode()
    assert f'name="attachments" value="{attachment.token}"' in page and "facts.txt" in page
    BillingAccount.objects.filter(pk=org_a.pk).update(credits=balance)
    retried = send(client_for("a"), org_a, "What is the answer?", attachments=attachment.token)
    assert retried.status_code == 302
    assert "The answer is 7." in providers["openai"].last.body["messages"][-1]["content"]


def lost_answer(org, owner) -> tuple[Message, str, str]:
    """A pending answer with its hold taken, whose task never ran; its stream and billing keys."""
    from billing.ledger import credit_reserve

    with schema_context(org.schema_name):
        thread = Thread.objects.create(user=owner, model_id=CHEAP)
        Message.objects.create(thread=thread, role="user", content="anyone?")
        answer = Message.objects.create(thread=thread, role="assistant", status="pending", model_id=CHEAP,
                                        max_tokens=100)
        key, billing_key = answer.stream_key, answer.billing_key  # named after the schema
    credit_reserve(organization=org, amount=Decimal("1"), key=billing_key)
    return answer, key, billing_key


def test_an_answer_whose_task_was_lost_is_closed_and_its_hold_released(org_a, tenant_world, settings):
    from chat.services import PENDING_SET

    answer, key, billing_key = lost_answer(org_a, tenant_world["a"]["owner"])
    redis_client().zadd(PENDING_SET, {key: time.time() - settings.CHAT_PENDING_TIMEOUT - 1})
    assert tasks.generations_reap() == 1
    with schema_context(org_a.schema_name):
        answer.refresh_from_db()
    assert answer.status == "failed" and "could not start" in answer.error
    assert "too many answers" not in answer.error  # nothing else was running: the task was lost
    assert CreditReservation.objects.get(key=billing_key).status == "released"
    assert redis_client().zscore(PENDING_SET, key) is None


def test_a_send_sent_again_with_its_token_is_answered_once(client_for, org_a, tenant_world, providers,
                                                           django_capture_on_commit_callbacks):
    """The composer names each send (send_token). When the answer to a send that went through is lost on the way
    back (a 503 from a busy server after the commit) the page sends it again: the same exchange comes back,
    with one question, one answer and one hold, for a thread and for a new conversation alike."""
    from chat.services import SEND_TOKEN_SECONDS

    client = client_for("a")
    with schema_context(org_a.schema_name):
        thread = Thread.objects.create(user=tenant_world["a"]["owner"], model_id=CHEAP, title="once",
                                       title_is_auto=False)
    page = client.get(f"/o/{org_a.slug}/chat/t/{thread.pk}/").content.decode()
    token = re.search(r'name="send_token" value="([0-9a-f]{32})"', page).group(1)
    form = {"content": "Only once, please", "send_token": token}
    url = f"/o/{org_a.slug}/chat/t/{thread.pk}/send/"
    with django_capture_on_commit_callbacks(execute=False):
        first = client.post(url, form, HTTP_HX_REQUEST="true")
        again = client.post(url, form, HTTP_HX_REQUEST="true")
    assert first.status_code == again.status_code == 200
    answer_id = int(re.search(r'data-stream-url="[^"]*/m/(\d+)/events/', first.content.decode()).group(1))
    assert f"/m/{answer_id}/events/" in again.content.decode() and again["HX-Trigger"] == "chat-sent"
    questions, answers = (messages_of(org_a, thread)[index::2] for index in (0, 1))
    assert [q.content for q in questions] == ["Only once, please"] and len(answers) == 1
    with schema_context(org_a.schema_name):
        billing_key = answers[0].billing_key
    assert CreditReservation.objects.filter(key=billing_key).count() == 1
    assert redis_client().ttl(f"chat:sent:{org_a.schema_name}:{tenant_world['a']['owner'].pk}:{token}") <= \
        SEND_TOKEN_SECONDS
    # The same token in another thread is another send.
    with schema_context(org_a.schema_name):
        elsewhere = Thread.objects.create(user=tenant_world["a"]["owner"], model_id=CHEAP, title="elsewhere",
                                          title_is_auto=False)
    with django_capture_on_commit_callbacks(execute=False):
        other = client.post(f"/o/{org_a.slug}/chat/t/{elsewhere.pk}/send/", form, HTTP_HX_REQUEST="true")
    assert other.status_code == 200 and [m.content for m in messages_of(org_a, elsewhere)][0] == "Only once, please"

    # A new conversation: its retry opens the same thread instead of starting a second one.
    new = {"model": CHEAP, "content": "A new one, once", "send_token": "f" * 32}
    with django_capture_on_commit_callbacks(execute=False):
        started = client.post(f"/o/{org_a.slug}/chat/new/", new)
        retried = client.post(f"/o/{org_a.slug}/chat/new/", new)
    assert started.status_code == retried.status_code == 302 and started["Location"] == retried["Location"]


def test_answers_share_the_provider_connection(client_for, org_a, tenant_world, providers, send):
    """Every answer of a worker process streams on one long-lived event loop (chat.loop): the second answer
    reuses the first one's connection to the provider instead of opening (in production: a TLS handshake) its
    own."""
    with schema_context(org_a.schema_name):
        thread = Thread.objects.create(user=tenant_world["a"]["owner"], model_id=CHEAP, title="reuse",
                                       title_is_auto=False)
    before = providers["openai"].count
    for question in ("First?", "Second?"):
        assert send(client_for("a"), org_a, question, thread=thread).status_code == 302
        _question, answer = messages_of(org_a, thread)[-2:]
        assert answer.status == "complete"
    assert providers["openai"].count - before == 2
    assert providers["openai"].connections == 1


def test_a_send_whose_process_died_before_queueing_its_answer_is_closed_by_the_reaper(
        client_for, org_a, providers, settings, django_capture_on_commit_callbacks):
    """The answer is watched before the send commits: a process that dies between the commit and the enqueue
    (on-commit callbacks never run) leaves it to the reaper, hold released, thread free again."""
    from chat.services import PENDING_SET

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client_for("a").post(f"/o/{org_a.slug}/chat/new/", {"model": CHEAP, "content": "Anyone?"})
    assert response.status_code == 302, response.content[:500]
    assert callbacks, "the enqueue is an on-commit callback, and it never ran"
    thread = latest_thread(org_a)
    _question, answer = messages_of(org_a, thread)
    with schema_context(org_a.schema_name):
        key, billing_key = answer.stream_key, answer.billing_key
    assert answer.status == "pending" and redis_client().zscore(PENDING_SET, key) is not None
    assert CreditReservation.objects.get(key=billing_key).status == "open"
    settings.CHAT_PENDING_TIMEOUT = 0.2
    time.sleep(0.3)
    assert tasks.generations_reap() == 1
    with schema_context(org_a.schema_name):
        answer.refresh_from_db()
    assert answer.status == "failed"
    assert CreditReservation.objects.get(key=billing_key).status == "released"
    assert BillingAccount.objects.get(pk=org_a.pk).credits == ledger_sum(organization=org_a)
    assert redis_client().zscore(PENDING_SET, key) is None


def test_the_reaper_goes_past_entries_it_cannot_close(org_a, tenant_world, settings, caplog):
    """An organization deleted with a stale entry, and an entry that fails, never keep the reaper from a lost
    answer behind them."""
    from chat.generation import ACTIVE_SET
    from chat.services import PENDING_SET

    answer, key, billing_key = lost_answer(org_a, tenant_world["a"]["owner"])
    old = time.time() - settings.CHAT_PENDING_TIMEOUT - settings.CHAT_HEARTBEAT_TIMEOUT - 60
    gone, broken = "chat:gen:org_deleted_meanwhile:1", f"chat:gen:{org_a.schema_name}:not-a-number"
    redis_client().zadd(PENDING_SET, {gone: old - 2, broken: old - 1, key: old})
    redis_client().zadd(ACTIVE_SET, {gone: old})
    try:
        assert tasks.generations_reap() == 1
        with schema_context(org_a.schema_name):
            answer.refresh_from_db()
        assert answer.status == "failed"
        assert CreditReservation.objects.get(key=billing_key).status == "released"
        assert redis_client().zscore(PENDING_SET, gone) is None and redis_client().zscore(ACTIVE_SET, gone) is None
        assert redis_client().zscore(PENDING_SET, broken) is not None  # tried again next time, and logged
        assert f"{broken} could not be closed" in caplog.text
    finally:
        redis_client().zrem(PENDING_SET, broken, gone, key)
        redis_client().zrem(ACTIVE_SET, gone)


def test_a_pending_watch_whose_send_rolled_back_is_dropped(org_a, tenant_world):
    from chat.services import PENDING_SET

    key = f"chat:gen:{org_a.schema_name}:987654321"  # an answer that never committed
    redis_client().zadd(PENDING_SET, {key: time.time() - 3600})
    tasks.generations_reap()
    assert redis_client().zscore(PENDING_SET, key) is None


def test_an_answer_waiting_behind_the_organizations_cap_ends_failed_within_the_bound(
        client_for, org_a, providers, send, settings):
    """Waiting its turn keeps the time it was queued, so the reaper closes it CHAT_PENDING_TIMEOUT later,
    hold released, balance equal to the ledger, and the thread takes the next question."""
    from billing.ratelimits import slot_acquire, slot_release
    from billing.selectors import entitlements_for
    from chat.services import PENDING_SET

    cap = entitlements_for(org_a).concurrent_answers
    held = [slot_acquire(kind=generation.SLOT_KIND, organization_id=org_a.pk, limit=cap, lease_seconds=60)
            for _ in range(cap)]  # the organization's answers at once are all running
    try:
        assert all(held)
        assert send(client_for("a"), org_a, "Anyone free?").status_code == 302
        thread = latest_thread(org_a)
        _question, answer = messages_of(org_a, thread)
        with schema_context(org_a.schema_name):
            key, billing_key = answer.stream_key, answer.billing_key
        queued = redis_client().zscore(PENDING_SET, key)
        assert answer.status == "pending" and queued is not None
        with schema_context(org_a.schema_name):
            assert generation.answer_generate(answer.pk) is False  # its task asks again: still no slot
        assert redis_client().zscore(PENDING_SET, key) == queued  # the wait is not renewed

        settings.CHAT_PENDING_TIMEOUT = 0.2
        time.sleep(0.3)
        assert tasks.generations_reap() == 1
        with schema_context(org_a.schema_name):
            answer.refresh_from_db()
        assert answer.status == "failed" and "could not start in time (too many answers at once)" in answer.error
        assert CreditReservation.objects.get(key=billing_key).status == "released"
        assert BillingAccount.objects.get(pk=org_a.pk).credits == ledger_sum(organization=org_a)
        # A worker that finally gets a slot finds it closed and leaves it so.
        for slot in held:
            slot_release(slot)
        with schema_context(org_a.schema_name):
            assert generation.answer_generate(answer.pk) is True
            answer.refresh_from_db()
        assert answer.status == "failed" and providers["openai"].count == 0
    finally:
        for slot in filter(None, held):
            slot_release(slot)
    providers["openai"].answer = Answer(["Now", " yes"])
    assert send(client_for("a"), org_a, "And now?", thread=thread).status_code == 302
    _q1, _a1, _q2, answer = messages_of(org_a, thread)
    assert (answer.status, answer.content) == ("complete", "Now yes")


def test_a_reaped_answer_page_says_why_in_the_readers_language(client_for, org_a, tenant_world, settings):
    from chat.services import PENDING_SET

    with schema_context(org_a.schema_name):
        thread = Thread.objects.create(user=tenant_world["a"]["owner"], model_id=CHEAP)
        Message.objects.create(thread=thread, role="user", content="anyone?")
        answer = Message.objects.create(thread=thread, role="assistant", status="pending", model_id=CHEAP,
                                        max_tokens=100)
        key = answer.stream_key
    redis_client().zadd(PENDING_SET, {key: time.time() - settings.CHAT_PENDING_TIMEOUT - 1})
    assert tasks.generations_reap() == 1
    url = f"/o/{org_a.slug}/chat/t/{thread.pk}/"
    page = client_for("a").get(url).content.decode()
    assert "The answer could not start in time. Ask again." in page  # nothing else ran: its task was lost
    User.objects.filter(pk=tenant_world["a"]["owner"].pk).update(language="pt-br")  # rolled back after the test
    page = client_for("a").get(url).content.decode()
    assert "A resposta não pôde começar a tempo. Pergunte de novo." in page


def test_the_sent_exchange_shows_its_question_when_another_thread_took_the_id_between(client_for, org_a,
                                                                                       tenant_world):
    """Message ids are shared by every thread of the organization: under load another send's message lands
    between a question and its answer. The exchange the composer gets back still shows both."""
    from chat.services import send_remember

    owner = tenant_world["a"]["owner"]
    client = client_for("a")
    with schema_context(org_a.schema_name):
        thread = Thread.objects.create(user=owner, model_id=CHEAP, title="mine", title_is_auto=False)
        other = Thread.objects.create(user=owner, model_id=CHEAP, title="other", title_is_auto=False)
        question = Message.objects.create(thread=thread, role="user", content="Between us?")
        Message.objects.create(thread=other, role="user", content="Someone else's")
        answer = Message.objects.create(thread=thread, role="assistant", status="pending", model_id=CHEAP)
        send_remember(user=owner, token="f" * 32, thread=thread, answer=answer)
    assert answer.pk != question.pk + 1
    response = client.post(f"/o/{org_a.slug}/chat/t/{thread.pk}/send/",
                           {"content": "Between us?", "send_token": "f" * 32}, HTTP_HX_REQUEST="true")
    page = response.content.decode()
    assert response.status_code == 200 and "Between us?" in page and "Someone else" not in page
    assert f'id="message-{question.pk}"' in page and f'id="message-{answer.pk}"' in page
