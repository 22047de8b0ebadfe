"""Settings → Audit log (/o/<slug>/settings/audit/), its CSV/JSON export and GET /api/v1/audit-events/:
owners and admins only, another organization 404, filters, a keyset cursor, bounded queries, streamed
exports safe from formulas, and every recorded action in the catalogue."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tenants.utils import schema_context

from billing.models import BillingAccount, Plan
from billing.ratelimits import rate_limit_keys
from core.redis_clients import redis_client
from tenants.api_keys import api_key_create
from tenants.audit.actions import ACTIONS, action_choices
from tenants.audit.models import AuditEvent
from tenants.audit.selectors import AuditFilters, audit_event_chunks
from tenants.audit.services import Actor, audit_record

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r'"([a-z_]+\.[a-z_]+)"')


def page(org) -> str:
    return f"/o/{org.slug}/settings/audit/"


def export(org) -> str:
    return f"/o/{org.slug}/settings/audit/export/"


def record(org, action: str = "organization.updated", *, actor: Actor | None = None, **fields) -> AuditEvent:
    return audit_record(organization=org, actor=actor or Actor(type="user", id="77", label="alice@example.com"),
                        action=action, **fields)


def events_of(org, **filters) -> list[AuditEvent]:
    with schema_context(org.schema_name):
        return list(AuditEvent.objects.filter(**filters))


def streamed(response) -> str:
    assert response.streaming, "the export must stream"
    return b"".join(response.streaming_content).decode("utf-8")


# ---------------------------------------------------------------- who may see it


def test_owners_and_admins_see_the_page_members_and_viewers_get_403(client_for, org_a):
    record(org_a, target_label="Acme")
    for role in ("owner", "admin"):
        response = client_for("a", role).get(page(org_a))
        assert response.status_code == 200, role
        text = response.content.decode()
        assert 'data-testid="audit-row"' in text and "Acme" in text
        assert f'href="{page(org_a)}"' in text  # the settings navigation links to it
    for role in ("member", "viewer"):
        assert client_for("a", role).get(page(org_a)).status_code == 403, role
        assert client_for("a", role).get(export(org_a)).status_code == 403, role
    tabs = client_for("a", "member").get(f"/o/{org_a.slug}/settings/").content.decode()
    assert f'href="{page(org_a)}"' not in tabs  # not offered to those who cannot open it
    assert b'data-testid="audit-log-link"' in client_for("a", "admin").get(f"/o/{org_a.slug}/").content
    assert b'data-testid="audit-log-link"' not in client_for("a", "member").get(f"/o/{org_a.slug}/").content


def test_another_organization_gets_404_and_never_the_events(client_for, org_a, org_b):
    record(org_a, target_label="secret-of-a")
    owner_b = client_for("b", "owner")
    for url in (page(org_a), export(org_a), f"{export(org_a)}?format=json"):
        response = owner_b.get(url)
        assert response.status_code == 404, url
        assert b"secret-of-a" not in response.content
    own = owner_b.get(page(org_b))
    assert own.status_code == 200 and "secret-of-a" not in own.content.decode()
    assert not events_of(org_a, action="audit.exported")


# ---------------------------------------------------------------- filters, cursor, queries


def test_filters_by_actor_action_group_target_and_dates(client_for, org_a):
    key_actor = Actor(type="api_key", id="991", label="API key 991")
    record(org_a, "api_key.created", actor=key_actor, target_type="tenants.apikey", target_id="991",
           target_label="ci key")
    record(org_a, "api_key.revoked", target_type="tenants.apikey", target_id="992", target_label="old key")
    record(org_a, "webhook_endpoint.created", actor=Actor(type="user", id="78", label="bob@example.com"),
           target_type="webhooks.webhookendpoint", target_id="5", target_label="https://hooks.example.com")
    client = client_for("a", "admin")

    def actions(**query) -> list[str]:
        response = client.get(page(org_a), query)
        assert response.status_code == 200, response.content
        return re.findall(r'data-testid="audit-row" data-action="([^"]+)"', response.content.decode())

    assert actions(action="api_key.created") == ["api_key.created"]
    assert actions(action="api_key.*") == ["api_key.revoked", "api_key.created"]
    assert actions(actor="bob@") == ["webhook_endpoint.created"]
    assert actions(actor="991") == ["api_key.created"]
    assert actions(actor_type="api_key") == ["api_key.created"]
    assert actions(target_type="tenants.apikey", target_id="992") == ["api_key.revoked"]
    today = timezone.localdate()
    assert "webhook_endpoint.created" in actions(since=today.isoformat(), until=today.isoformat())
    assert actions(since=(today + timedelta(days=1)).isoformat()) == []
    assert actions(until=(today - timedelta(days=1)).isoformat()) == []
    empty = client.get(page(org_a), {"action": "credits.purchased"})
    assert b'data-testid="empty-state"' in empty.content and b"No event matches these filters." in empty.content


def test_bad_filters_get_a_clear_400(client_for, org_a):
    client = client_for("a", "owner")
    unknown = client.get(page(org_a), {"action": "rm -rf"})
    assert unknown.status_code == 400 and "Select a valid choice" in unknown.content.decode()
    backwards = client.get(page(org_a), {"since": "2026-05-02", "until": "2026-05-01"})
    assert backwards.status_code == 400 and "The end date is before the start date." in backwards.content.decode()
    assert client.get(page(org_a), {"since": "yesterday"}).status_code == 400
    assert client.get(page(org_a), {"cursor": "not-a-cursor"}).status_code == 404
    bad_export = client.get(export(org_a), {"format": "xml"})
    assert bad_export.status_code == 400 and b"format=csv" in bad_export.content


def test_the_cursor_walks_every_event_once_newest_first_and_back(client_for, org_a):
    for number in range(120):
        record(org_a, "checks.settings_changed", target_type="bench", target_id=str(number),
               target_label=f"row {number}")
    client = client_for("a", "owner")
    seen, url, pages = [], page(org_a) + "?action=checks.settings_changed", []
    while url:
        response = client.get(url)
        assert response.status_code == 200
        pages.append(url)
        seen += response.context["page"].events
        older = re.search(r'href="\?([^"]+)" rel="next"', response.content.decode())
        url = page(org_a) + "?" + older.group(1).replace("&amp;", "&") if older else ""
    assert len(pages) == 3
    labels = [event.target_label for event in seen]
    assert labels == [f"row {number}" for number in reversed(range(120))]  # newest first, none twice
    last = client.get(pages[-1]).content.decode()
    newer = re.search(r'href="\?([^"]+)" rel="prev"', last).group(1).replace("&amp;", "&")
    back = client.get(page(org_a) + "?" + newer)
    assert [e.target_label for e in back.context["page"].events] == labels[50:100]
    assert "OFFSET" not in " ".join(q["sql"] for q in _queries(client, pages[-1]))


def _queries(client, url: str) -> list[dict]:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return queries.captured_queries


def test_a_page_costs_the_same_queries_with_few_or_many_events(client_for, org_a):
    client = client_for("a", "owner")
    client.get(page(org_a))  # warm per-process caches
    for number in range(3):
        record(org_a, target_label=f"few {number}")
    few = len(_queries(client, page(org_a)))
    for number in range(80):
        record(org_a, "api_key.used", before={"n": number}, after={"n": number + 1}, target_label=f"many {number}")
    many = _queries(client, page(org_a))
    assert len(many) == few, [q["sql"] for q in many]
    assert few <= 12


# ---------------------------------------------------------------- export


def test_csv_export_streams_the_filtered_events_safe_from_formulas_and_is_audited(client_for, org_a):
    record(org_a, "provider_key.created", target_label="=HYPERLINK(\"http://evil.example\",\"x\")",
           after={"note": "+1 formula"})
    record(org_a, "membership.removed", target_label="Carol")
    client = client_for("a", "admin")
    response = client.get(export(org_a), {"action": "provider_key.created", "format": "csv"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="audit-org-a-')
    rows = list(csv.reader(io.StringIO(streamed(response).lstrip("\ufeff"))))
    assert rows[0][:5] == ["When (UTC)", "Actor type", "Actor id", "Actor", "Action"]
    [row] = rows[1:]
    assert row[4] == "provider_key.created" and row[5] == "AI provider key added"
    assert row[8] == "'=HYPERLINK(\"http://evil.example\",\"x\")"  # shown as text, never run
    assert json.loads(row[13]) == {"note": "+1 formula"}
    [exported] = events_of(org_a, action="audit.exported")
    assert exported.actor_label == "admin-a@example.com"
    assert exported.after == {"format": "csv", "filters": {"action": "provider_key.created"}}


def test_json_export_is_one_array_in_the_api_shape(client_for, org_a):
    for number in range(3):
        record(org_a, "invitation.created", target_label=f"guest{number}@example.com")
    response = client_for("a", "owner").get(export(org_a), {"action": "invitation.*", "format": "json"})
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    data = json.loads(streamed(response))
    assert [item["target_label"] for item in data] == [f"guest{n}@example.com" for n in (2, 1, 0)]
    assert set(data[0]) >= {"id", "created_at", "actor_type", "actor_label", "action", "action_label",
                            "target_type", "target_id", "ip_address", "before", "after"}


def test_the_export_reads_in_bounded_chunks_after_the_request(org_a):
    """Each chunk is one query in the organization's schema, so lines can be produced once the request (and its
    schema) ended, and a big log is never loaded at once."""
    for number in range(7):
        record(org_a, "thread.deleted", target_label=f"t{number}")
    assert connection.schema_name == "public"
    chunks = list(audit_event_chunks(schema=org_a.schema_name, filters=AuditFilters(action="thread.deleted"),
                                     chunk_size=3))
    assert [len(chunk) for chunk in chunks] == [3, 3, 1]
    assert [e.target_label for chunk in chunks for e in chunk] == [f"t{n}" for n in reversed(range(7))]


# ---------------------------------------------------------------- the API


@pytest.fixture
def api_plans(org_a, org_b):
    starter = Plan.objects.get(code="starter")
    BillingAccount.objects.filter(pk__in=[org_a.pk, org_b.pk]).update(plan=starter)
    client = redis_client()
    for org in (org_a, org_b):
        client.delete(*rate_limit_keys(org.pk, 0))


def bearer(raw: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_api_keys_see_only_their_own_organization(client, tenant_world, org_a, org_b, api_plans):
    record(org_a, target_label="only-in-a")
    record(org_b, target_label="only-in-b")
    key_a = api_key_create(organization=org_a, name="a read", scopes=["read"], actor=Actor.system(),
                           user=tenant_world["a"]["admin"]).raw
    key_b = api_key_create(organization=org_b, name="b read", scopes=["read"], actor=Actor.system()).raw
    seen_a = client.get("/api/v1/audit-events/", {"page_size": 100}, **bearer(key_a))
    seen_b = client.get("/api/v1/audit-events/", {"page_size": 100}, **bearer(key_b))
    assert seen_a.status_code == seen_b.status_code == 200
    labels_a = {item["target_label"] for item in seen_a.json()["results"]}
    labels_b = {item["target_label"] for item in seen_b.json()["results"]}
    assert "only-in-a" in labels_a and "only-in-b" not in labels_a
    assert "only-in-b" in labels_b and "only-in-a" not in labels_b
    assert client.get("/api/v1/audit-events/", HTTP_X_ORGANIZATION=org_a.slug, **bearer(key_b)).status_code == 404
    chat_only = api_key_create(organization=org_a, name="a chat", scopes=["chat"], actor=Actor.system(),
                               user=tenant_world["a"]["admin"]).raw
    refused = client.get("/api/v1/audit-events/", **bearer(chat_only))
    assert refused.status_code == 403 and "scope" in refused.json()["detail"]


def test_api_sessions_need_an_admin_and_membership(client_for, org_a, api_plans):
    record(org_a, "api_key.revoked", target_label="k1")
    admin = client_for("a", "admin").get("/api/v1/audit-events/", {"action": "api_key.revoked"},
                                         HTTP_X_ORGANIZATION=org_a.slug)
    assert admin.status_code == 200
    [item] = admin.json()["results"]
    assert item["target_label"] == "k1" and item["action_label"] == "API key revoked"
    assert client_for("a", "member").get("/api/v1/audit-events/", HTTP_X_ORGANIZATION=org_a.slug).status_code == 403
    assert client_for("b", "owner").get("/api/v1/audit-events/", HTTP_X_ORGANIZATION=org_a.slug).status_code == 404


def test_api_filters_cursor_and_errors(client_for, org_a, api_plans):
    for number in range(5):
        record(org_a, "credits.adjusted", target_label=f"adj {number}")
    client = client_for("a", "owner")
    headers = {"HTTP_X_ORGANIZATION": org_a.slug}
    first = client.get("/api/v1/audit-events/", {"action": "credits.adjusted", "page_size": 2}, **headers).json()
    assert [i["target_label"] for i in first["results"]] == ["adj 4", "adj 3"] and first["previous"] is None
    second = client.get(first["next"], **headers).json()
    assert [i["target_label"] for i in second["results"]] == ["adj 2", "adj 1"]
    back = client.get(second["previous"], **headers).json()
    assert [i["target_label"] for i in back["results"]] == ["adj 4", "adj 3"]
    since = (timezone.now() + timedelta(days=1)).date().isoformat()
    assert client.get("/api/v1/audit-events/", {"since": since}, **headers).json()["results"] == []
    bad = client.get("/api/v1/audit-events/", {"action": "nope"}, **headers)
    assert bad.status_code == 400 and "action" in bad.json()
    assert client.get("/api/v1/audit-events/", {"cursor": "zzz"}, **headers).status_code == 404
    assert client.get("/api/v1/audit-events/", {"page_size": "1000"}, **headers).status_code == 400
    wrong_order = client.get("/api/v1/audit-events/", {"since": "2026-02-02", "until": "2026-02-01"}, **headers)
    assert wrong_order.status_code == 400 and "until" in wrong_order.json()


def test_the_api_is_in_the_openapi_schema(client):
    schema = client.get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/v1/audit-events/"]["get"]
    names = {parameter["name"] for parameter in operation["parameters"]}
    assert {"actor", "actor_type", "action", "target_type", "target_id", "since", "until", "cursor",
            "page_size"} <= names
    body = operation["responses"]["200"]["content"]["application/json"]["schema"]
    page_schema = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert {"next", "previous", "results"} <= set(page_schema["properties"])


# ---------------------------------------------------------------- the catalogue


def test_every_recorded_action_is_in_the_catalogue_and_the_filter():
    """Every `action="x.y"` a caller passes to audit_record (and the records module) is listed with a label."""
    recorded = set()
    apps = [ROOT / name for name in ("accounts", "billing", "chat", "checks", "config", "core", "tenants", "webhooks")]
    for path in (path for app in apps for path in app.rglob("*.py")):
        text = path.read_text()
        if "audit_record" not in text and "user_event_record" not in text and "export_record" not in text:
            continue
        # `action="x.y"`, `action: str = "x.y"` and the names a conditional picks (`"x.y" if … else "z.w"`)
        for match in re.finditer(r"\baction(?::\s*str)?\s*=\s*(\(?)", text):
            window = text[match.end():match.end() + 240]
            window = window.split(")", 1)[0] if match.group(1) else re.split(r"[,)]", window, maxsplit=1)[0]
            recorded |= set(NAME.findall(window))
    assert len(recorded) > 30
    assert recorded - set(ACTIONS) == set()
    offered = {value for _group, options in action_choices()[1:] for value, _label in options}
    assert set(ACTIONS) <= offered
