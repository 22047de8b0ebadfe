"""Tracing (OpenTelemetry, core.tracing): off unless OTEL_EXPORTER_OTLP_ENDPOINT is set; when on, a /v1 call is one
trace (server, database, Redis, the provider call in the GenAI conventions, its HTTP request), and a chat send's
trace goes on in the Celery worker's tasks.

In this process spans go to OpenTelemetry's in-memory exporter. The web server and the worker are real processes
exporting OTLP over HTTP to a small receiver here (tests/fake_otlp.py), the wire their collector would see.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid

import httpx
import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from chat import v1
from core import tracing
from tenants.api_keys import api_key_create
from tenants.audit.services import Actor

from .fake_llm import Answer, FakeOpenAI
from .fake_otlp import FakeOtlp
from .orgs import organization_drop
from .security.inprocess_v1 import openai_at, run, starter_organization
from .servers import ROOT, start_celery_worker, start_live_server
from .test_chat_streaming import csrf_token, sign_in

CHEAP = "openai/gpt-4.1-mini"
PROMPT = "Trace this question"


@pytest.fixture(scope="module")
def spans():
    exporter = InMemorySpanExporter()
    assert tracing.tracing_init(service="prumo-tests", exporter=exporter, django=False)
    yield exporter
    tracing.tracing_stop()


@pytest.fixture(scope="module")
def upstream():
    fake = FakeOpenAI(Answer(["Traced", " answer"], input_tokens=12, output_tokens=2)).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def api_org(tenant_world, django_db_blocker):
    with django_db_blocker.unblock():
        org = starter_organization(tenant_world["a"]["owner"], name="Traced")
        key = api_key_create(organization=org, name="traced", scopes=["chat"], actor=Actor.system())
    yield org, key
    with django_db_blocker.unblock():
        organization_drop(org)


def completion(key: str, **create) -> str:
    """One /v1 chat completion through the traced ASGI app (as config.asgi serves it); its request id."""

    async def scenario():
        transport = httpx.ASGITransport(app=tracing.asgi_traced(v1.application), client=("127.0.0.1", 5000))
        client = openai.AsyncOpenAI(base_url="http://testserver/v1", api_key=key, max_retries=0,
                                    http_client=httpx.AsyncClient(transport=transport))
        response = await client.chat.completions.with_raw_response.create(
            model=CHEAP, messages=[{"role": "user", "content": PROMPT}], **create)
        if create.get("stream"):
            [chunk async for chunk in response.parse()]
        else:
            assert response.parse().choices[0].message.content == "Traced answer"
        return response.headers["x-request-id"]

    return run(scenario)


def trace_of(exporter: InMemorySpanExporter, request_id: str) -> list:
    """The finished spans of the trace whose server span answered /v1/chat/completions with `request_id`."""
    finished = exporter.get_finished_spans()
    server = [span for span in finished if span.kind == SpanKind.SERVER
              and span.attributes.get("http.target", span.attributes.get("url.path")) == "/v1/chat/completions"
              and span.attributes.get("prumo.request_id") == request_id]
    assert len(server) == 1, [(span.name, dict(span.attributes)) for span in finished]
    trace_id = server[0].context.trace_id
    return [span for span in finished if span.context.trace_id == trace_id]


@pytest.mark.parametrize("stream", [False, True])
def test_a_v1_call_is_one_trace_with_a_genai_span_for_the_provider(spans, upstream, api_org, settings, monkeypatch,
                                                                    django_db_blocker, stream):
    org, key = api_org
    with django_db_blocker.unblock():
        openai_at(settings, upstream.url, monkeypatch)
        spans.clear()
        request_id = completion(key.raw, stream=stream,
                                **({"stream_options": {"include_usage": True}} if stream else {}))
    trace = trace_of(spans, request_id)
    names = [span.name for span in trace]
    provider = [span for span in trace if span.name == "chat gpt-4.1-mini"]
    assert len(provider) == 1, names
    call = provider[0]
    assert call.kind == SpanKind.CLIENT
    attributes = dict(call.attributes)
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.system"] == attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == attributes["gen_ai.response.model"] == "gpt-4.1-mini"
    assert attributes["gen_ai.usage.input_tokens"] == 12
    assert attributes["gen_ai.usage.output_tokens"] == 2
    assert tuple(attributes["gen_ai.response.finish_reasons"]) == ("stop",)
    assert "gen_ai.input.messages" not in attributes and "gen_ai.output.messages" not in attributes
    assert PROMPT not in json.dumps({k: str(v) for span in trace for k, v in span.attributes.items()})
    # The provider's HTTP request (httpx) is the GenAI span's child; the credit hold and settlement (psycopg on the
    # async pool) and the rate limit (Redis) are in the same trace.
    http = [span for span in trace if span.kind == SpanKind.CLIENT and span.parent is not None
            and span.parent.span_id == call.context.span_id]
    assert len(http) == 1 and http[0].attributes.get("http.request.method", http[0].attributes.get("http.method")) \
        == "POST", names
    database = [span for span in trace if span.attributes.get("db.system", span.attributes.get("db.system.name"))
                == "postgresql"]
    assert len(database) >= 2, names  # the hold, then the settlement's statements
    assert any(span.attributes.get("db.system", span.attributes.get("db.system.name")) == "redis"
               for span in trace), names


def test_prompt_and_answer_text_only_when_asked(spans, upstream, api_org, settings, monkeypatch, django_db_blocker):
    org, key = api_org
    monkeypatch.setenv(tracing.CAPTURE_CONTENT_ENV, "true")
    with django_db_blocker.unblock():
        openai_at(settings, upstream.url, monkeypatch)
        spans.clear()
        request_id = completion(key.raw)
    call = next(span for span in trace_of(spans, request_id) if span.name == "chat gpt-4.1-mini")
    assert json.loads(call.attributes["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": PROMPT}]}]
    output = json.loads(call.attributes["gen_ai.output.messages"])
    assert output[0]["parts"][0]["content"] == "Traced answer" and output[0]["finish_reason"] == "stop"


def test_without_an_endpoint_nothing_is_installed(test_database_url, redis_url):
    """The web entry point and the worker's app, imported with OTEL_EXPORTER_OTLP_ENDPOINT unset: no tracer
    provider, neither the SDK's tracing nor any instrumentation imported, the ASGI app unwrapped. (redis-py 8 imports
    the SDK's metrics module by itself whenever the SDK is installed: not ours to avoid.)"""
    probe = (
        "import sys, config.asgi, config.celery;"
        "from opentelemetry import trace; from core import tracing;"
        "config.celery._tracing_process_init();"
        "print(type(trace.get_tracer_provider()).__name__, tracing.tracer,"
        " sorted(m for m in sys.modules if m.startswith(("
        "  ('opentelemetry.sdk.trace', 'opentelemetry.exporter', 'opentelemetry.instrumentation')))),"
        " config.asgi.application is config.asgi.routed)"
    )
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    env.update(DJANGO_SETTINGS_MODULE="config.settings.test", DATABASE_URL=test_database_url, REDIS_URL=redis_url)
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[-2] == "ProxyTracerProvider None [] True", result.stdout


# ---------------------------------------------------------------- across processes


@pytest.fixture(scope="module")
def collector():
    receiver = FakeOtlp().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def traced_processes(collector, test_database_url, redis_url, tmp_path_factory):
    """A web server and a worker of their own, exporting to `collector` (every 100 ms). Their generation queue is
    theirs too: the session's worker (tests/conftest.py), when it runs, must not take the traced answers."""
    queue = f"generation-traced-{uuid.uuid4().hex[:8]}"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
           "CHAT_DEMO_DELAY": "0", "GENERATION_QUEUE": queue}
    workdir = tmp_path_factory.mktemp("traced")
    web = start_live_server(database_url=test_database_url, redis_url=redis_url, workdir=workdir, env_extra=env)
    worker = start_celery_worker(database_url=test_database_url, redis_url=redis_url, workdir=workdir,
                                 email_dir=web.email_dir, site_url=web.url, env_extra=env, queues=queue)
    yield web, worker
    worker.process.stop()
    web.process.stop()


def send_trace(collector: FakeOtlp, path: str, request_id: str) -> list[dict] | None:
    """The spans of the trace of the web request to `path` that carried `request_id`, once its generation task and
    that task's provider call are in."""
    server = [s for s in collector.spans() if s["service"] == "prumo-web" and s["kind"] == "SERVER"
              and s["attributes"].get("http.target", s["attributes"].get("url.path")) == path]
    for candidate in server:
        trace = [s for s in collector.spans() if s["trace_id"] == candidate["trace_id"]]
        if (any(s["name"] == "chat prumo-demo" for s in trace)
                and any(s["name"] == "run/chat.tasks.generation_run" for s in trace)
                and any(s["attributes"].get("prumo.request_id") == request_id for s in trace)):
            return trace
    return None


def wait_for_trace(collector: FakeOtlp, path: str, request_id: str) -> list[dict]:
    deadline = time.monotonic() + 40
    while (trace := send_trace(collector, path, request_id)) is None:
        assert time.monotonic() < deadline, [(s["service"], s["name"]) for s in collector.spans()][-40:]
        time.sleep(0.2)
    return trace


def test_a_chat_send_and_its_tasks_are_one_trace(traced_processes, collector, tenant_world):
    """A send (Django's view, then the composer's direct send), its generation task and the task's provider call
    (in the worker) share a trace id; the task's log lines carry the request's id, organization and person."""
    web, worker = traced_processes
    owner = tenant_world["a"]["owner"]
    first, second = f"traced-{uuid.uuid4().hex}", f"traced-{uuid.uuid4().hex}"
    with httpx.Client(base_url=web.url, cookies=sign_in(web.url, "owner-a@example.com"), timeout=10) as client:
        home = "/o/org-a/chat/"
        sent = client.post("/o/org-a/chat/new/", data={"csrfmiddlewaretoken": csrf_token(client, home),
                                                       "content": "Trace my send", "model": "demo/prumo-demo"},
                           headers={"Referer": f"{web.url}{home}", "X-Request-ID": first})
        assert sent.status_code == 302, sent.text[:1000]
        trace = wait_for_trace(collector, "/o/org-a/chat/new/", first)
        by_name = {s["name"]: s for s in trace}
        assert by_name["apply_async/chat.tasks.generation_run"]["service"] == "prumo-web"
        assert by_name["run/chat.tasks.generation_run"]["service"] == "prumo-worker"
        provider = by_name["chat prumo-demo"]
        assert provider["service"] == "prumo-worker"
        assert provider["attributes"]["gen_ai.system"] == "prumo.demo"
        assert provider["attributes"]["gen_ai.usage.output_tokens"] > 0

        thread_path = sent.headers["location"]
        page = client.get(thread_path).text
        fields = dict(re.findall(r'name="(send_grant|send_token|csrfmiddlewaretoken)" value="([^"]*)"', page))
        assert fields.get("send_grant"), "the thread page has no send grant"
        direct = client.post(f"{thread_path}send/", data={**fields, "content": "And trace this one",
                                                          "model": "demo/prumo-demo"},
                             headers={"Referer": f"{web.url}{thread_path}", "HX-Request": "true",
                                      "X-Request-ID": second})
    assert direct.status_code == 200, direct.text[:1000]
    assert "cross-origin-opener-policy" not in direct.headers, "Django served it, not the direct route"
    assert direct.headers["x-request-id"] == second
    wait_for_trace(collector, f"{thread_path}send/", second)
    for request_id in (first, second):
        line = re.compile(rf"\[req={request_id} org=org-a user={owner.pk}\] Task chat\.tasks\.generation_run\[")
        assert line.search(worker.process.log()), (request_id, worker.process.log()[-3000:])
