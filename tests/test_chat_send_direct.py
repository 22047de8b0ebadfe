"""A thread's composer send served without Django's request cycle (chat.send_direct), in this process: config.asgi's
application behind httpx's ASGI transport, real PostgreSQL and Redis, a fake OpenAI upstream answering, the
generation run eagerly by the send. Everything the direct route does not serve as Django would is left to
Django's view: each refusal is checked to have been answered by Django (its X-Request-ID) and to have written
nothing twice."""

from __future__ import annotations

import re
import secrets
import uuid
from decimal import Decimal
from importlib import import_module

import httpx
import pytest
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.core.files.base import ContentFile
from django.db import connection
from django.middleware.csrf import _get_new_csrf_string, _mask_cipher_secret
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import schema_context

from billing.models import BillingAccount, CreditReservation
from billing.selectors import ledger_sum
from chat.context import context_build
from chat.models import Attachment, Message, Thread
from chat.send_direct import send_grant
from chat.services import thread_create
from core.redis_clients import redis_client
from tenants.models import Membership, Role

from .fake_llm import Answer, FakeOpenAI
from .orgs import organization_drop
from .security.inprocess_v1 import CountingConnection, balance_set, openai_at, run, starter_organization

MODEL = "openai/gpt-4.1-mini"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")
STREAM_URL = re.compile(r'data-stream-url="([^"]+)"')


@pytest.fixture(scope="module")
def upstream():
    fake = FakeOpenAI(Answer(["Direct", " answer"], input_tokens=12, output_tokens=2)).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def org(tenant_world, django_db_blocker):
    """A committed organization on Starter with credits; owner-a owns it, viewer-a is its viewer."""
    with django_db_blocker.unblock():
        org = starter_organization(tenant_world["a"]["owner"], credits="100", name="Direct")
        Membership.objects.create(user=tenant_world["a"]["viewer"], organization=org, role=Role.VIEWER)
    yield org
    with django_db_blocker.unblock():
        organization_drop(org)


@pytest.fixture
def direct(settings, upstream, monkeypatch, django_db_blocker):
    with django_db_blocker.unblock():
        openai_at(settings, upstream.url, monkeypatch)
        yield


def session_of(user) -> str:
    """A signed-in session of `user`, as a login leaves it."""
    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return session.session_key


class Person:
    """A signed-in browser of `user`: its session, CSRF cookie, and the composer's fields of a thread page."""

    def __init__(self, user, org) -> None:
        self.user, self.org = user, org
        self.session = session_of(user)
        self.csrf_secret = _get_new_csrf_string()
        self.grant = send_grant(user_id=user.pk, organization=org, session_key=self.session, language="en")

    def thread(self, **fields) -> Thread:
        with schema_context(self.org.schema_name):
            return thread_create(user=self.user, model_id=MODEL, **fields)

    def form(self, content: str, **extra) -> dict:
        return {"csrfmiddlewaretoken": _mask_cipher_secret(self.csrf_secret), "content": content, "model": MODEL,
                "send_token": secrets.token_hex(16), "send_grant": self.grant, **extra}

    def send(self, thread_id: int, form: dict, *, slug: str | None = None, multipart: bool = False) -> httpx.Response:
        from config.asgi import application

        async def post():
            transport = httpx.ASGITransport(app=application)
            cookies = {"sessionid": self.session, "csrftoken": self.csrf_secret}
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver", cookies=cookies) as client:
                url = f"/o/{slug or self.org.slug}/chat/t/{thread_id}/send/"
                headers = {"HX-Request": "true", "Referer": f"http://testserver/o/{self.org.slug}/chat/"}
                if multipart:  # as the composer posts (hx-encoding multipart/form-data), an empty file input
                    return await client.post(url, data=form, files={"files": ("", b"", "application/octet-stream")},
                                             headers=headers)
                return await client.post(url, data=form, headers=headers)

        return run(post)


def messages_of(org, thread: Thread) -> list[Message]:
    with schema_context(org.schema_name):
        return list(Message.objects.filter(thread=thread).order_by("id"))


def served_by_django(response: httpx.Response) -> bool:
    return "cross-origin-opener-policy" in response.headers  # Django's SecurityMiddleware: the direct route sends none


def test_the_composer_sends_in_two_round_trips_without_django_and_the_answer_completes(direct, org, tenant_world):
    person = Person(tenant_world["a"]["owner"], org)
    thread = person.thread()
    before = BillingAccount.objects.get(pk=org.pk).credits
    CountingConnection.log = []
    with CaptureQueriesContext(connection) as django_queries:
        response = person.send(thread.pk, person.form("What does a direct send write?"), multipart=True)
    assert response.status_code == 200, response.text[:2000]
    assert not served_by_django(response)
    assert response.headers["hx-trigger"] == "chat-sent"
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])  # as Django would name it
    # One pipeline, synced twice: BEGIN, the checks, the history; then the hold, the question, the answer, the
    # thread touched, COMMIT. Nothing on Django's own connection.
    assert CountingConnection.log == ["pipeline"] + ["pipelined statement"] * 8, CountingConnection.log
    assert [query["sql"] for query in django_queries.captured_queries] == []
    question, answer = messages_of(org, thread)
    assert (question.role, question.content) == ("user", "What does a direct send write?")
    assert answer.role == "assistant" and question.pk < answer.pk
    # The page gets the exchange, the answer's stream URL carrying its token.
    assert f'id="message-{question.pk}"' in response.text and f'id="message-{answer.pk}"' in response.text
    assert STREAM_URL.search(response.text)[1].startswith(f"/o/{org.slug}/chat/m/{answer.pk}/events/?s=")
    # The eager generation ran it: complete, billed, its hold settled; the ledger adds up.
    assert (answer.status, answer.content) == ("complete", "Direct answer")
    with schema_context(org.schema_name):
        reservation = CreditReservation.objects.get(key=answer.billing_key)
    assert (reservation.status, reservation.actual, reservation.organization_id) == ("settled", answer.credits, org.pk)
    assert 0 < answer.credits < reservation.amount
    account = BillingAccount.objects.get(pk=org.pk)  # the answer and the thread's title were paid for
    assert account.credits < before - answer.credits and account.credits == ledger_sum(organization=org)


def test_the_hold_is_estimated_by_the_rule_the_orm_path_uses(direct, org, tenant_world):
    """History with a text file (cut), an image and a failed answer: the estimate equals context_build's."""
    person = Person(tenant_world["a"]["owner"], org)
    thread = person.thread(system_prompt="Answer in one line.")
    with schema_context(org.schema_name):
        asked = Message.objects.create(thread=thread, role="user", content="Read this file — ação, 多言語 ✓")
        for name, kind, content_type, text, truncated in (
                ("notes.md", "markdown", "text/markdown", "# Notes\n" + "linha ç " * 300, True),
                ("photo.png", "png", "image/png", "", False)):
            attachment = Attachment(thread=thread, message=asked, uploaded_by=person.user, token=uuid.uuid4().hex,
                                    filename=name, kind=kind, content_type=content_type, size=len(text), text=text,
                                    truncated=truncated)
            attachment.file.save(name, ContentFile(PNG if kind == "png" else text.encode()), save=False)
            attachment.save()
        Message.objects.create(thread=thread, role="assistant", content="Done.", status="complete", model_id=MODEL)
        Message.objects.create(thread=thread, role="assistant", content="", status="failed", model_id=MODEL)
    response = person.send(thread.pk, person.form("And now?"))
    assert response.status_code == 200 and not served_by_django(response), response.text[:500]
    answer = messages_of(org, thread)[-1]
    with schema_context(org.schema_name):
        expected = context_build(thread=Thread.objects.get(pk=thread.pk), answer=answer,
                                 model=answer_model(), load_images=False)[1]
    assert answer.prompt_tokens_estimate == expected > 700


def answer_model():
    from chat.catalog.models import Model

    return Model.objects.get(id=MODEL)


def test_without_a_valid_grant_for_its_session_django_serves_the_send(direct, org, tenant_world):
    person = Person(tenant_world["a"]["owner"], org)
    other_session = Person(tenant_world["a"]["owner"], org)
    for label, form in (("no grant", {**person.form("no grant"), "send_grant": ""}),
                        ("another session's", {**person.form("another"), "send_grant": other_session.grant}),
                        ("tampered", {**person.form("tampered"), "send_grant": person.grant[:-2] + "xx"})):
        thread = person.thread()
        response = person.send(thread.pk, form)
        assert response.status_code == 200, (label, response.text[:500])
        assert served_by_django(response), label
        assert [m.role for m in messages_of(org, thread)] == ["user", "assistant"], label


def test_a_member_of_another_organization_gets_404_and_nothing_is_written(direct, org, tenant_world):
    person = Person(tenant_world["a"]["owner"], org)
    thread = person.thread()
    outsider = Person(tenant_world["b"]["owner"], tenant_world["b"]["org"])
    # Their own organization's grant, on this organization's URL; and this organization's grant is not theirs.
    for form in (outsider.form("let me in"), {**outsider.form("let me in"), "send_grant": person.grant}):
        response = outsider.send(thread.pk, form, slug=org.slug)
        assert response.status_code == 404 and served_by_django(response)
    assert messages_of(org, thread) == []


def test_viewers_logged_out_sessions_and_other_peoples_threads_write_nothing(direct, org, tenant_world):
    owner = Person(tenant_world["a"]["owner"], org)
    thread = owner.thread()
    viewer = Person(tenant_world["a"]["viewer"], org)
    response = viewer.send(thread.pk, viewer.form("viewer's question"))
    assert response.status_code in (403, 404) and served_by_django(response)
    own = viewer.thread()
    response = viewer.send(own.pk, viewer.form("viewer in their own thread"))
    assert response.status_code == 403 and served_by_django(response)
    # Signed out: the session row is gone; the grant alone sends nothing.
    import_module(settings.SESSION_ENGINE).SessionStore(session_key=owner.session).delete()
    response = owner.send(thread.pk, owner.form("after logout"))
    assert served_by_django(response) and response.status_code in (302, 204, 404)
    assert messages_of(org, thread) == [] and messages_of(org, own) == []


def test_a_password_change_ends_the_other_sessions_sends(direct, org, tenant_world):
    member = tenant_world["a"]["member"]
    Membership.objects.get_or_create(user=member, organization=org, defaults={"role": Role.MEMBER})
    person = Person(member, org)
    thread = person.thread()
    member.set_password("a-new-and-long-password")
    member.save(update_fields=["password"])
    try:
        response = person.send(thread.pk, person.form("with an old session"))
        assert served_by_django(response) and response.status_code != 200
        assert messages_of(org, thread) == []
    finally:
        member.set_password("correct-horse-battery")
        member.save(update_fields=["password"])


def test_refusals_are_left_to_django_which_says_why_and_nothing_is_written_twice(direct, org, tenant_world):
    person = Person(tenant_world["a"]["owner"], org)
    thread = person.thread()
    # A busy thread: an answer is running.
    with schema_context(org.schema_name):
        Message.objects.create(thread=thread, role="assistant", content="", status="streaming", model_id=MODEL)
    response = person.send(thread.pk, person.form("while busy"))
    assert served_by_django(response) and "Wait for the current answer" in response.text
    assert len(messages_of(org, thread)) == 1
    # A balance that does not cover the hold: no question, no answer, no hold, the balance untouched.
    quiet = person.thread()
    balance_set(org, Decimal("0.0001"))
    try:
        window = f"rl:send:{org.pk}:{person.user.pk}"
        redis_client().delete(window)
        response = person.send(quiet.pk, person.form("too expensive"))
        assert served_by_django(response) and "Not enough credits" in response.text
        assert messages_of(org, quiet) == []
        assert BillingAccount.objects.get(pk=org.pk).credits == Decimal("0.0001") == ledger_sum(organization=org)
        assert int(redis_client().get(window)) == 1  # counted once toward the plan's sends a minute, not twice
    finally:
        balance_set(org, Decimal("100"))


def test_a_retried_send_answers_the_same_exchange_once(direct, org, tenant_world):
    person = Person(tenant_world["a"]["owner"], org)
    thread = person.thread()
    form = person.form("sent twice (the first answer lost on the way back)")
    first = person.send(thread.pk, form)
    again = person.send(thread.pk, form)
    assert not served_by_django(first) and served_by_django(again)
    ids = re.findall(r'id="message-(\d+)"', first.text)
    assert re.findall(r'id="message-(\d+)"', again.text) == ids
    assert [str(m.pk) for m in messages_of(org, thread)] == ids


def test_files_go_to_django(direct, org, tenant_world):
    person = Person(tenant_world["a"]["owner"], org)
    thread = person.thread()
    from config.asgi import application

    async def post():
        transport = httpx.ASGITransport(app=application)
        cookies = {"sessionid": person.session, "csrftoken": person.csrf_secret}
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", cookies=cookies) as client:
            return await client.post(f"/o/{org.slug}/chat/t/{thread.pk}/send/", data=person.form("with a file"),
                                     files={"files": ("notes.txt", b"some notes", "text/plain")},
                                     headers={"HX-Request": "true"})

    response = run(post)
    assert response.status_code == 200 and served_by_django(response)
    question = messages_of(org, thread)[0]
    with schema_context(org.schema_name):
        assert [a.filename for a in question.attachments.all()] == ["notes.txt"]




def test_a_form_django_would_refuse_goes_to_django(direct, org, tenant_world, settings):
    """More fields than DATA_UPLOAD_MAX_NUMBER_FIELDS: the route does not fail on it, Django's view answers 400."""
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    person = Person(tenant_world["a"]["owner"], org)
    thread = person.thread()
    form = {**person.form("too many fields"), **{f"extra{n}": "x" for n in range(20)}}
    response = person.send(thread.pk, form, multipart=True)
    assert response.status_code == 400 and served_by_django(response)
    assert messages_of(org, thread) == []
