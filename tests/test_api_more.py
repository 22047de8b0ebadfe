"""The DRF API, continued: plan rate limits for keys, regenerate/edit/stop, attachments, key management."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone
from django_tenants.utils import schema_context

from billing.models import BillingAccount, Plan
from chat.models import Attachment, Message
from chat.snapshot import org_config_bump
from core.redis_clients import redis_client
from tenants.api_keys import api_key_authenticate, api_key_create
from tenants.audit.models import AuditEvent
from tenants.audit.services import Actor
from tenants.models import ApiKey

from .reauth import reauthenticate
from .test_api import DEMO, bearer, call, rate_limits_reset, session

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def clean_redis():
    client = redis_client()
    for key in client.scan_iter("chat:*"):
        client.delete(key)


@pytest.fixture(autouse=True)
def fast_demo(settings):
    settings.CHAT_DEMO_DELAY = 0


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path  # uploads land here, not in the working tree


@pytest.fixture(autouse=True)
def plans_with_api_access(org_a, org_b):
    """Starter (API access) for both organizations, in this test's transaction; rate counters at zero."""
    BillingAccount.objects.filter(pk__in=[org_a.pk, org_b.pk]).update(plan=Plan.objects.get(code="starter"))
    rate_limits_reset(org_a, org_b)


@pytest.fixture
def keys(tenant_world, org_a, org_b):
    def make(org, name, scopes, user=None):
        return api_key_create(organization=org, name=name, scopes=scopes, actor=Actor.system(), user=user).raw

    return {
        "chat": make(org_a, "a chat", ["chat"], tenant_world["a"]["admin"]),
        "read": make(org_a, "a read", ["read"], tenant_world["a"]["admin"]),
        "all": make(org_a, "a all", ["chat", "read", "checks"], tenant_world["a"]["owner"]),
        "b": make(org_b, "b all", ["chat", "read", "checks"], tenant_world["b"]["owner"]),
    }


def thread_with_answer(client: Client, auth: dict, captured, question: str = "What is Prumo?") -> dict:
    """A thread with one question and its finished answer (`captured`: django_capture_on_commit_callbacks)."""
    thread = client.post("/api/v1/threads/", {"model": DEMO}, content_type="application/json", **auth).json()
    with captured(execute=True):  # Celery runs the answer eagerly on commit
        sent = client.post(f"/api/v1/threads/{thread['id']}/messages/", {"content": question},
                           content_type="application/json", **auth)
    assert sent.status_code == 202
    return {"thread": thread["id"], "answer": sent.json()["id"]}


def text_file(name: str = "notes.txt", body: bytes = b"Prumo keeps notes in plain text.\n") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, body, content_type="application/octet-stream")


# ---------------------------------------------------------------- plan rate limits


def test_a_key_gets_its_plans_requests_per_minute_then_429(keys, org_a, client_for):
    # The plan edit is part of this test's transaction: it is rolled back (restored) afterwards.
    Plan.objects.filter(code="starter").update(requests_per_minute=3)
    client, auth = Client(), bearer(keys["read"])
    answers = [client.get("/api/v1/organization/", **auth) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert [r["x-ratelimit-remaining-requests"] for r in answers] == ["2", "1", "0"]
    assert {r["x-ratelimit-limit-requests"] for r in answers} == {"3"}
    assert all(r["x-ratelimit-reset-requests"].endswith("s") for r in answers)
    assert "x-ratelimit-limit-tokens" not in answers[0]
    limited = client.get("/api/v1/organization/", **auth)
    assert limited.status_code == 429
    body = limited.json()
    assert body["code"] == "rate_limit_exceeded" and "requests per minute" in body["detail"]
    assert 1 <= int(limited["Retry-After"]) <= 60
    assert (limited["x-ratelimit-limit-requests"], limited["x-ratelimit-remaining-requests"]) == ("3", "0")
    # The organization's counter is shared by its keys; writes are refused the same way.
    other = client.post("/api/v1/threads/", {"model": DEMO}, content_type="application/json", **bearer(keys["chat"]))
    assert other.status_code == 429 and other.json()["code"] == "rate_limit_exceeded"
    # The web UI (a session) is not counted against the plan and carries no plan headers.
    owner, headers = session(client_for, "a", "owner", org_a)
    browser = owner.get("/api/v1/organization/", **headers)
    assert browser.status_code == 200 and "x-ratelimit-limit-requests" not in browser


def test_two_organizations_have_independent_counters(keys, org_a, org_b):
    Plan.objects.filter(code="starter").update(requests_per_minute=2)
    a, b = bearer(keys["read"]), bearer(keys["b"])
    assert [Client().get("/api/v1/billing/balance/", **a).status_code for _ in range(3)] == [200, 200, 429]
    from_b = [Client().get("/api/v1/billing/balance/", **b) for _ in range(3)]
    assert [r.status_code for r in from_b] == [200, 200, 429]
    assert from_b[0]["x-ratelimit-remaining-requests"] == "1"


def test_refused_key_calls_count_and_carry_the_headers(keys):
    Plan.objects.filter(code="starter").update(requests_per_minute=2)
    auth = bearer(keys["chat"])
    refused = Client().get("/api/v1/billing/balance/", **auth)  # the chat scope does not read billing
    assert refused.status_code == 403 and refused["x-ratelimit-remaining-requests"] == "1"
    assert Client().get("/api/v1/threads/", **auth).status_code == 200
    assert Client().get("/api/v1/threads/", **auth).status_code == 429


# ---------------------------------------------------------------- regenerate, edit, stop


def test_regenerate_replaces_the_last_answer(keys, org_a, django_capture_on_commit_callbacks):
    client, auth = Client(), bearer(keys["chat"])
    made = thread_with_answer(client, auth, django_capture_on_commit_callbacks)
    url = f"/api/v1/threads/{made['thread']}/"
    with django_capture_on_commit_callbacks(execute=True):
        again = client.post(f"{url}regenerate/", {}, content_type="application/json", **auth)
    assert again.status_code == 202
    pending = again.json()
    assert (pending["role"], pending["status"], pending["thread"]) == ("assistant", "pending", made["thread"])
    assert pending["id"] != made["answer"]
    assert client.get(f"{url}messages/{made['answer']}/", **auth).status_code == 404  # replaced
    answer = client.get(f"{url}messages/{pending['id']}/", **auth).json()
    assert answer["status"] == "complete" and answer["content"]
    roles = [m["role"] for m in client.get(f"{url}messages/", **auth).json()["results"]]
    assert roles == ["assistant", "user"]
    unknown = client.post(f"{url}regenerate/", {"model": "nope/nothing"}, content_type="application/json", **auth)
    assert unknown.status_code == 400 and "not available" in unknown.json()["detail"]


def test_regenerate_and_edit_refuse_with_the_reason(keys):
    client, auth = Client(), bearer(keys["chat"])
    thread = client.post("/api/v1/threads/", {"model": DEMO}, content_type="application/json", **auth).json()
    url = f"/api/v1/threads/{thread['id']}/"
    empty = client.post(f"{url}regenerate/", {}, content_type="application/json", **auth)
    assert empty.status_code == 400 and "nothing to answer" in empty.json()["detail"]
    assert client.post(f"{url}messages/", {"content": "one"}, content_type="application/json",
                       **auth).status_code == 202  # stays pending: no commit
    for path, body in (("regenerate/", {}), ("edit/", {"content": "two"})):
        busy = client.post(f"{url}{path}", body, content_type="application/json", **auth)
        assert busy.status_code == 400 and "Wait" in busy.json()["detail"], path
    blank = client.post(f"{url}edit/", {"content": ""}, content_type="application/json", **auth)
    assert blank.status_code == 400 and "content" in blank.json()


def test_edit_changes_the_last_question_and_answers_again(keys, django_capture_on_commit_callbacks):
    client, auth = Client(), bearer(keys["chat"])
    made = thread_with_answer(client, auth, django_capture_on_commit_callbacks, question="Wrong question")
    url = f"/api/v1/threads/{made['thread']}/"
    with django_capture_on_commit_callbacks(execute=True):
        edited = client.post(f"{url}edit/", {"content": "Right question"}, content_type="application/json", **auth)
    assert edited.status_code == 202 and edited.json()["status"] == "pending"
    messages = client.get(f"{url}messages/", **auth).json()["results"]
    assert [(m["role"], m["status"]) for m in messages] == [("assistant", "complete"), ("user", "complete")]
    assert messages[1]["content"] == "Right question" and messages[0]["id"] == edited.json()["id"]


def test_stop_ends_a_running_answer(keys, django_capture_on_commit_callbacks):
    client, auth = Client(), bearer(keys["chat"])
    thread = client.post("/api/v1/threads/", {"model": DEMO}, content_type="application/json", **auth).json()
    url = f"/api/v1/threads/{thread['id']}/messages/"
    with django_capture_on_commit_callbacks() as queued:  # the generation is queued, not run yet
        answer = client.post(url, {"content": "A long story, please"}, content_type="application/json", **auth).json()
    stopped = client.post(f"{url}{answer['id']}/stop/", **auth)
    assert stopped.status_code == 202 and stopped.json()["id"] == answer["id"]
    for callback in queued:  # the worker picks it up now, and sees the stop
        callback()
    final = client.get(f"{url}{answer['id']}/", **auth).json()
    assert final["status"] == "stopped"
    again = client.post(f"{url}{answer['id']}/stop/", **auth)
    assert again.status_code == 200 and again.json()["status"] == "stopped"  # finished: nothing to stop
    assert client.post(f"{url}{answer['id'] + 1000}/stop/", **auth).status_code == 404
    other = client.post("/api/v1/threads/", {"model": DEMO}, content_type="application/json", **auth).json()
    assert client.post(f"/api/v1/threads/{other['id']}/messages/{answer['id']}/stop/", **auth).status_code == 404


# ---------------------------------------------------------------- attachments


def test_upload_list_and_send_an_attachment(keys, org_a, django_capture_on_commit_callbacks):
    client, auth = Client(), bearer(keys["chat"])
    thread = client.post("/api/v1/threads/", {"model": DEMO}, content_type="application/json", **auth).json()
    url = f"/api/v1/threads/{thread['id']}/"
    uploaded = client.post(f"{url}attachments/", {"file": text_file()}, **auth)
    assert uploaded.status_code == 201, uploaded.content
    file = uploaded.json()
    assert (file["filename"], file["kind"], file["thread"], file["message"]) == ("notes.txt", "text", thread["id"],
                                                                                 None)
    assert file["size"] == len(b"Prumo keeps notes in plain text.\n") and file["text_tokens"] > 0
    listing = client.get(f"{url}attachments/", **auth).json()["results"]
    assert [a["id"] for a in listing] == [file["id"]]
    with django_capture_on_commit_callbacks(execute=True):
        sent = client.post(f"{url}messages/", {"content": "", "attachments": [file["id"]]},
                           content_type="application/json", **auth)
    assert sent.status_code == 202
    question = client.get(f"{url}messages/", **auth).json()["results"][1]
    assert question["role"] == "user" and [a["id"] for a in question["attachments"]] == [file["id"]]
    assert client.get(f"{url}attachments/", **auth).json()["results"][0]["message"] == question["id"]
    with schema_context(org_a.schema_name):
        assert Attachment.objects.get(token=file["id"]).message_id == question["id"]
    # Sent already: it cannot be sent again, nor can an id that does not exist.
    again = client.post(f"{url}messages/", {"content": "again", "attachments": [file["id"], "nope"]},
                        content_type="application/json", **auth)
    assert again.status_code == 400 and "nope" in again.json()["attachments"][0]


def test_uploads_are_checked_by_content_and_plan_size(keys, org_a):
    client, auth = Client(), bearer(keys["chat"])
    thread = client.post("/api/v1/threads/", {"model": DEMO}, content_type="application/json", **auth).json()
    url = f"/api/v1/threads/{thread['id']}/attachments/"
    html = client.post(url, {"file": text_file("page.txt", b"<!doctype html><script>alert(1)</script>")}, **auth)
    assert html.status_code == 400 and "not supported" in html.json()["file"][0]
    assert client.post(url, {}, **auth).status_code == 400  # no file
    as_json = client.post(url, {"file": "x"}, content_type="application/json", **auth)
    assert as_json.status_code == 415
    Plan.objects.filter(code="starter").update(max_upload_mb=0)
    org_config_bump()  # a raw update sends no signal; the admin's save would (chat.signals)
    too_big = client.post(url, {"file": text_file()}, **auth)
    assert too_big.status_code == 400 and "larger than your plan allows" in too_big.json()["file"][0]
    assert client.get(url, **auth).json()["results"] == []
    with schema_context(org_a.schema_name):
        assert not Attachment.objects.filter(thread_id=thread["id"]).exists()


# ---------------------------------------------------------------- API keys: create and revoke


def test_an_admin_session_creates_a_key_shown_once(client_for, org_a, tenant_world):
    admin, headers = session(client_for, "a", "admin", org_a)
    reauthenticate(admin)
    expires = (timezone.now() + timedelta(days=30)).isoformat()
    created = admin.post("/api/v1/api-keys/", {"name": "CRM sync", "scopes": ["read", "chat"], "expires_at": expires},
                         content_type="application/json", **headers)
    assert created.status_code == 201 and created["Cache-Control"] == "no-store"
    body = created.json()
    stored = ApiKey.objects.get(pk=body["id"])
    assert (stored.organization_id, stored.name, stored.scopes, stored.created_by) == (
        org_a.pk, "CRM sync", ["chat", "read"], tenant_world["a"]["admin"])
    assert body["key"].startswith("prm_") and body["prefix"] == stored.display_prefix and not body["revoked"]
    assert stored.key_hash not in created.content.decode()
    assert Client().get("/api/v1/organization/", **bearer(body["key"])).json()["slug"] == org_a.slug
    listed = admin.get("/api/v1/api-keys/", **headers)
    assert body["key"] not in listed.content.decode()
    assert "key" not in next(k for k in listed.json()["results"] if k["id"] == body["id"])
    with schema_context(org_a.schema_name):
        event = AuditEvent.objects.get(action="api_key.created", target_id=str(stored.pk))
    assert (event.actor_type, event.actor_label) == ("user", "admin-a@example.com")


def test_key_input_is_validated(client_for, org_a):
    admin, headers = session(client_for, "a", "admin", org_a)
    past = (timezone.now() - timedelta(minutes=1)).isoformat()
    for bad in ({"name": "x", "scopes": []}, {"name": "x", "scopes": ["admin"]}, {"name": " ", "scopes": ["read"]},
                {"name": "x", "scopes": ["read"], "expires_at": past}, {"scopes": ["read"]}):
        response = admin.post("/api/v1/api-keys/", bad, content_type="application/json", **headers)
        assert response.status_code == 400, bad
    assert not ApiKey.objects.filter(organization=org_a, name="x").exists()


def test_only_admin_sessions_create_and_revoke_keys(client_for, org_a, keys):
    target = ApiKey.objects.get(organization=org_a, name="a read")
    revoke = f"/api/v1/api-keys/{target.pk}/revoke/"
    for role in ("member", "viewer"):
        client, headers = session(client_for, "a", role, org_a)
        refused = client.post("/api/v1/api-keys/", {"name": "x", "scopes": ["read"]}, content_type="application/json",
                              **headers)
        assert refused.status_code == 403 and "role" in refused.json()["detail"], role
        assert client.post(revoke, **headers).status_code == 403, role
    # A key can never mint or revoke keys, whatever its scopes.
    for raw in (keys["all"], keys["read"]):
        minted = Client().post("/api/v1/api-keys/", {"name": "x", "scopes": ["read"]},
                               content_type="application/json", **bearer(raw))
        assert minted.status_code == 403 and "keys cannot do this" in minted.json()["detail"]
        assert Client().post(revoke, **bearer(raw)).status_code == 403
    assert not ApiKey.objects.filter(organization=org_a, name="x").exists()
    assert ApiKey.objects.get(pk=target.pk).revoked_at is None


def test_revoking_a_key_stops_it(client_for, org_a, keys, django_capture_on_commit_callbacks):
    target = ApiKey.objects.get(organization=org_a, name="a read")
    owner, headers = session(client_for, "a", "owner", org_a)
    with django_capture_on_commit_callbacks(execute=True):
        revoked = owner.post(f"/api/v1/api-keys/{target.pk}/revoke/", **headers)
    assert revoked.status_code == 200
    assert (revoked.json()["id"], revoked.json()["revoked"]) == (target.pk, True) and revoked.json()["revoked_at"]
    assert api_key_authenticate(keys["read"]) is None
    assert Client().get("/api/v1/organization/", **bearer(keys["read"])).status_code == 401
    again = owner.post(f"/api/v1/api-keys/{target.pk}/revoke/", **headers)
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert owner.post("/api/v1/api-keys/999999999/revoke/", **headers).status_code == 404
    with schema_context(org_a.schema_name):
        assert AuditEvent.objects.filter(action="api_key.revoked", target_id=str(target.pk)).count() == 1


# ---------------------------------------------------------------- isolation, scopes and roles


def test_another_organization_gets_404_on_the_new_endpoints(keys, org_a, org_b, client_for,
                                                            django_capture_on_commit_callbacks):
    client, auth = Client(), bearer(keys["chat"])
    made = thread_with_answer(client, auth, django_capture_on_commit_callbacks, question="Secret of A")
    upload = client.post(f"/api/v1/threads/{made['thread']}/attachments/", {"file": text_file()}, **auth)
    assert upload.status_code == 201
    thread = f"/api/v1/threads/{made['thread']}/"
    targets = [("post", f"{thread}regenerate/", {}), ("post", f"{thread}edit/", {"content": "x"}),
               ("post", f"{thread}messages/{made['answer']}/stop/", {}), ("get", f"{thread}attachments/", None),
               ("post", f"{thread}messages/", {"content": "x", "attachments": [upload.json()["id"]]})]
    b_owner, b_headers = session(client_for, "b", "owner", org_b)
    for method, url, data in targets:
        assert call(Client(), method, url, data, **bearer(keys["b"])).status_code == 404, url
        assert call(b_owner, method, url, data, **b_headers).status_code == 404, url
    b_upload = Client().post(f"{thread}attachments/", {"file": text_file()}, **bearer(keys["b"]))
    assert b_upload.status_code == 404
    # Org B's admin cannot revoke org A's key, even by its id.
    a_key = ApiKey.objects.get(organization=org_a, name="a chat")
    b_admin, _ = session(client_for, "b", "admin", org_b)
    assert b_admin.post(f"/api/v1/api-keys/{a_key.pk}/revoke/", **b_headers).status_code == 404
    assert ApiKey.objects.get(pk=a_key.pk).revoked_at is None
    with schema_context(org_a.schema_name):
        assert Message.objects.filter(thread_id=made["thread"]).count() == 2
        assert Attachment.objects.filter(thread_id=made["thread"]).count() == 1


def test_read_keys_and_viewers_cannot_write(keys, org_a, client_for, django_capture_on_commit_callbacks):
    chat = bearer(keys["chat"])
    made = thread_with_answer(Client(), chat, django_capture_on_commit_callbacks)
    thread = f"/api/v1/threads/{made['thread']}/"
    writes = [(f"{thread}regenerate/", {}), (f"{thread}edit/", {"content": "x"}),
              (f"{thread}messages/{made['answer']}/stop/", {})]
    for url, data in writes:
        refused = call(Client(), "post", url, data, **bearer(keys["read"]))
        assert refused.status_code == 403 and "scope" in refused.json()["detail"], url
    upload = Client().post(f"{thread}attachments/", {"file": text_file()}, **bearer(keys["read"]))
    assert upload.status_code == 403
    assert Client().get(f"{thread}attachments/", **bearer(keys["read"])).status_code == 200  # reading is fine
    viewer, headers = session(client_for, "a", "viewer", org_a)
    for url, data in [*writes, (f"{thread}attachments/", {})]:
        refused = call(viewer, "post", url, data, **headers)
        assert refused.status_code == 403 and "role" in refused.json()["detail"], url
    with schema_context(org_a.schema_name):
        assert list(Message.objects.filter(thread_id=made["thread"]).values_list("status", flat=True)) == [
            "complete", "complete"]
        assert not Attachment.objects.filter(thread_id=made["thread"]).exists()


def test_threads_filter_by_pinned(keys):
    client, auth = Client(), bearer(keys["chat"])
    ids = [client.post("/api/v1/threads/", {"model": DEMO, "title": f"T{i}"}, content_type="application/json",
                       **auth).json()["id"] for i in range(3)]
    client.patch(f"/api/v1/threads/{ids[1]}/", {"pinned": True}, content_type="application/json", **auth)
    assert [t["id"] for t in client.get("/api/v1/threads/?pinned=true", **auth).json()["results"]] == [ids[1]]
    unpinned = [t["id"] for t in client.get("/api/v1/threads/?pinned=false", **auth).json()["results"]]
    assert unpinned == [ids[2], ids[0]]
    assert len(client.get("/api/v1/threads/", **auth).json()["results"]) == 3
    assert client.get("/api/v1/threads/?pinned=true&search=T1", **auth).json()["results"][0]["id"] == ids[1]
    assert client.get("/api/v1/threads/?pinned=maybe", **auth).status_code == 400


def test_calls_without_a_valid_key_or_session_are_limited_per_address(settings):
    from core.redis_clients import redis_client

    settings.API_UNAUTHENTICATED_PER_MINUTE = 3
    redis_client().delete("rl:ip:192.0.2.77")
    anonymous = Client(REMOTE_ADDR="192.0.2.77")
    statuses = [anonymous.get("/api/v1/threads/", HTTP_AUTHORIZATION="Bearer prm_" + "x" * 44).status_code,
                anonymous.get("/api/v1/threads/").status_code, anonymous.get("/api/v1/billing/balance/").status_code,
                anonymous.get("/api/v1/threads/").status_code]
    assert statuses == [401, 401, 401, 429]
    limited = anonymous.get("/api/v1/threads/")
    assert limited.json()["code"] == "rate_limit_exceeded" and int(limited["Retry-After"]) >= 1
    assert Client(REMOTE_ADDR="192.0.2.78").get("/api/v1/threads/").status_code == 401  # per address
