"""Viewers are read-only everywhere: every state-changing page under /o/<slug>/ checks the role as the API does.

The walk POSTs to every URL pattern under /o/<slug>/ as a viewer, with real objects of org-a in the URL, so a
new view that forgets the rule (or opts out of it without being on the allow-list) fails here.
"""

from __future__ import annotations

import re

import pytest
from django.apps import apps
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django_tenants.utils import schema_context

from billing.models import BillingAccount
from chat import services as chat_services
from chat.catalog.services import provider_key_set
from chat.models import Message, Thread
from chat.services import cancel_key
from checks import bulk
from checks.models import Alert, Target
from checks.services import check_request, report_write, target_add
from core.redis_clients import redis_client
from tenants.api_keys import api_key_create
from tenants.audit.services import Actor
from tenants.models import Membership
from tenants.services import invitation_create
from webhooks.services import webhook_endpoint_create, webhook_endpoint_test

from ..checks_reports import dbone_report, serpro_matriz_report
from ..urlwalk import routes

pytestmark = pytest.mark.django_db

ORG_PREFIX = "o/<slug:org_slug>/"
# The only changes a viewer makes under /o/<slug>/ (profile and language live outside it).
VIEWER_MAY_POST = {"member_leave"}
# Rows a refused POST could have touched: every table of the apps behind /o/<slug>/.
WATCHED_APPS = ("tenants", "audit", "billing", "catalog", "chat", "checks", "webhooks")
EXPLANATION = "can only read. Ask an admin for the Member role."


def _objects(org, people) -> dict[str, object]:
    """A real object of org-a for every URL argument, made through the services as their owners would."""
    owner, viewer = people["owner"], people["viewer"]
    actor = Actor.system("tests")
    with schema_context(org.schema_name):
        option = chat_services.options_for(org)[0]
        # A viewer demoted from member keeps their threads: the role, not privacy, must refuse the writes.
        thread = chat_services.thread_create(user=viewer, model_id=option.id)
        upload = SimpleUploadedFile("notes.txt", b"hello", content_type="text/plain")
        attachment = chat_services.attachment_upload(organization=org, thread=thread, user=viewer, upload=upload)
        answer = chat_services.message_send(organization=org, user=viewer, thread=thread, content="hi",
                                            attachment_tokens=[attachment.token])
        target = target_add(cnpj="19131243000197", schedule=Target.Schedule.DAILY, user=owner)
        first = report_write(target=target, check=None, record=serpro_matriz_report(), provider="serpro")
        second = report_write(target=target, check=None, record=serpro_matriz_report(situacao_code=8,
                              situacao_label="BAIXADA"), provider="serpro")
        alert = Alert.objects.get(report=second, previous_report=first)
        other = target_add(cnpj="05525406000101", user=owner)
        report_write(target=other, check=None, record=dbone_report(), provider="cnpjws")
        check = check_request(organization=org, target=other, user=owner, refresh=True)
        batch = bulk.batch_create(organization=org, user=owner, uploaded_file=SimpleUploadedFile(
            "list.csv", b"cnpj\n19131243000197\n", content_type="text/csv"))
    key = api_key_create(organization=org, name="ci", scopes=["read"], actor=actor, user=owner)
    provider_key_set(organization=org, provider="openai", secret="sk-" + "a" * 40, user=owner, actor=actor)
    invitation = invitation_create(organization=org, email="someone@example.com", role="member",
                                   invited_by=owner, actor=actor)
    endpoint = webhook_endpoint_create(organization=org, actor=actor, url="https://hooks.example.com/prumo").endpoint
    with schema_context(org.schema_name):
        delivery = webhook_endpoint_test(organization=org, endpoint=endpoint).deliveries.get()
    return {
        "thread_id": thread.pk, "message_id": answer.pk, "token": attachment.token, "target_id": target.pk,
        "check_id": check.pk, "report_id": first.pk, "alert_id": alert.pk, "batch_id": batch.pk,
        "membership_id": Membership.objects.get(organization=org, user=people["member"]).pk,
        "key_id": key.key.pk, "provider": "openai", "invitation_id": invitation.invitation.pk,
        "endpoint_id": endpoint.pk, "delivery_id": delivery.pk, "action": "rotate",
    }


def _path(route: str, org, objects: dict) -> str:
    def fill(match: re.Match) -> str:
        name = match.group(2)
        assert name in objects, f"tests/security/test_roles.py: give the URL argument <{name}> a real object"
        return str(objects[name])

    return "/" + re.sub(r"<(\w+):(\w+)>", fill, route.replace("<slug:org_slug>", org.slug))


def _snapshot(org) -> dict[str, str]:
    """A digest of every row of every watched table (the organization's schema and public) and the balance."""
    digests = {}
    with schema_context(org.schema_name), connection.cursor() as cursor:
        for label in WATCHED_APPS:
            for model in apps.get_app_config(label).get_models():
                table = connection.ops.quote_name(model._meta.db_table)
                cursor.execute(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                               f"FROM {table} t")
                digests[model._meta.label] = cursor.fetchone()
    digests["balance"] = str(BillingAccount.objects.get(pk=org.pk).credits)
    return digests


def test_a_viewer_can_post_to_nothing_but_the_allow_list(client_for, org_a, tenant_world, funded):
    objects = _objects(org_a, tenant_world["a"])
    viewer = client_for("a", "viewer")
    before = _snapshot(org_a)
    org_routes = routes(ORG_PREFIX)
    assert len(org_routes) >= 40, "the walk should see the whole /o/<slug>/ tree"
    allowed = {r.name for r in org_routes if getattr(r.callback, "viewer_may_write", False)}
    assert allowed == VIEWER_MAY_POST, "a view opted out of the viewer rule: add it here only if viewers may use it"

    answered = {}
    for route in org_routes:
        if route.name in VIEWER_MAY_POST:
            continue
        path = _path(route.route, org_a, objects)
        response = viewer.post(path)
        answered[route.name] = response.status_code
        if response.status_code == 403:
            assert "Your role in this organization (Viewer)" in response.content.decode(), path
    assert {name: status for name, status in answered.items() if status != 403} == {}
    assert _snapshot(org_a) == before
    with schema_context(org_a.schema_name):
        stream_key = Message.objects.get(pk=objects["message_id"]).stream_key
    assert not redis_client().exists(cancel_key(stream_key))  # the refused stop asked nothing of the generation

    left = viewer.post(_path("o/<slug:org_slug>/settings/members/leave/", org_a, objects))
    assert left.status_code == 302 and left["Location"] == "/orgs/"
    assert not Membership.objects.filter(organization=org_a, user=tenant_world["a"]["viewer"]).exists()


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_other_unsafe_methods_are_refused_too(client_for, org_a, method):
    response = getattr(client_for("a", "viewer"), method)(f"/o/{org_a.slug}/chat/new/")
    assert response.status_code == 403


def test_the_old_hole_a_viewer_cannot_start_a_chat_or_spend_credits(client_for, org_a, funded):
    balance = BillingAccount.objects.get(pk=org_a.pk).credits
    with schema_context(org_a.schema_name):
        threads = Thread.objects.count()
        model = chat_services.options_for(org_a)[0].id
    response = client_for("a", "viewer").post(f"/o/{org_a.slug}/chat/new/", {"model": model, "content": "hi"})
    assert response.status_code == 403
    page = response.content.decode()
    assert "Your role in this organization (Viewer) can only read. Ask an admin for the Member role." in page
    with schema_context(org_a.schema_name):
        assert Thread.objects.count() == threads
    assert BillingAccount.objects.get(pk=org_a.pk).credits == balance


def test_members_still_write_and_admin_only_views_explain_the_role_needed(client_for, org_a, funded):
    with schema_context(org_a.schema_name):
        model = chat_services.options_for(org_a)[0].id
    sent = client_for("a", "member").post(f"/o/{org_a.slug}/chat/new/", {"model": model, "content": "hi"})
    assert sent.status_code == 302 and "/chat/t/" in sent["Location"]
    refused = client_for("a", "member").post(f"/o/{org_a.slug}/settings/ai-providers/",
                                             {"provider": "openai", "secret": "sk-" + "b" * 40})
    assert refused.status_code == 403
    assert "Your role in this organization (Member) does not allow this: it needs the Admin role" in (
        refused.content.decode())


def test_viewers_are_not_offered_write_controls_and_see_why(client_for, org_a, tenant_world, funded):
    viewer, member = client_for("a", "viewer"), client_for("a", "member")
    objects = _objects(org_a, tenant_world["a"])
    chat_home = viewer.get(f"/o/{org_a.slug}/chat/").content.decode()
    assert 'data-testid="read-only-note"' in chat_home and EXPLANATION in chat_home
    assert 'id="composer"' not in chat_home and "new-chat" not in chat_home
    thread_page = viewer.get(f"/o/{org_a.slug}/chat/t/{objects['thread_id']}/").content.decode()
    for control in ("chat_send", "/send/", "/stop/", "/regenerate/", "/edit/", "/rename/", "/pin/", "/delete/"):
        assert control not in thread_page, control
    assert EXPLANATION in thread_page
    checks_home = viewer.get(f"/o/{org_a.slug}/checks/").content.decode()
    assert 'data-testid="add-form"' not in checks_home and EXPLANATION in checks_home
    target_page = viewer.get(f"/o/{org_a.slug}/checks/targets/{objects['target_id']}/").content.decode()
    assert 'data-testid="check-now"' not in target_page and EXPLANATION in target_page
    assert EXPLANATION in viewer.get(f"/o/{org_a.slug}/checks/bulk/").content.decode()
    assert EXPLANATION in viewer.get(f"/o/{org_a.slug}/settings/").content.decode()

    member_home = member.get(f"/o/{org_a.slug}/chat/").content.decode()
    assert 'id="composer"' in member_home and "new-chat" in member_home and "read-only-note" not in member_home


def test_the_api_refuses_a_viewer_session_the_same_way(client_for, org_a, funded):
    with schema_context(org_a.schema_name):
        threads = Thread.objects.count()
    headers = {"HTTP_X_ORGANIZATION": org_a.slug}
    viewer = client_for("a", "viewer")
    refused = viewer.post("/api/v1/threads/", {"model": "demo/prumo-demo"}, content_type="application/json",
                          **headers)
    assert refused.status_code == 403 and refused.json()["detail"] == (
        "Your role in this organization (Viewer) can only read. Ask an admin for the Member role.")
    assert viewer.get("/api/v1/threads/", **headers).status_code == 200
    with schema_context(org_a.schema_name):
        assert Thread.objects.count() == threads


def test_a_viewer_cannot_stop_regenerate_or_follow_someone_elses_answer(client_for, org_a, tenant_world, funded):
    owner = tenant_world["a"]["owner"]
    with schema_context(org_a.schema_name):
        thread = chat_services.thread_create(user=owner, model_id=chat_services.options_for(org_a)[0].id)
        answer = chat_services.message_send(organization=org_a, user=owner, thread=thread, content="private")
    viewer = client_for("a", "viewer")
    before = _snapshot(org_a)
    assert viewer.post(f"/o/{org_a.slug}/chat/m/{answer.pk}/stop/").status_code == 403
    assert viewer.post(f"/o/{org_a.slug}/chat/t/{thread.pk}/regenerate/").status_code == 403
    assert viewer.get(f"/o/{org_a.slug}/chat/m/{answer.pk}/").status_code == 404
    assert _snapshot(org_a) == before
    with schema_context(org_a.schema_name):
        answer.refresh_from_db()
        assert answer.is_active
    assert not redis_client().exists(cancel_key(answer.stream_key))  # no stop was asked of the generation
