"""The DRF API under /api/v1/: keys and sessions, scopes and roles, tenant isolation, every endpoint."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django_tenants.utils import schema_context

from billing.ledger import credit_grant
from billing.models import BillingAccount, DailyUsage, Plan
from billing.ratelimits import rate_limit_keys
from chat.models import Message, Thread
from core.redis_clients import redis_client
from tenants.api_base import OrgAPIView, ServicePrincipal, api_key_principal
from tenants.api_keys import api_key_authenticate, api_key_create, api_key_revoke
from tenants.audit.services import Actor
from tenants.models import ApiKey

from .fake_llm import FakeOpenAI
from .urlwalk import routes

pytestmark = pytest.mark.django_db

DEMO = "demo/prumo-demo"
CHEAP = "openai/gpt-4.1-mini"


def _api_patterns() -> list[tuple[str, object]]:
    return [(r.route, r.callback) for r in routes("api/v1/") if "(?P" not in r.route]


def _endpoints() -> list[tuple[str, str]]:
    """(method, path) of every API operation, with id 1 in the path."""
    calls = []
    for route, callback in _api_patterns():
        url = "/" + re.sub(r"<int:\w+>", "1", route)
        for method in ("get", "post", "patch", "delete"):
            if hasattr(callback.cls, method):
                calls.append((method, url))
    return calls


@pytest.fixture(autouse=True)
def clean_redis():
    client = redis_client()
    for key in client.scan_iter("chat:*"):
        client.delete(key)


@pytest.fixture(autouse=True)
def fast_demo(settings):
    settings.CHAT_DEMO_DELAY = 0


def rate_limits_reset(*orgs) -> None:
    """Organization rate counters outlive a test's transaction (they are in Redis): start each test at zero."""
    client = redis_client()
    for org in orgs:
        client.delete(*rate_limit_keys(org.pk, 0))
    client.delete("rl:ip:127.0.0.1")  # the test client's address: anonymous calls are limited per address


@pytest.fixture(autouse=True)
def plans_with_api_access(org_a, org_b):
    """Keys work only on plans with API access (Free has none): Starter for both, in this test's transaction."""
    starter = Plan.objects.get(code="starter")
    BillingAccount.objects.filter(pk__in=[org_a.pk, org_b.pk]).update(plan=starter)
    rate_limits_reset(org_a, org_b)


def test_keys_of_a_plan_without_api_access_are_refused(client, org_a, keys):
    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="free"))
    response = client.get("/api/v1/billing/balance/", HTTP_AUTHORIZATION=f"Bearer {keys['read']}")
    assert response.status_code == 403 and "does not include API access" in response.json()["detail"]


@pytest.fixture
def keys(tenant_world, org_a, org_b):
    def make(org, name, scopes, user=None):
        return api_key_create(organization=org, name=name, scopes=scopes, actor=Actor.system(), user=user).raw

    return {
        "chat": make(org_a, "a chat", ["chat"], tenant_world["a"]["admin"]),
        "read": make(org_a, "a read", ["read"], tenant_world["a"]["admin"]),
        "checks": make(org_a, "a checks", ["checks"]),
        "b": make(org_b, "b all", ["chat", "read", "checks"], tenant_world["b"]["owner"]),
    }


def bearer(raw: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def call(client: Client, method: str, url: str, data: dict | None = None, **headers):
    if method in ("get", "delete"):
        return getattr(client, method)(url, data, **headers)
    return getattr(client, method)(url, data or {}, content_type="application/json", **headers)


def session(client_for, key: str, role: str, org) -> tuple[Client, dict[str, str]]:
    return client_for(key, role), {"HTTP_X_ORGANIZATION": org.slug}


# ---------------------------------------------------------------- structure and isolation


def test_every_api_view_is_organization_scoped():
    patterns = _api_patterns()
    assert len(patterns) >= 10
    assert [route for route, callback in patterns if not issubclass(callback.cls, OrgAPIView)] == []


def test_anonymous_and_bad_keys_get_401_everywhere(org_a, settings):
    settings.API_UNAUTHENTICATED_PER_MINUTE = 100_000  # this walk is far more than a minute's allowance
    client = Client()
    for method, url in _endpoints():
        for headers in ({}, {"HTTP_X_ORGANIZATION": org_a.slug}, bearer("prm_" + "x" * 44), bearer("nonsense")):
            response = call(client, method, url, **headers)
            assert response.status_code == 401, (method, url, headers, response.status_code)
            assert response["WWW-Authenticate"].startswith("Bearer")


def test_member_of_another_organization_gets_404_everywhere(client_for, org_a, org_b, keys):
    client, foreign = session(client_for, "b", "owner", org_a)
    for method, url in _endpoints():
        response = call(client, method, url, HTTP_X_CSRFTOKEN="x", **foreign)
        assert response.status_code == 404, (method, url, response.status_code)
        assert org_a.name.encode() not in response.content
        # A key of org B naming org A: the same.
        response = call(Client(), method, url, **bearer(keys["b"]), HTTP_X_ORGANIZATION=org_a.slug)
        assert response.status_code == 404, (method, url, response.status_code)
    unknown = call(client, "get", "/api/v1/threads/", HTTP_X_ORGANIZATION="no-such-org")
    assert unknown.status_code == 404 and unknown.json() == call(client, "get", "/api/v1/threads/", **foreign).json()


def test_a_key_reaches_only_its_own_organizations_objects(keys, org_a, org_b):
    BillingAccount.objects.filter(pk=org_b.pk).update(plan=Plan.objects.get(code="pro"))  # its webhooks list too
    created = Client().post("/api/v1/threads/", {"model": DEMO, "title": "Secret of A"},
                            content_type="application/json", **bearer(keys["chat"]))
    assert created.status_code == 201
    thread_id = created.json()["id"]
    b = Client()
    for method, url in [("get", f"/api/v1/threads/{thread_id}/"), ("patch", f"/api/v1/threads/{thread_id}/"),
                        ("delete", f"/api/v1/threads/{thread_id}/"), ("get", f"/api/v1/threads/{thread_id}/messages/"),
                        ("post", f"/api/v1/threads/{thread_id}/messages/")]:
        response = call(b, method, url, {"title": "x", "content": "x"}, **bearer(keys["b"]))
        assert response.status_code == 404, (method, url, response.status_code)
    listings = [call(b, "get", url, **bearer(keys["b"])) for _method, url in _endpoints()
                if "{" not in url and "/1/" not in url]
    for response in listings:
        assert response.status_code == 200
        assert b"Secret of A" not in response.content and org_a.slug.encode() not in response.content
        assert b"-a@example.com" not in response.content and b"a chat" not in response.content
    with schema_context(org_a.schema_name):
        assert Thread.objects.filter(pk=thread_id, title="Secret of A").exists()


def test_schema_is_public_again_after_api_calls(client_for, org_a, keys):
    client, headers = session(client_for, "a", "owner", org_a)
    for response in (client.get("/api/v1/threads/", **headers), client.get("/api/v1/threads/999999/", **headers),
                     Client().get("/api/v1/threads/", **bearer(keys["read"]))):
        assert response.status_code in (200, 404)
        assert connection.schema_name == "public"


# ---------------------------------------------------------------- sessions: header, CSRF, roles


def test_session_needs_the_organization_header_and_csrf(tenant_world, org_a):
    client = Client(enforce_csrf_checks=True)
    client.force_login(tenant_world["a"]["member"])
    missing = client.get("/api/v1/threads/")
    assert missing.status_code == 400 and "X-Organization" in missing.json()["detail"]
    headers = {"HTTP_X_ORGANIZATION": org_a.slug}
    assert client.get("/api/v1/threads/", **headers).status_code == 200
    no_token = client.post("/api/v1/threads/", {"model": DEMO}, content_type="application/json", **headers)
    assert no_token.status_code == 403 and "CSRF" in no_token.json()["detail"]
    client.get(f"/o/{org_a.slug}/")  # sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    created = client.post("/api/v1/threads/", {"model": DEMO}, content_type="application/json",
                          HTTP_X_CSRFTOKEN=token, **headers)
    assert created.status_code == 201 and created.json()["model"] == DEMO


def test_viewers_read_only_and_admin_only_endpoints(client_for, org_a):
    viewer, headers = session(client_for, "a", "viewer", org_a)
    for url in ("/api/v1/threads/", "/api/v1/billing/balance/", "/api/v1/billing/ledger/", "/api/v1/billing/usage/",
                "/api/v1/organization/"):
        assert viewer.get(url, **headers).status_code == 200, url
    refused = viewer.post("/api/v1/threads/", {"model": DEMO}, content_type="application/json", **headers)
    assert refused.status_code == 403 and "role" in refused.json()["detail"]
    member, headers = session(client_for, "a", "member", org_a)
    for url in ("/api/v1/members/", "/api/v1/api-keys/"):
        assert viewer.get(url, **headers).status_code == 403
        assert member.get(url, **headers).status_code == 403
        assert client_for("a", "admin").get(url, **headers).status_code == 200
        assert client_for("a", "owner").get(url, **headers).status_code == 200


def test_threads_are_private_to_their_member(client_for, org_a):
    owner, headers = session(client_for, "a", "owner", org_a)
    thread = owner.post("/api/v1/threads/", {"model": DEMO, "title": "Owner only"}, content_type="application/json",
                        **headers).json()
    member, _ = session(client_for, "a", "member", org_a)
    assert member.get(f"/api/v1/threads/{thread['id']}/", **headers).status_code == 404
    assert member.delete(f"/api/v1/threads/{thread['id']}/", **headers).status_code == 404
    assert b"Owner only" not in member.get("/api/v1/threads/", **headers).content
    assert owner.get(f"/api/v1/threads/{thread['id']}/", **headers).json()["title"] == "Owner only"


# ---------------------------------------------------------------- keys: scopes and who they act as


def test_key_scopes(keys):
    read, chat, checks = (Client(), bearer(keys["read"])), (Client(), bearer(keys["chat"])), bearer(keys["checks"])
    for url in ("/api/v1/threads/", "/api/v1/billing/balance/", "/api/v1/billing/ledger/", "/api/v1/billing/usage/",
                "/api/v1/organization/", "/api/v1/members/", "/api/v1/api-keys/"):
        assert read[0].get(url, **read[1]).status_code == 200, url
        assert Client().get(url, **checks).status_code == 403, url
    # `chat` reads and writes threads only.
    assert chat[0].get("/api/v1/threads/", **chat[1]).status_code == 200
    assert chat[0].get("/api/v1/billing/balance/", **chat[1]).status_code == 403
    refused = read[0].post("/api/v1/threads/", {"model": DEMO}, content_type="application/json", **read[1])
    assert refused.status_code == 403 and "scope" in refused.json()["detail"]
    assert chat[0].post("/api/v1/threads/", {"model": DEMO}, content_type="application/json",
                        **chat[1]).status_code == 201


def test_a_key_acts_as_its_creator_and_a_service_key_as_no_one(tenant_world, org_a, keys, client_for):
    world = tenant_world["a"]
    assert api_key_principal(api_key_authenticate(keys["chat"])) == world["admin"]
    assert isinstance(api_key_principal(api_key_authenticate(keys["checks"])), ServicePrincipal)  # made by a command
    made = Client().post("/api/v1/threads/", {"model": DEMO, "title": "Via the key"},
                         content_type="application/json", **bearer(keys["chat"])).json()
    admin, headers = session(client_for, "a", "admin", org_a)
    assert admin.get(f"/api/v1/threads/{made['id']}/", **headers).json()["title"] == "Via the key"
    # The read key (also the admin's) sees it; the owner's session does not.
    assert Client().get(f"/api/v1/threads/{made['id']}/", **bearer(keys["read"])).status_code == 200
    owner, _ = session(client_for, "a", "owner", org_a)
    assert owner.get(f"/api/v1/threads/{made['id']}/", **headers).status_code == 404


def test_revoked_key_is_refused(org_a, django_capture_on_commit_callbacks):
    new = api_key_create(organization=org_a, name="soon gone", scopes=["read"], actor=Actor.system())
    assert Client().get("/api/v1/organization/", **bearer(new.raw)).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(key=new.key, actor=Actor.system())
    assert Client().get("/api/v1/organization/", **bearer(new.raw)).status_code == 401


# ---------------------------------------------------------------- threads and messages


def test_thread_and_message_lifecycle_with_a_key(keys, org_a, django_capture_on_commit_callbacks):
    client, auth = Client(), bearer(keys["chat"])
    created = client.post("/api/v1/threads/", {"model": DEMO, "system_prompt": "Be brief.", "title": "Plans"},
                          content_type="application/json", **auth)
    assert created.status_code == 201
    thread = created.json()
    assert (thread["title"], thread["model"], thread["system_prompt"], thread["pinned"]) == (
        "Plans", DEMO, "Be brief.", False)
    url = f"/api/v1/threads/{thread['id']}/"
    with django_capture_on_commit_callbacks(execute=True):  # Celery runs the answer eagerly on commit
        sent = client.post(f"{url}messages/", {"content": "What is Prumo?"}, content_type="application/json", **auth)
    assert sent.status_code == 202
    pending = sent.json()
    assert (pending["role"], pending["status"], pending["thread"]) == ("assistant", "pending", thread["id"])
    answer = client.get(f"{url}messages/{pending['id']}/", **auth).json()
    assert answer["status"] == "complete" and answer["content"] and answer["served_model"] == DEMO
    listing = client.get(f"{url}messages/", **auth).json()
    assert [m["role"] for m in listing["results"]] == ["assistant", "user"]  # newest first
    assert listing["results"][1]["content"] == "What is Prumo?"
    patched = client.patch(url, {"title": "Renamed", "pinned": True}, content_type="application/json", **auth)
    assert (patched.json()["title"], patched.json()["pinned"]) == ("Renamed", True)
    assert client.get("/api/v1/threads/?search=renamed", **auth).json()["results"][0]["id"] == thread["id"]
    assert client.get("/api/v1/threads/?search=nothing-like-this", **auth).json()["results"] == []
    assert client.get(f"{url}messages/{pending['id'] + 1000}/", **auth).status_code == 404
    assert client.delete(url, **auth).status_code == 204
    assert client.get(url, **auth).status_code == 404
    with schema_context(org_a.schema_name):
        assert not Message.objects.filter(thread_id=thread["id"]).exists()


def test_chat_errors_are_400_and_402(keys, org_a, settings):
    client, auth = Client(), bearer(keys["chat"])
    unknown = client.post("/api/v1/threads/", {"model": "nope/nothing"}, content_type="application/json", **auth)
    assert unknown.status_code == 400 and "model" in unknown.json()
    assert client.post("/api/v1/threads/", {}, content_type="application/json", **auth).status_code == 400
    thread = client.post("/api/v1/threads/", {"model": DEMO}, content_type="application/json", **auth).json()
    url = f"/api/v1/threads/{thread['id']}/messages/"
    assert client.post(url, {"content": ""}, content_type="application/json", **auth).status_code == 400
    first = client.post(url, {"content": "one"}, content_type="application/json", **auth)  # stays pending: no commit
    assert first.status_code == 202
    busy = client.post(url, {"content": "two"}, content_type="application/json", **auth)
    assert busy.status_code == 400 and "Wait" in busy.json()["detail"]
    # A priced model with an empty balance: 402, and nothing written.
    fake = FakeOpenAI().start()
    try:
        settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, "openai": {"base_url": fake.url, "api_key": "sk-x"}}
        priced = client.post("/api/v1/threads/", {"model": CHEAP}, content_type="application/json", **auth).json()
        BillingAccount.objects.filter(pk=org_a.pk).update(credits=0)
        short = client.post(f"/api/v1/threads/{priced['id']}/messages/", {"content": "pay me"},
                            content_type="application/json", **auth)
        assert short.status_code == 402 and short.json()["code"] == "insufficient_credits"
        assert fake.count == 0
    finally:
        fake.stop()
    with schema_context(org_a.schema_name):
        assert not Message.objects.filter(content="pay me").exists()


def test_threads_are_cursor_paginated_newest_first(keys):
    client, auth = Client(), bearer(keys["chat"])
    ids = [client.post("/api/v1/threads/", {"model": DEMO, "title": f"T{i}"}, content_type="application/json",
                       **auth).json()["id"] for i in range(3)]
    first = client.get("/api/v1/threads/?page_size=2", **auth).json()
    assert [t["id"] for t in first["results"]] == ids[::-1][:2] and first["next"]
    second = client.get(first["next"], **auth).json()
    assert second["results"][0]["id"] == ids[0]
    assert client.get("/api/v1/threads/?cursor=garbage", **auth).status_code == 404


# ---------------------------------------------------------------- billing


def test_balance_and_ledger(keys, org_a):
    credit_grant(organization=org_a, amount=Decimal("12.5"), key="api-test-grant", description="API test")
    client, auth = Client(), bearer(keys["read"])
    balance = client.get("/api/v1/billing/balance/", **auth).json()
    assert balance == {"credits": str(BillingAccount.objects.get(pk=org_a.pk).credits)}
    ledger = client.get("/api/v1/billing/ledger/?page_size=1", **auth).json()
    entry = ledger["results"][0]
    assert (entry["kind"], entry["amount"], entry["description"]) == ("grant", "12.500000", "API test")
    assert ledger["next"]  # the organization's creation grant is older
    grants = client.get("/api/v1/billing/ledger/?kind=grant", **auth).json()["results"]
    assert {e["kind"] for e in grants} == {"grant"}
    assert {e["kind"] for e in client.get("/api/v1/billing/ledger/?kind=debit", **auth).json()["results"]} <= {"debit"}
    assert client.get("/api/v1/billing/ledger/?kind=bogus", **auth).status_code == 400


def test_usage_rollups_filtered_by_range_and_kind(keys, org_a, org_b, tenant_world):
    def row(org, day, kind, key, credits, user=None, events=1):
        DailyUsage.objects.create(organization=org, day=day, kind=kind, key=key, credits=Decimal(credits),
                                  events=events, input_tokens=10, output_tokens=5, user=user)

    row(org_a, date(2026, 3, 1), "model", CHEAP, "1.5", tenant_world["a"]["owner"])
    row(org_a, date(2026, 3, 1), "model", CHEAP, "0.5", tenant_world["a"]["member"], events=2)
    row(org_a, date(2026, 3, 2), "check", "cnpj", "3")
    row(org_a, date(2026, 4, 1), "model", CHEAP, "9")
    row(org_b, date(2026, 3, 1), "model", CHEAP, "100")
    client, auth = Client(), bearer(keys["read"])
    report = client.get("/api/v1/billing/usage/?start=2026-03-01&end=2026-03-31", **auth).json()
    assert (report["start"], report["end"], report["total_credits"]) == ("2026-03-01", "2026-03-31", "5.000000")
    assert [(r["day"], r["kind"], r["key"], r["events"], r["credits"]) for r in report["results"]] == [
        ("2026-03-01", "model", CHEAP, 3, "2.000000"), ("2026-03-02", "check", "cnpj", 1, "3.000000")]
    models_only = client.get("/api/v1/billing/usage/?start=2026-03-01&end=2026-04-30&kind=model", **auth).json()
    assert models_only["total_credits"] == "11.000000" and {r["kind"] for r in models_only["results"]} == {"model"}
    default = client.get("/api/v1/billing/usage/", **auth).json()
    assert (date.fromisoformat(default["end"]) - date.fromisoformat(default["start"])).days == 29
    for bad in ("start=2026-03-02&end=2026-03-01", "start=2020-01-01&end=2026-01-01", "start=nope", "kind=x",
                "end=0001-01-01"):
        assert client.get(f"/api/v1/billing/usage/?{bad}", **auth).status_code == 400, bad


# ---------------------------------------------------------------- organization, members, keys


def test_organization_members_and_key_metadata(keys, org_a, client_for):
    client, auth = Client(), bearer(keys["read"])
    assert client.get("/api/v1/organization/", **auth).json() == {"name": org_a.name, "slug": org_a.slug,
                                                                   "plan": "starter"}
    members = client.get("/api/v1/members/", **auth).json()["results"]
    assert {(m["email"], m["role"]) for m in members} >= {("owner-a@example.com", "owner"),
                                                          ("viewer-a@example.com", "viewer")}
    listed = client.get("/api/v1/api-keys/", **auth)
    stored = ApiKey.objects.get(organization=org_a, name="a chat")
    row = next(k for k in listed.json()["results"] if k["name"] == "a chat")
    assert row == {"id": stored.pk, "name": "a chat", "prefix": stored.display_prefix, "scopes": ["chat"],
                   "principal": "member", "created_at": row["created_at"], "last_used_at": None, "expires_at": None,
                   "revoked": False, "revoked_at": None}
    assert stored.key_hash.encode() not in listed.content and keys["chat"].encode() not in listed.content
    admin, headers = session(client_for, "a", "admin", org_a)
    assert admin.get("/api/v1/api-keys/", **headers).json()["results"][0]["name"]


def test_a_path_with_a_newline_is_a_json_404_too(client):
    response = client.post("/api/v1/threads/%0A/edit/", {}, content_type="application/json")
    assert response.status_code == 404 and response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found."}
