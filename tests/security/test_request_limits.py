"""Cheap requests stay cheap for the server (issue 11, item 7: body limits and page numbers).

Form bodies are capped (DATA_UPLOAD_MAX_MEMORY_SIZE: 400, never 500); JSON bodies to the API are
refused with 413 and a JSON body before they are parsed; a page number nobody could reach
(`?page=99999999999999999999`, `?page=1e9`) answers 404 on every paginated page instead of
overflowing PostgreSQL's OFFSET; a forged API cursor answers 404 instead of a 500.
"""

from __future__ import annotations

import base64
import json

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django_tenants.utils import schema_context

from billing.models import BillingAccount, Plan
from chat.models import Thread
from tenants.api_keys import api_key_create
from tenants.audit.services import Actor

from ..test_api import bearer, rate_limits_reset
from ..urlwalk import routes

pytestmark = pytest.mark.django_db

HUGE_PAGES = ["99999999999999999999", "1e9", "-1", "0", "abc", str(2**63)]
# Every page view that takes ?page= (a page added later must be listed here to be checked).
PAGINATED = {"chat_home", "chat_sidebar", "checks_home", "checks_alerts"}


@pytest.fixture
def api(tenant_world, org_a):
    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="starter"))
    rate_limits_reset(org_a)
    raw = api_key_create(organization=org_a, name="limits", scopes=["chat", "read", "checks"], actor=Actor.system(),
                         user=tenant_world["a"]["owner"]).raw
    return Client(), bearer(raw)


# ---------------------------------------------------------------- bodies


def test_an_over_size_form_post_is_refused_not_crashed(client_for, org_a):
    too_big = "x" * (django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    response = client_for("a").post(f"/o/{org_a.slug}/chat/new/", {"content": too_big, "model": "demo/prumo-demo"})
    assert response.status_code in (400, 413)
    with schema_context(org_a.schema_name):
        assert not Thread.objects.filter(messages__content=too_big).exists()


def test_an_over_size_json_body_is_refused_with_413_before_parsing(api, org_a, settings):
    client, auth = api
    limit = settings.API_JSON_MAX_BYTES
    body = json.dumps({"model": "demo/prumo-demo", "system_prompt": "x" * limit})
    response = client.post("/api/v1/threads/", body, content_type="application/json", **auth)
    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": f"The request body is larger than this API accepts ({limit} bytes).",
                               "code": "request_too_large"}
    with schema_context(org_a.schema_name):
        assert not Thread.objects.filter(system_prompt__startswith="xxxx").exists()
    # Under the limit the same call works.
    small = client.post("/api/v1/threads/", {"model": "demo/prumo-demo", "system_prompt": "short"},
                        content_type="application/json", **auth)
    assert small.status_code == 201


def test_a_body_that_lies_about_its_length_is_cut_at_the_limit(api, settings):
    """No Content-Length to trust (chunked): the parser stops reading at the limit."""
    from io import BytesIO

    from rest_framework.exceptions import APIException

    from core.parsers import JSONParser

    settings.API_JSON_MAX_BYTES = 100
    with pytest.raises(APIException) as caught:
        JSONParser().parse(BytesIO(b'{"a": "' + b"x" * 500 + b'"}'), parser_context={})
    assert caught.value.status_code == 413
    assert JSONParser().parse(BytesIO(b'{"a": 1}'), parser_context={}) == {"a": 1}


def asgi_call(path: str, chunks: list[bytes], *, declared: int | None = None, accept_language: str = "en"):
    """POST `chunks` through the production ASGI app (config.asgi); returns (status, headers, body, chunks read)."""
    import asyncio

    from config.asgi import application

    headers = [(b"host", b"127.0.0.1"), (b"accept-language", accept_language.encode())]
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}
    pending = list(chunks)
    read, sent = [], []

    async def receive():
        body = pending.pop(0)
        read.append(body)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message):
        sent.append(message)

    asyncio.run(application(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, len(read)


def test_a_body_declared_over_the_limit_is_refused_before_it_is_read(org_a, settings):
    status, headers, body, read = asgi_call(f"/o/{org_a.slug}/settings/", [b"x" * 100],
                                            declared=settings.REQUEST_BODY_MAX_BYTES + 1)
    assert (status, read) == (413, 0)
    assert body.decode() == "This request is too large (over 10.0\xa0MB). Send a smaller file or less text."
    status, headers, body, read = asgi_call("/api/v1/threads/", [b"{}"], declared=settings.REQUEST_BODY_MAX_BYTES + 1)
    assert (status, read, headers[b"content-type"]) == (413, 0, b"application/json")
    assert json.loads(body)["code"] == "request_too_large"


def test_a_chunked_body_is_cut_when_it_passes_the_limit(settings):
    settings.REQUEST_BODY_MAX_BYTES = 1000
    chunks = [b"a" * 600] * 50  # no Content-Length: 30 KB in 600-byte chunks
    status, _headers, body, read = asgi_call("/accounts/login/", chunks)
    assert (status, read) == (413, 2)  # stopped at the chunk that passed 1,000 bytes; Django never ran
    assert body.decode() == "This request is too large (over 1000\xa0bytes). Send a smaller file or less text."


def test_uploads_may_carry_the_largest_file_any_plan_allows(org_a, settings):
    from core.body_limit import body_limit_for

    largest = max(Plan.objects.values_list("max_upload_mb", flat=True))
    assert settings.UPLOAD_MAX_MB >= largest, "a plan allows files the request body limit refuses"
    for path in (f"/o/{org_a.slug}/chat/new/", f"/o/{org_a.slug}/chat/t/12/send/", "/api/v1/threads/12/attachments/"):
        assert body_limit_for(path) > largest * 1024 * 1024
    assert body_limit_for(f"/o/{org_a.slug}/settings/") == settings.REQUEST_BODY_MAX_BYTES
    status, _headers, _body, read = asgi_call(f"/o/{org_a.slug}/chat/new/", [b""],
                                              declared=settings.UPLOAD_MAX_MB * 1024 * 1024 + 2 * 1024 * 1024)
    assert (status, read) == (413, 0)


# ---------------------------------------------------------------- page numbers


def _page_routes() -> list[tuple[str, str]]:
    """Every GET page under /o/<slug>/ that needs no argument but the organization."""
    found = []
    for route in routes("o/<slug:org_slug>/"):
        rest = route.route.removeprefix("o/<slug:org_slug>/")
        if "<" in rest or route.name is None:
            continue
        found.append((route.name, "/o/{slug}/" + rest))
    return found


def test_the_walk_finds_every_paginated_page():
    assert PAGINATED <= {name for name, _url in _page_routes()}


def test_a_page_number_nobody_could_reach_is_404_on_every_paginated_page(client_for, org_a, tenant_world):
    client = client_for("a")
    with schema_context(org_a.schema_name):
        thread = Thread.objects.create(user=tenant_world["a"]["owner"], model_id="demo/prumo-demo", title="One")
    not_found = set()
    for name, template in _page_routes():
        url = template.format(slug=org_a.slug)
        plain = client.get(url).status_code
        for page in HUGE_PAGES:
            status = client.get(url, {"page": page}).status_code
            assert status < 500, f"{url}?page={page}: {status}"
            if plain == 200 and status == 404:
                not_found.add(name)
            else:
                assert status == plain, f"{url}?page={page}: {status} (without ?page=: {plain})"
    assert PAGINATED <= not_found, f"these paginated pages did not answer 404: {PAGINATED - not_found}"
    # The thread page's sidebar takes ?page= too.
    for page in HUGE_PAGES:
        assert client.get(f"/o/{org_a.slug}/chat/t/{thread.pk}/", {"page": page}).status_code == 404
    # Real pages still work: the first, and the sidebar's next page when there is one.
    assert client.get(f"/o/{org_a.slug}/chat/threads/", {"page": "1"}).status_code == 200
    assert client.get(f"/o/{org_a.slug}/checks/alerts/", {"page": "1"}).status_code == 200


def test_a_forged_api_cursor_is_404_not_500(api):
    client, auth = api
    forged = [
        "garbage",
        base64.b64encode(b"p=not-a-date").decode(),
        base64.b64encode(b"p=2026-13-45T99:99:99").decode(),
        base64.b64encode(b"o=99999999999999999999&p=x").decode(),
        base64.b64encode(b"r=1&p=\x00").decode(),
    ]
    lists = []
    for route in routes("api/v1/"):
        url = "/" + route.route
        if "<" in url:
            continue
        response = client.get(url, **auth)
        if response.status_code == 200 and "next" in response.json():
            lists.append(url)
    assert {"/api/v1/threads/", "/api/v1/billing/ledger/", "/api/v1/checks/", "/api/v1/members/"} <= set(lists)
    for url in lists:
        for cursor in forged:
            response = client.get(url, {"cursor": cursor}, **auth)
            assert response.status_code == 404, (url, cursor, response.status_code)
            assert "detail" in response.json()
