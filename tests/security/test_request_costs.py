"""Issue 11, item 7 (the key-related parts): cheap requests stay cheap for the server.

A call with an unknown key reaches the database once per prefix (then a short negative cache
answers), and not at all once its address is over the unauthenticated limit; /v1 reads keys on
its async pool, never opening a database connection per call; /v1 refuses an over-size body
(413, OpenAI's envelope) before reading or parsing it, after its per-address limit.
"""

from __future__ import annotations

import json
import secrets
import uuid

import psycopg
import pytest
from django.db import connection
from django.db.backends.signals import connection_created
from django.test import Client
from django.test.utils import CaptureQueriesContext

from billing.models import BillingAccount, Plan
from chat import v1
from core import db_async
from core.redis_clients import redis_client
from tenants.api_keys import api_key_create, cache_key
from tenants.audit.services import Actor
from tenants.services import organization_create

from ..orgs import organization_drop
from .inprocess_v1 import run


def _unknown_key() -> str:
    return "prm_" + secrets.token_hex(22)[:44]


def _key_queries(queries: CaptureQueriesContext) -> int:
    return sum("tenants_apikey" in query["sql"] for query in queries.captured_queries)


def _api(raw: str):
    return Client().get("/api/v1/organization/", HTTP_AUTHORIZATION=f"Bearer {raw}")


@pytest.fixture
def fresh_address(settings):
    settings.API_UNAUTHENTICATED_PER_MINUTE = 5
    redis_client().delete("rl:ip:127.0.0.1")
    yield "127.0.0.1"
    redis_client().delete("rl:ip:127.0.0.1")


# ---------------------------------------------------------------- the API (Django's middleware)


@pytest.mark.django_db
def test_an_unknown_prefix_reaches_the_database_once(fresh_address):
    raw = _unknown_key()
    with CaptureQueriesContext(connection) as first:
        assert _api(raw).status_code == 401
    assert _key_queries(first) == 1
    with CaptureQueriesContext(connection) as later:
        for _ in range(3):
            assert _api(raw).status_code == 401
    assert len(later.captured_queries) == 0, later.captured_queries


@pytest.mark.django_db
def test_an_address_over_its_limit_makes_no_query_at_all(fresh_address):
    for _ in range(5):  # malformed keys: refused and counted, never looked up
        assert _api("prm_malformed").status_code == 401
    with CaptureQueriesContext(connection) as over:
        response = _api(_unknown_key())  # well formed, never seen: it would need a look-up
    assert response.status_code == 429 and int(response["Retry-After"]) >= 1
    assert len(over.captured_queries) == 0, over.captured_queries


@pytest.mark.django_db
def test_a_new_key_works_at_once_even_after_its_prefix_was_cached_as_unknown(tenant_world, org_a,
                                                                             django_capture_on_commit_callbacks):
    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="starter"))
    with django_capture_on_commit_callbacks(execute=True):
        new = api_key_create(organization=org_a, name="fresh", scopes=["read"], user=tenant_world["a"]["admin"],
                             actor=Actor.system("tests"))
        # What a guess of this prefix a moment earlier left in the negative cache.
        redis_client().set(cache_key(new.key.prefix), "{}", ex=60)
    assert _api(new.raw).status_code == 200


# ---------------------------------------------------------------- /v1 (its own ASGI app)


class CountingConnection(psycopg.AsyncConnection):
    """The pool's connection class, counting the connections opened and the statements run."""

    connects = 0
    statements = 0

    @classmethod
    async def connect(cls, *args, **kwargs):
        CountingConnection.connects += 1
        return await super().connect(*args, **kwargs)

    async def execute(self, *args, **kwargs):
        CountingConnection.statements += 1
        return await super().execute(*args, **kwargs)


@pytest.fixture
def counted(monkeypatch, django_db_setup, django_db_blocker):
    """The pool's connections and statements, and Django's own new connections (in any thread)."""
    monkeypatch.setattr(db_async, "CONNECTION_CLASS", CountingConnection)
    CountingConnection.connects = CountingConnection.statements = 0
    django_connections = []

    def created(sender, connection, **kwargs):
        django_connections.append(connection)

    connection_created.connect(created)
    with django_db_blocker.unblock():
        yield django_connections
    connection_created.disconnect(created)


async def _asgi(raw: str, chunks: list[bytes], *, address: str, length: int | None = None):
    """One POST /v1/chat/completions straight into the ASGI app; (status, body, chunks the app read)."""
    read, pending, sent = [], list(chunks), []

    async def receive():
        if pending:
            read.append(pending.pop(0))
            return {"type": "http.request", "body": read[-1], "more_body": bool(pending)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    headers = [(b"authorization", f"Bearer {raw}".encode()), (b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers,
             "client": (address, 5000)}
    await v1.application(scope, receive, send)
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body), read


def test_v1_reads_unknown_keys_on_its_pool_once_and_never_connects_per_call(counted, settings):
    settings.API_UNAUTHENTICATED_PER_MINUTE = 8
    address = "192.0.2.71"
    redis_client().delete(f"rl:ip:{address}")
    unknown = [_unknown_key() for _ in range(4)]

    async def scenario():
        results = []
        for raw in unknown:  # four misses: one statement each, on one pooled connection
            results.append(await _asgi(raw, [b"{}"], address=address))
        statements_after_misses = CountingConnection.statements
        for _ in range(3):  # the same unknown prefix again: the negative cache answers
            results.append(await _asgi(unknown[0], [b"{}"], address=address))
        statements_after_repeats = CountingConnection.statements
        results.append(await _asgi(_unknown_key(), [b"{}"], address=address))  # the 8th: the last allowed
        results.append(await _asgi(_unknown_key(), [b"{}"], address=address))  # over the limit
        return results, statements_after_misses, statements_after_repeats

    results, after_misses, after_repeats = run(scenario)
    statuses = [status for status, _body, _read in results]
    assert statuses == [401] * 8 + [429]
    assert results[0][1]["error"]["code"] == "invalid_api_key"
    assert after_misses == 4 and after_repeats == 4  # no statement for a prefix already known to be unknown
    assert CountingConnection.statements == 5  # the 8th call looked up; the one over the limit did not
    # The pool's connections (it may add one while its first is still opening), not one per look-up.
    assert CountingConnection.connects <= 2 < CountingConnection.statements
    assert counted == []  # Django opened no connection of its own (in any thread)
    redis_client().delete(f"rl:ip:{address}")


@pytest.fixture(scope="module")
def api_key(tenant_world, django_db_blocker):
    """A committed organization on Starter with a chat key (the /v1 pool sees committed rows only)."""
    with django_db_blocker.unblock():
        org = organization_create(user=tenant_world["a"]["owner"], name=f"Costs {uuid.uuid4().hex[:6]}",
                                  actor=Actor.system("tests"))
        BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code="starter"))
        raw = api_key_create(organization=org, name="costs", scopes=["chat"], actor=Actor.system("tests")).raw
    yield raw
    with django_db_blocker.unblock():
        organization_drop(org)


@pytest.fixture
def small_bodies(settings, django_db_blocker):
    settings.GATEWAY_MAX_BODY_BYTES = 1000
    with django_db_blocker.unblock():
        yield settings


def test_v1_refuses_a_declared_over_size_body_before_reading_it(api_key, small_bodies):
    not_json = [b"x" * 500] * 4  # 2,000 bytes that would not even parse

    async def scenario():
        return await _asgi(api_key, not_json, address="192.0.2.72", length=2000)

    status, body, read = run(scenario)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert body["error"]["type"] == "invalid_request_error" and "1000 bytes" in body["error"]["message"]
    assert read == []  # refused on its Content-Length: not a byte read, nothing parsed


def test_v1_stops_reading_an_undeclared_over_size_body(api_key, small_bodies):
    chunks = [b"x" * 400] * 10

    async def scenario():
        return await _asgi(api_key, chunks, address="192.0.2.73")

    status, body, read = run(scenario)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert len(read) == 3  # 1,200 bytes read: the other 2,800 never were


def test_v1_parses_a_body_within_the_limit(api_key, small_bodies):
    """The control: the same bytes, small enough, are parsed (and refused as invalid JSON, not as too large)."""

    async def scenario():
        return await _asgi(api_key, [b"x" * 500], address="192.0.2.74", length=500)

    status, body, _read = run(scenario)
    assert status == 400 and body["error"]["code"] != "request_too_large"


def test_v1_applies_the_address_limit_before_the_body(small_bodies):
    small_bodies.API_UNAUTHENTICATED_PER_MINUTE = 2
    address = "192.0.2.75"
    redis_client().delete(f"rl:ip:{address}")

    async def scenario():
        return [await _asgi("prm_bad", [b"x" * 500] * 4, address=address, length=2000) for _ in range(3)]

    results = run(scenario)
    assert [status for status, _body, _read in results] == [401, 401, 429]
    assert all(read == [] for _status, _body, read in results)  # no body was read for a caller without a key
    redis_client().delete(f"rl:ip:{address}")
