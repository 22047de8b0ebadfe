"""Uploads cannot pin a worker (issue 11, item 6).

A ~60 KB PDF whose 500 pages share one content stream of empty text operators kept pypdf busy
for ~90 s of CPU inside the web request (measured by hand on this machine: 10 pages took 1.8 s).
Now the request only stores the file (`pending`); a Celery task reads it in a child process with
a CPU-time limit and a content budget; the question waits (`waiting`) and is answered when the
file is read, or fails with the reason and its hold released when it cannot be.
"""

from __future__ import annotations

import re
import time
import zlib
from decimal import Decimal

import httpx
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django_tenants.utils import schema_context

from billing.models import BillingAccount, CreditEntry, UsageEvent
from chat.files import PdfLimits
from chat.models import Attachment, Message, Thread
from core.redis_clients import redis_client
from tenants.audit.services import Actor

from ..fake_llm import Answer, FakeOpenAI
from ..test_api import bearer, rate_limits_reset
from ..test_chat_files import pdf_bytes
from ..test_chat_streaming import SLUG, csrf_token, signed_in, threads_remove  # noqa: F401 (signed_in: fixture)

CHEAP = "openai/gpt-4.1-mini"
DEMO = "demo/prumo-demo"
OVER_LIMITS = "could not be read within the limits"
TRY_AGAIN = "Try a smaller file or paste the text."
WORKER_TIMEOUT = 60.0


def hostile_pdf(*, pages: int = 500, operators: int = 4400) -> bytes:
    """500 pages, one shared (compressed) content stream of `BT () Tj ET` repeated: no text, all parsing."""
    stream = zlib.compress(b"BT () Tj ET\n" * operators, 9)
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: (b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % (4 + n) for n in range(pages)) + b"] /Count %d"
            b" /Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>" % pages),
        3: b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
    }
    for n in range(pages):
        objects[4 + n] = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R >>"
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for number in sorted(objects):
        out += b"%010d 00000 n \n" % offsets[number]
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


HOSTILE = hostile_pdf()


@pytest.fixture
def openai(settings):
    server = FakeOpenAI().start()
    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, "openai": {"base_url": server.url, "api_key": "sk-platform"}}
    settings.LLM_READ_TIMEOUT = 2
    for key in redis_client().scan_iter("chat:*"):
        redis_client().delete(key)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path  # in-process uploads land here, not in the working tree


@pytest.fixture
def api(tenant_world, org_a):
    """A `chat` key of owner-a on the Starter plan (API access), in this test's transaction."""
    from billing.models import Plan
    from tenants.api_keys import api_key_create

    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="starter"))
    rate_limits_reset(org_a)
    raw = api_key_create(organization=org_a, name="uploads", scopes=["chat"], actor=Actor.system(),
                         user=tenant_world["a"]["owner"]).raw
    client, auth = Client(), bearer(raw)
    thread = client.post("/api/v1/threads/", {"model": DEMO}, content_type="application/json", **auth).json()
    return client, auth, f"/api/v1/threads/{thread['id']}/"


def ledger_kinds(org, answer: Message) -> list[str]:
    return list(CreditEntry.objects.filter(idempotency_key__startswith=f"chat:{org.schema_name}:{answer.pk}:")
                .order_by("id").values_list("kind", flat=True))


def balance(org) -> Decimal:
    return BillingAccount.objects.get(pk=org.pk).credits


def test_the_hostile_pdf_is_small_and_its_pages_share_one_stream():
    import io

    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(HOSTILE))
    assert 40_000 < len(HOSTILE) < 70_000
    assert len(reader.pages) == 500
    assert {page.get("/Contents").idnum for page in reader.pages} == {3}
    # 500 × 52,800 decoded bytes: far over the content budget, so no page is parsed at all.
    assert 500 * len(zlib.decompress(zlib.compress(b"BT () Tj ET\n" * 4400))) > PdfLimits.current().content_bytes


# ---------------------------------------------------------------- in process (tasks run when callbacks run)


def test_the_page_returns_before_reading_and_the_question_fails_with_the_reason(
        client_for, org_a, openai, django_capture_on_commit_callbacks):
    client, before = client_for("a"), balance(org_a)
    # The request's on-commit work (queueing the extraction) is held back: what the page shows is
    # what the request did by itself.
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = client.post(f"/o/{org_a.slug}/chat/new/", {
            "model": CHEAP, "content": "Summarize this report",
            "files": SimpleUploadedFile("report.pdf", HOSTILE, content_type="application/pdf")})
    assert response.status_code == 302
    with schema_context(org_a.schema_name):
        thread = Thread.objects.latest("id")
        question, answer = thread.messages.order_by("id")
        (attachment,) = question.attachments.all()
    assert (attachment.status, attachment.text, attachment.text_tokens) == ("pending", "", 0)
    assert answer.status == "waiting" and len(queued) >= 1
    # The hold covers the file's token budget until it is read.
    assert ledger_kinds(org_a, answer) == ["reserve"]
    page = client.get(response["Location"]).content.decode()
    assert "Reading the attached files…" in page and 'data-testid="file-reading"' in page

    with django_capture_on_commit_callbacks(execute=True):
        for callback in queued:
            callback()

    with schema_context(org_a.schema_name):
        attachment.refresh_from_db()
        answer.refresh_from_db()
    assert attachment.status == "failed" and OVER_LIMITS in attachment.error and TRY_AGAIN in attachment.error
    assert answer.status == "failed"
    assert answer.error == f"report.pdf: {attachment.error}"
    assert openai.count == 0  # never sent to the model
    assert ledger_kinds(org_a, answer) == ["reserve", "release"] and balance(org_a) == before
    assert not UsageEvent.objects.filter(request_id=answer.billing_key).exists()
    page = client.get(response["Location"]).content.decode()
    assert "could not be read within the limits" in page and "could not be read</span>" in page


def test_a_small_pdf_is_read_then_answered(client_for, org_a, openai, django_capture_on_commit_callbacks):
    openai.answer = Answer(["It is about ", "otters."], input_tokens=200, output_tokens=20)
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = client_for("a").post(f"/o/{org_a.slug}/chat/new/", {
            "model": CHEAP, "content": "What is this about?",
            "files": SimpleUploadedFile("otters.pdf", pdf_bytes("Otters hold hands while sleeping"))})
    assert response.status_code == 302
    with schema_context(org_a.schema_name):
        answer = Thread.objects.latest("id").messages.get(role="assistant")
    assert answer.status == "waiting" and openai.count == 0

    with django_capture_on_commit_callbacks(execute=True):
        for callback in queued:
            callback()

    with schema_context(org_a.schema_name):
        answer.refresh_from_db()
        attachment = Attachment.objects.get(message__thread=answer.thread_id)
    assert (attachment.status, attachment.text) == ("ready", "Otters hold hands while sleeping")
    assert (answer.status, answer.content) == ("complete", "It is about otters.")
    sent = openai.requests[0].body["messages"][-1]["content"]  # then the title's request
    assert "[Attached file: otters.pdf]" in sent and "Otters hold hands while sleeping" in sent
    assert ledger_kinds(org_a, answer) == ["reserve", "release", "debit"]


def test_the_cpu_limit_stops_a_pdf_the_content_budget_lets_through(api, settings, django_capture_on_commit_callbacks):
    settings.CHAT_PDF_CONTENT_BYTES = 10**9
    settings.CHAT_PDF_CPU_SECONDS = 1
    client, auth, url = api
    with django_capture_on_commit_callbacks(execute=False) as queued:
        uploaded = client.post(f"{url}attachments/", {"file": SimpleUploadedFile("slow.pdf", HOSTILE)}, **auth)
    assert uploaded.status_code == 201
    file = uploaded.json()
    assert (file["status"], file["text_tokens"], file["error"]) == ("pending", 0, "")
    sent = client.post(f"{url}messages/", {"content": "read it", "attachments": [file["id"]]},
                       content_type="application/json", **auth)
    assert sent.status_code == 202 and sent.json()["status"] == "waiting"

    with django_capture_on_commit_callbacks(execute=True):
        for callback in queued:
            callback()

    answer = client.get(f"{url}messages/{sent.json()['id']}/", **auth).json()
    assert answer["status"] == "failed"
    assert answer["error"] == ("slow.pdf: This PDF could not be read within the limits: reading it took too long. "
                               "Try a smaller file or paste the text.")
    (listed,) = client.get(f"{url}attachments/", **auth).json()["results"]
    assert listed["status"] == "failed" and "reading it took too long" in listed["error"]


def test_a_file_that_could_not_be_read_cannot_be_sent(api, django_capture_on_commit_callbacks):
    client, auth, url = api
    with django_capture_on_commit_callbacks(execute=True):  # read at once: refused by the content budget
        uploaded = client.post(f"{url}attachments/", {"file": SimpleUploadedFile("r.pdf", HOSTILE)}, **auth)
    file = client.get(f"{url}attachments/", **auth).json()["results"][0]
    assert uploaded.status_code == 201 and file["id"] == uploaded.json()["id"] and file["status"] == "failed"
    refused = client.post(f"{url}messages/", {"content": "read it", "attachments": [file["id"]]},
                          content_type="application/json", **auth)
    assert refused.status_code == 400 and OVER_LIMITS in refused.json()["detail"]
    assert client.get(f"{url}messages/", **auth).json()["results"] == []


def test_a_waiting_answer_can_be_stopped_or_reaped_and_its_hold_comes_back(
        client_for, org_a, openai, settings, django_capture_on_commit_callbacks):
    from chat import tasks
    from chat.services import PENDING_SET

    before = balance(org_a)
    answers = []
    for name in ("stop.pdf", "lost.pdf"):
        with django_capture_on_commit_callbacks(execute=False):  # the extraction is never queued
            client_for("a").post(f"/o/{org_a.slug}/chat/new/", {
                "model": CHEAP, "content": "read", "files": SimpleUploadedFile(name, pdf_bytes("Hello"))})
        with schema_context(org_a.schema_name):
            answer = Thread.objects.latest("id").messages.get(role="assistant")
            answers.append((answer, answer.stream_key))
    (stopped, _key), (lost, lost_key) = answers
    assert stopped.status == lost.status == "waiting" and balance(org_a) < before

    with django_capture_on_commit_callbacks(execute=True):
        assert client_for("a").post(f"/o/{org_a.slug}/chat/m/{stopped.pk}/stop/").status_code == 302
    # The reaper closes a waiting answer whose file was never read (its task was lost).
    redis_client().zadd(PENDING_SET, {lost_key: time.time() - settings.CHAT_PENDING_TIMEOUT - 1})
    assert tasks.generations_reap() == 1

    with schema_context(org_a.schema_name):
        stopped.refresh_from_db()
        lost.refresh_from_db()
    assert (stopped.status, lost.status) == ("stopped", "failed")
    assert ledger_kinds(org_a, stopped) == ledger_kinds(org_a, lost) == ["reserve", "release"]
    assert balance(org_a) == before and openai.count == 0


# ---------------------------------------------------------------- the live server and a real worker


@pytest.fixture
def chat_live(live_server_process, celery_worker_process, signed_in, tenant_world, django_db_blocker):  # noqa: F811
    base = live_server_process.url
    client = httpx.Client(base_url=base, cookies=signed_in, timeout=httpx.Timeout(10, read=30))
    made: list[int] = []

    def ask(question: str, name: str, data: bytes) -> int:
        home = f"/o/{SLUG}/chat/"
        token = csrf_token(client, home)
        response = client.post(f"/o/{SLUG}/chat/new/", data={"csrfmiddlewaretoken": token, "content": question,
                                                               "model": DEMO},
                               files={"files": (name, data, "application/pdf")}, headers={"Referer": f"{base}{home}"})
        assert response.status_code == 302, f"not sent ({response.status_code}): {response.text[:2000]}"
        thread_id = int(re.search(r"/chat/t/(\d+)/$", response.headers["location"]).group(1))
        made.append(thread_id)
        return thread_id

    def final(thread_id: int) -> tuple[Message, Attachment]:
        deadline = time.monotonic() + WORKER_TIMEOUT
        while True:
            with django_db_blocker.unblock(), schema_context(tenant_world["a"]["org"].schema_name):
                answer = Message.objects.get(thread_id=thread_id, role="assistant")
                attachment = Attachment.objects.get(message__thread_id=thread_id)
            if not answer.is_active:
                return answer, attachment
            assert time.monotonic() < deadline, (f"still {answer.status}; worker log:\n"
                                                 + celery_worker_process.process.log()[-5000:])
            time.sleep(0.2)

    yield ask, final
    client.close()
    with django_db_blocker.unblock():
        threads_remove(tenant_world["a"]["org"], made)


def test_a_real_worker_refuses_the_hostile_pdf_and_answers_a_small_one(chat_live, live_server_process,
                                                                       celery_worker_process):
    ask, final = chat_live
    hostile_thread = ask("Summarize this", "hostile.pdf", HOSTILE)
    small_thread = ask("What does it say?", "small.pdf", pdf_bytes("Prumo reads PDFs off the request path"))

    answer, attachment = final(hostile_thread)
    assert attachment.status == "failed" and answer.status == "failed"
    assert answer.error.startswith("hostile.pdf: This PDF could not be read within the limits")
    assert TRY_AGAIN in answer.error
    assert (answer.input_tokens, answer.output_tokens, answer.credits) == (0, 0, 0)

    answer, attachment = final(small_thread)
    assert (attachment.status, attachment.text) == ("ready", "Prumo reads PDFs off the request path")
    assert answer.status == "complete" and answer.content

    # The worker read both files; the web process read none.
    ran = re.compile(r"chat\.tasks\.attachment_extract\[[-0-9a-f]+\] succeeded")
    assert len(ran.findall(celery_worker_process.process.log())) >= 2
    assert not ran.search(live_server_process.process.log())
