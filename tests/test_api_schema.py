"""The OpenAPI schema (/api/schema/), its docs page (/api/docs/), and Schemathesis over /api/v1.

Schemathesis takes the schema drf-spectacular generates, generates requests for every /api/v1
operation, sends them with an API key of org A (scopes `chat`, `read` and `checks`) to the app in
process (its WSGI integration), and checks that no answer is a 5xx and that every status code,
content type and body is one the schema declares.
Examples are few and derandomized, so the run is short and the same every time. Nothing reaches
the network: the test's transaction never commits, so queued checks are never run, and the CNPJ
registries point at a closed local port anyway.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import Client
from django_tenants.utils import schema_context
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from chat.models import Message
from chat.services import thread_create
from checks.models import Attempt, Check
from checks.services import report_write, target_add
from config.wsgi import application
from tenants.api_keys import api_key_create
from tenants.audit.services import Actor

from .checks_reports import dbone_report

pytestmark = pytest.mark.django_db

DEMO = "demo/prumo-demo"

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _schema(client: Client) -> dict:
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def test_schema_is_valid_openapi_and_covers_every_endpoint():
    schema = _schema(Client())
    validate_schema(schema)
    paths = schema["paths"]
    assert {"/api/v1/threads/", "/api/v1/threads/{thread_id}/", "/api/v1/threads/{thread_id}/messages/",
            "/api/v1/threads/{thread_id}/messages/{message_id}/", "/api/v1/billing/balance/",
            "/api/v1/billing/ledger/", "/api/v1/billing/usage/", "/api/v1/organization/", "/api/v1/members/",
            "/api/v1/api-keys/", "/v1/models", "/v1/chat/completions",
            "/api/v1/threads/{thread_id}/regenerate/", "/api/v1/threads/{thread_id}/edit/",
            "/api/v1/threads/{thread_id}/messages/{message_id}/stop/", "/api/v1/threads/{thread_id}/attachments/",
            "/api/v1/api-keys/{key_id}/revoke/", "/api/v1/checks/", "/api/v1/checks/{check_id}/",
            "/api/v1/targets/", "/api/v1/targets/{target_id}/", "/api/v1/targets/{target_id}/reports/",
            "/api/v1/reports/{report_id}/", "/api/v1/reports/{report_id}/diff/{other_id}/",
            "/api/v1/alerts/"} <= set(paths)
    threads = paths["/api/v1/threads/"]["get"]
    assert threads["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "PaginatedThreadList")
    assert {"401", "403", "404"} <= set(threads["responses"])
    assert threads["security"] == [{"apiKey": []}, {"cookieAuth": [], "organizationHeader": []}]
    assert schema["components"]["securitySchemes"]["organizationHeader"]["name"] == "X-Organization"
    assert "key_hash" not in str(schema["components"]["schemas"]["ApiKey"])
    assert schema["components"]["schemas"]["Balance"]["properties"]["credits"]["type"] == "string"
    # Keys are rate limited: every operation documents the 429 and the headers.
    limited = threads["responses"]["429"]
    assert limited["content"]["application/json"]["schema"]["$ref"].endswith("/ApiError")
    assert "Retry-After" in limited["headers"]
    assert {"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests"} <= set(threads["responses"]["200"]["headers"])
    threads_filters = {parameter["name"] for parameter in threads["parameters"]}
    assert {"search", "pinned", "cursor", "page_size"} <= threads_filters
    upload = paths["/api/v1/threads/{thread_id}/attachments/"]["post"]["requestBody"]["content"]
    assert list(upload) == ["multipart/form-data"]
    created = paths["/api/v1/api-keys/"]["post"]["responses"]["201"]["content"]["application/json"]["schema"]
    assert "key" in schema["components"]["schemas"][created["$ref"].rsplit("/", 1)[1]]["properties"]


def test_schema_documents_the_openai_compatible_endpoints():
    schema = _schema(Client())
    completions = schema["paths"]["/v1/chat/completions"]["post"]
    body = completions["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    request = schema["components"]["schemas"]["ChatCompletionRequest"]
    assert request["required"] == ["model", "messages"] and "stream" in request["properties"]
    ok = completions["responses"]["200"]["content"]
    assert ok["application/json"]["schema"]["$ref"].endswith("/ChatCompletion") and "text/event-stream" in ok
    for code in ("400", "401", "402", "403", "404", "429", "503"):
        assert completions["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/OpenAIError"), code
    envelope = schema["components"]["schemas"]["OpenAIError"]["properties"]["error"]
    assert set(envelope["properties"]) == {"message", "type", "param", "code"}
    models = schema["paths"]["/v1/models"]["get"]["responses"]
    assert models["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ModelList")
    assert models["401"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")


def test_docs_page_has_no_inline_script_or_style_and_its_assets_are_ours():
    client = Client()
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []  # every script has a src
    assert "<style" not in html and " style=" not in html
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert all(source.startswith("/") for source in sources), sources  # nothing from another origin
    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200, source
    init = client.get("/api/docs/?script=")
    assert init["Content-Type"].startswith("application/javascript") and "/api/schema/" in init.content.decode()


@pytest.mark.browser
def test_docs_page_renders_in_a_browser_without_csp_violations(live_server_process):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package to run browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(base_url=live_server_process.url)
            page.set_default_timeout(15_000)
            violations, errors = [], []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.expose_function("cspViolation", lambda directive, uri: violations.append((directive, uri)))
            page.add_init_script("document.addEventListener('securitypolicyviolation',"
                                 " (e) => window.cspViolation(e.violatedDirective, e.blockedURI));")
            page.goto("/api/docs/")
            page.get_by_text("/api/v1/threads/", exact=True).first.wait_for()
            page.get_by_text("/v1/chat/completions", exact=True).first.wait_for()
            assert violations == []
            assert [text for text in errors if "Content Security Policy" in text] == []
        finally:
            browser.close()


# ---------------------------------------------------------------- Schemathesis


@pytest.fixture
def in_process_wsgi():
    """Django's WSGI app in the test's transaction: keep it from closing the connection per request.

    (Django's own test client does the same: outside autocommit, close_old_connections would close
    the connection, and the test's transaction with it.)
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield application
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def api_key(tenant_world):
    from billing.models import BillingAccount, Plan

    org = tenant_world["a"]["org"]
    BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code="starter"))  # keys need API access
    # Room for every generated call (the plan's 60 a minute would answer most of them 429); rolled back after.
    Plan.objects.filter(code="starter").update(requests_per_minute=1_000_000)
    return api_key_create(organization=org, name="schemathesis", scopes=["chat", "read", "checks"],
                          actor=Actor.system(), user=tenant_world["a"]["admin"]).raw


@pytest.fixture
def conversation(tenant_world):
    """A thread of the key's member with a question and a (pending) answer, for the id-taking operations."""
    org, member = tenant_world["a"]["org"], tenant_world["a"]["admin"]
    with schema_context(org.schema_name):
        thread = thread_create(user=member, model_id=DEMO)
        question = Message.objects.create(thread=thread, role=Message.Role.USER, content="Hello?")
        answer = Message.objects.create(thread=thread, role=Message.Role.ASSISTANT, status=Message.Status.PENDING,
                                        model_id=DEMO)
    return {"thread_id": thread.pk, "message_id": [question.pk, answer.pk]}


@pytest.fixture
def checks_world(tenant_world):
    """A monitored target with a finished check and two reports (so an alert), for the checks operations."""
    from billing.models import BillingAccount

    org = tenant_world["a"]["org"]
    BillingAccount.objects.filter(pk=org.pk).update(credits=500)  # generated checks may be queued (never run)
    with schema_context(org.schema_name):
        target = target_add(cnpj="05525406000101", label="Schemathesis", tags=["api"], schedule="daily")
        check = Check.objects.create(target=target, status=Check.Status.SUCCEEDED, source=Check.Source.API,
                                     provider="cnpjws", credits=5, finished_at=target.created_at)
        Attempt.objects.create(check_run=check, provider="cnpjws", outcome="found", http_status=200, latency_ms=120)
        first = report_write(target=target, check=check, record=dbone_report(), provider="cnpjws")
        closed = {**dbone_report(), "situacao": {"code": 8, "label": "BAIXADA", "since": "2026-01-10", "motivo": None}}
        second = report_write(target=target, check=None, record=closed, provider="cnpjws")
    return {"check_id": check.pk, "target_id": target.pk, "report_id": [first.pk, second.pk],
            "other_id": [second.pk, first.pk]}


def _aim_at_real_objects(case, conversation: dict) -> None:
    """Generated ids almost never exist: point about half of the integer ones at the conversation."""
    parameters = case.path_parameters or {}
    for name, real in conversation.items():
        value = parameters.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value % 2 == 0:
            parameters[name] = real[value % 4 // 2] if isinstance(real, list) else real


def _api_v1_schema():
    """The document /api/schema/ serves (built without a request: collection has no database)."""
    document = SchemaGenerator().get_schema(request=None, public=True)
    loaded = schemathesis.openapi.from_dict(document).include(path_regex=r"^/api/v1/")
    loaded.app = application  # requests go to the WSGI app in process
    return loaded


# pytest 9 broke schemathesis' lazy `from_fixture` schemas (it sets `node._nodeid`): load it eagerly.
schema = _api_v1_schema()


@schema.parametrize()
@settings(max_examples=25, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_api_conforms_to_its_schema(case, api_key, conversation, checks_world, in_process_wsgi, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path  # generated uploads that pass land here, not in the working tree
    settings.CHECKS_REDIS_PREFIX = f"checks-schema-{uuid.uuid4().hex[:12]}"  # no cached answers from elsewhere
    for name in ("CNPJWS_BASE_URL", "BRASILAPI_BASE_URL", "MINHARECEITA_BASE_URL", "RECEITAWS_BASE_URL"):
        setattr(settings, name, "http://127.0.0.1:9")  # a lookup that did run would be refused locally
    _aim_at_real_objects(case, {**conversation, **checks_world})
    case.call_and_validate(
        headers={"Authorization": f"Bearer {api_key}"},
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )
