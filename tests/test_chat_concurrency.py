"""The chat's send and stream paths are bounded (issue 12, item 2), through the real server.

- a person holds at most CHAT_STREAMS_PER_USER answer streams open (all tabs, every process): the next
  gets 429 with Retry-After, and closing one frees its place;
- at most CHAT_SEND_CONCURRENCY sends run at once in a process; one that gets no turn within
  CHAT_SEND_WAIT_SECONDS is refused 503 with Retry-After before anything is written;
- a send costs a fixed number of queries, however long the thread.
"""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal

import httpx
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import schema_context

from chat.models import Message, Thread
from chat.streams import stream_token

from .fake_llm import FakeOpenAI
from .servers import in_thread, start_live_server
from .test_chat_streaming import threads_remove
from .test_db_pool import psycopg_watch, sign_in, wait_until_waiting_on_the_lock

DEMO = "demo/prumo-demo"
PRICED = "openai/gpt-4.1-mini"  # basic tier: the Free plan may use it


@pytest.fixture
def streaming_answers(tenant_world, django_db_blocker):
    """Three answers of owner-a marked streaming (nobody writes them: their streams stay open)."""
    org, owner = tenant_world["a"]["org"], tenant_world["a"]["owner"]
    made = []

    def make():
        with schema_context(org.schema_name):
            for _ in range(3):
                thread = Thread.objects.create(user=owner, model_id=DEMO, title="streams", title_is_auto=False)
                Message.objects.create(thread=thread, role="user", content="?")
                answer = Message.objects.create(thread=thread, role="assistant", status="streaming", model_id=DEMO,
                                                max_tokens=10)
                made.append((thread.pk, answer.pk))

    with django_db_blocker.unblock():
        make()
    yield org, [answer for _thread, answer in made]
    with django_db_blocker.unblock():
        threads_remove(org, [thread for thread, _answer in made])


@pytest.mark.slow
def test_a_person_holds_at_most_their_share_of_open_streams(streaming_answers, test_database_url, redis_url,
                                                             tmp_path, tenant_world):
    org, answers = streaming_answers
    server = start_live_server(database_url=test_database_url, redis_url=redis_url, workdir=tmp_path,
                               env_extra={"CHAT_STREAMS_PER_USER": "2"})
    try:
        cookies, _token = sign_in(server.url, "owner-a@example.com")
        owner = tenant_world["a"]["owner"]

        def page_url(answer: int) -> str:  # as the page gives it: served by chat.stream_direct
            token = stream_token(user_id=owner.pk, session_key=cookies["sessionid"], slug=org.slug,
                                 schema=org.schema_name, message_id=answer)
            return f"/o/{org.slug}/chat/m/{answer}/events/?s={token}"

        async def scenario() -> tuple[list[int], httpx.Response, httpx.Response, int]:
            async with httpx.AsyncClient(base_url=server.url, cookies=cookies, timeout=30) as client:
                opened = []
                for answer in answers[:2]:
                    stream = client.stream("GET", page_url(answer))
                    response = await stream.__aenter__()
                    opened.append((stream, response))
                third = await client.get(f"/o/{org.slug}/chat/m/{answers[2]}/events/")  # Django's view
                third_direct = await client.get(page_url(answers[2]))
                await opened[0][0].__aexit__(None, None, None)  # one tab closes its stream: its lease goes back
                await asyncio.sleep(0.5)
                async with client.stream("GET", page_url(answers[2])) as again:
                    reopened = again.status_code
                for stream, _response in opened[1:]:
                    await stream.__aexit__(None, None, None)
                return [response.status_code for _stream, response in opened], third, third_direct, reopened

        statuses, third, third_direct, reopened = asyncio.run(scenario())
    finally:
        server.process.stop()
    assert statuses == [200, 200]
    for refused in (third, third_direct):  # one share, whichever route serves the stream
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "5"
        assert "Too many answers are open" in refused.text
    assert reopened == 200


@pytest.mark.slow
def test_a_send_that_gets_no_turn_is_refused_with_503_before_anything_is_written(
        tenant_world, test_database_url, redis_url, tmp_path, django_db_blocker):
    """One send at a time, blocked on a row lock the test holds; the next send waits its 0.3 s and gets 503."""
    org, owner = tenant_world["a"]["org"], tenant_world["a"]["owner"]

    def threads_make():
        with schema_context(org.schema_name):
            return [Thread.objects.create(user=owner, model_id=DEMO, title=title, title_is_auto=False).pk
                    for title in ("held", "second")]

    with django_db_blocker.unblock():
        held, second = threads_make()
    server = start_live_server(database_url=test_database_url, redis_url=redis_url, workdir=tmp_path, env_extra={
        "CHAT_SEND_CONCURRENCY": "1", "CHAT_SEND_WAIT_SECONDS": "0.3"})
    try:
        cookies, token = sign_in(server.url, owner.email)
        headers = {"X-CSRFToken": token, "Referer": server.url, "HX-Request": "true"}

        def post(thread_id: int) -> httpx.Response:
            return httpx.post(f"{server.url}/o/{org.slug}/chat/t/{thread_id}/send/", data={"content": "hi"},
                              cookies=cookies, headers=headers, timeout=60)

        with psycopg_watch() as lock:
            lock.autocommit = False
            lock.execute(f'SELECT 1 FROM "{org.schema_name}".chat_thread WHERE id = %s FOR UPDATE', (held,))
            first: list[httpx.Response] = []
            blocked = threading.Thread(target=lambda: first.append(post(held)))
            blocked.start()
            wait_until_waiting_on_the_lock(lock)
            refused = post(second)
            lock.rollback()
        blocked.join(30)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
        assert "Prumo is busy" in refused.text
        assert first[0].status_code == 200
        with django_db_blocker.unblock(), schema_context(org.schema_name):
            assert Message.objects.filter(thread_id=second).count() == 0  # nothing written
            assert Message.objects.filter(thread_id=held, role="user").count() == 1
        assert post(second).status_code == 200  # its turn now
    finally:
        server.process.stop()
        with django_db_blocker.unblock():
            in_thread(lambda: threads_remove(org, [held, second]))


def thread_with_history(org, owner, model: str, exchanges: int) -> Thread:
    """A thread of `owner` with `exchanges` finished questions and answers."""
    with schema_context(org.schema_name):
        thread = Thread.objects.create(user=owner, model_id=model, title="count", title_is_auto=False)
        for number in range(exchanges):
            Message.objects.create(thread=thread, role="user", content=f"q{number}")
            Message.objects.create(thread=thread, role="assistant", status="complete", content=f"a{number}",
                                   model_id=model)
    return thread


def test_a_send_costs_the_same_queries_however_long_the_thread(client_for, org_a, tenant_world,
                                                                  django_capture_on_commit_callbacks):
    """Counted with the generation queued, not run (its queries are the worker's)."""
    owner = tenant_world["a"]["owner"]
    client = client_for("a")
    counts = {}
    for history in (0, 20):
        thread = thread_with_history(org_a, owner, DEMO, history)
        client.get(f"/o/{org_a.slug}/chat/t/{thread.pk}/")  # session and caches warm, as on a real page
        with django_capture_on_commit_callbacks(execute=False), CaptureQueriesContext(connection) as queries:
            response = client.post(f"/o/{org_a.slug}/chat/t/{thread.pk}/send/", {"content": "and now?"},
                                   HTTP_HX_REQUEST="true")
        assert response.status_code == 200
        counts[history] = len(queries)
    assert counts[0] == counts[20], counts
    assert counts[0] == SEND_QUERIES, "\n".join(query["sql"][:150] for query in queries.captured_queries)


# Session, user, and the membership with its organization (3) and two search_path SETs; the thread, then its lock
# with the busy check in one statement; the question, the history for the estimate and its files, the answer
# (inserted with its estimate), the thread's date; the partial's two reads; a savepoint and its release. Plan,
# provider keys, models and prices come from the organization's snapshot (chat.snapshot), as on /v1; the demo model
# is free: no hold.
SEND_QUERIES = 16


def test_an_answer_costs_its_worker_the_same_queries_however_long_the_thread(client_for, org_a, tenant_world,
                                                                              django_capture_on_commit_callbacks,
                                                                              settings):
    """A priced answer run by its task (hold settled, usage metered), counted from the claim to the close, in a
    worker that has run one before (its per-process lookups made, as in production)."""
    from billing.ledger import credit_grant

    fake = FakeOpenAI().start()
    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, "openai": {"base_url": fake.url, "api_key": "sk-test"}}
    owner = tenant_world["a"]["owner"]
    client = client_for("a")
    credit_grant(organization=org_a, amount=Decimal("100"), key="answer-count", description="test")
    counts = {}
    try:
        for history in (1, 0, 20):  # the first warms the process up
            thread = thread_with_history(org_a, owner, PRICED, history)
            with django_capture_on_commit_callbacks(execute=False) as queued:
                response = client.post(f"/o/{org_a.slug}/chat/t/{thread.pk}/send/", {"content": "and now?"},
                                       HTTP_HX_REQUEST="true")
            assert response.status_code == 200
            with schema_context(org_a.schema_name), CaptureQueriesContext(connection) as queries:
                for callback in queued:
                    callback()  # the generation task, run eagerly
            with schema_context(org_a.schema_name):
                answer = Message.objects.get(thread=thread, role="assistant", id__gt=thread.messages.order_by(
                    "-id").values_list("id", flat=True)[1])
            assert answer.status == "complete" and answer.credits > 0
            counts[history] = len(queries)
    finally:
        fake.stop()
    assert counts[0] == counts[20], counts
    assert counts[0] == ANSWER_QUERIES, "\n".join(query["sql"][:150] for query in queries.captured_queries)


# The search_path; the answer and its thread, the claim, the history with its files (chat.context.HISTORY_SQL);
# then in one transaction
# (a savepoint here) the answer locked with its thread and owner, the hold, its settlement in one statement (in a
# savepoint of its own) and the hold read back, the usage event, the answer and the thread's date, and the webhook
# endpoints that want `chat.answer.completed` (none here: nothing written). The plan, the provider keys and the price
# come from the snapshot, the organization's id from the schema's (once a process).
ANSWER_QUERIES = 16
