"""Feedback a person notices: each action's toast (Django messages, also on htmx answers) and each list's
empty state with its next step. The browser side (dismissal, busy buttons) is in test_browser_feedback.py."""

from __future__ import annotations

import re
from html import unescape

import pytest
from django.test import Client
from django_tenants.utils import schema_context

from billing.models import BillingAccount, Plan
from chat.catalog.models import ProviderKey
from chat.models import Thread
from checks.models import Alert, Batch, Target
from tenants.models import ApiKey, Membership, Organization

from . import test_checks_pages as checks_pages
from .reauth import reauthenticate
from .test_chat_keys import SECRET
from .test_checks_bulk import cnpjs, upload

pytestmark = pytest.mark.django_db

queued = checks_pages.queued
HX = {"HTTP_HX_REQUEST": "true"}
TOAST = re.compile(r'<div class="toast (?P<tags>[\w ]*)" (?P<role>role="\w+"(?: aria-live="\w+")?) data-toast>\s*'
                   r'<p class="toast-text">(?P<text>.*?)</p>', re.DOTALL)


def toasts(response) -> list[tuple[str, str, str]]:
    """(level, role attributes, text) of each toast on a page."""
    return [(m["tags"], m["role"], " ".join(unescape(m["text"]).split()))
            for m in TOAST.finditer(response.content.decode())]


def success(text: str) -> tuple[str, str, str]:
    return ("success", 'role="status" aria-live="polite"', text)


def page(org, path: str = "") -> str:
    return f"/o/{org.slug}/{path}"


# ---------------------------------------------------------------- toasts after actions


def test_settings_saved_shows_a_success_toast_in_english_and_portuguese(client_for, org_a):
    client = client_for("a", "owner")
    response = client.post(page(org_a, "settings/"), {"name": org_a.name}, follow=True)
    assert toasts(response) == [success("Saved.")]
    assert toasts(client.get(page(org_a, "settings/"))) == [], "a toast is shown once"

    client.post("/i18n/setlang/", {"language": "pt-br", "next": "/"})
    response = client.post(page(org_a, "settings/"), {"name": org_a.name}, follow=True)
    assert toasts(response) == [success("Salvo.")]


def test_an_error_is_an_alert_toast(client_for, org_a):
    response = client_for("a", "owner").post(page(org_a, "billing/plan/"), {"plan": "no-such-plan"}, follow=True)
    assert toasts(response) == [("error", 'role="alert"', "Choose one of the plans.")]


def test_members_invited_role_changed_and_removed_each_show_a_toast(client_for, org_a, tenant_world):
    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="pro"))  # seats for one more
    client = client_for("a", "owner")
    invited = client.post(page(org_a, "settings/members/"), {"email": "new-person@example.com", "role": "member"},
                          follow=True)
    assert toasts(invited) == [success("Invitation sent to new-person@example.com.")]

    viewer = Membership.objects.get(organization=org_a, user=tenant_world["a"]["viewer"])
    changed = client.post(page(org_a, f"settings/members/{viewer.pk}/role/"), {"role": "member"}, follow=True)
    assert toasts(changed) == [success("viewer-a@example.com is now Member.")]
    removed = client.post(page(org_a, f"settings/members/{viewer.pk}/remove/"), follow=True)
    assert toasts(removed) == [success("viewer-a@example.com was removed.")]


def test_api_key_created_and_revoked_each_show_a_toast_in_both_languages(client_for, org_a):
    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="starter"))
    client = client_for("a", "admin")
    reauthenticate(client)
    created = client.post(page(org_a, "settings/api-keys/"), {"name": "CRM sync", "scopes": ["read"]})
    assert toasts(created) == [success("Key “CRM sync” created. Copy it now: it is shown only this once.")]

    key = ApiKey.objects.get(organization=org_a, name="CRM sync")
    revoked = client.post(page(org_a, f"settings/api-keys/{key.pk}/revoke/"), follow=True)
    assert toasts(revoked) == [success("Key “CRM sync” revoked: it stops working at once.")]

    client.post("/i18n/setlang/", {"language": "pt-br", "next": "/"})
    again = client.post(page(org_a, "settings/api-keys/"), {"name": "ERP", "scopes": ["read"]})
    assert toasts(again) == [success("Chave “ERP” criada. Copie-a agora: ela só é mostrada desta vez.")]


def test_provider_key_saved_shows_a_toast(client_for, org_a):
    response = client_for("a", "admin").post(page(org_a, "settings/ai-providers/"),
                                             {"provider": "anthropic", "secret": SECRET}, follow=True)
    assert toasts(response) == [success("Key saved. Its models are now available in Chat.")]


def test_a_check_queued_then_answered_from_the_cache_each_show_a_toast(registries, funded, client_for, queued):
    org_a, _ = funded
    client = client_for("a", "member")
    with queued(org_a):
        added = client.post(page(org_a, "checks/targets/new/"),
                            {"cnpj": checks_pages.FOUND, "label": "", "tags": "", "schedule": "none"})
    assert toasts(client.get(added["Location"])) == [
        success("Check queued: its progress and report appear on this page.")]

    target = checks_pages.in_schema(org_a, lambda: Target.objects.get(cnpj=checks_pages.FOUND))
    again = client.post(page(org_a, f"checks/targets/{target.pk}/check/"), follow=True)
    assert toasts(again) == [success("Checked: the report is ready.")]


def test_a_bulk_batch_queued_shows_a_toast(funded, client_for):
    org_a, _ = funded
    content = "cnpj\n" + "".join(f"{cnpj}\n" for cnpj in cnpjs(2))
    response = client_for("a", "member").post(page(org_a, "checks/bulk/"), {"file": upload(content)}, follow=True)
    assert toasts(response) == [success("Batch queued: 2 companies to check.")]


def test_checkout_back_from_stripe_shows_a_toast(client_for, org_a):
    response = client_for("a", "owner").get(page(org_a, "billing/checkout/success/") + "?session_id=cs_x",
                                            follow=True)
    [(level, _role, text)] = toasts(response)
    assert level == "success" and text.startswith("Thank you! Stripe is confirming your payment")


def test_organization_created_shows_a_toast(tenant_world):
    client = Client()
    client.force_login(tenant_world["a"]["member"])
    response = client.post("/orgs/new/", {"name": "Toast Ltda"}, follow=True)
    assert Organization.objects.filter(slug="toast-ltda").exists()
    assert toasts(response) == [success("Welcome to Toast Ltda.")]


# ---------------------------------------------------------------- toasts on htmx answers


def test_an_htmx_fragment_carries_pending_toasts_out_of_band_once(client_for, org_a):
    client = client_for("a", "owner")
    client.post(page(org_a, "settings/"), {"name": org_a.name})  # a message waits for the next answer

    fragment = client.get(page(org_a, "chat/threads/"), **HX)
    html = fragment.content.decode()
    assert fragment.status_code == 200
    assert '<div id="toasts" class="toasts" data-testid="toasts" hx-swap-oob="beforeend">' in html
    assert toasts(fragment) == [success("Saved.")]
    assert toasts(client.get(page(org_a, "settings/"))) == []


def test_a_fragment_not_asked_by_htmx_leaves_the_toast_for_the_next_page(client_for, org_a):
    client = client_for("a", "owner")
    client.post(page(org_a, "settings/"), {"name": org_a.name})
    not_htmx = client.get(page(org_a, "chat/threads/"))
    assert "hx-swap-oob" not in not_htmx.content.decode()
    assert toasts(client.get(page(org_a, "settings/"))) == [success("Saved.")]


# ---------------------------------------------------------------- empty states


def empty_state(response) -> tuple[str, str | None, str | None]:
    """The empty state's sentence, its action's link and label (None when it has no action)."""
    html = response.content.decode()
    match = re.search(r'<div class="card empty" data-testid="empty-state">\s*<p>(.*?)</p>\s*(?:<p><a class="button" '
                      r'href="([^"]*)" data-testid="empty-action">(.*?)</a></p>)?', html, re.DOTALL)
    assert match, "no empty state on the page"
    return unescape(match[1]), match[2] and unescape(match[2]), match[3] and unescape(match[3])


def in_org(org, fn):
    with schema_context(org.schema_name):
        return fn()


def test_each_empty_list_says_so_with_its_next_step(client_for, org_a, fake, tenant_world):
    in_org(org_a, lambda: [model.objects.all().delete() for model in (Thread, Alert, Batch, Target)])
    ApiKey.objects.filter(organization=org_a).delete()
    ProviderKey.objects.filter(organization=org_a).delete()
    owner = client_for("a", "owner")
    expected = {
        "chat/": ("No conversations yet.", page(org_a, "chat/") + "#composer-input", "Start a conversation"),
        "checks/": ("No companies yet. Check a CNPJ to see its registration and risk.", "#id_cnpj",
                    "Check a company"),
        "checks/?q=nothing-matches": ("No company matches these filters.", page(org_a, "checks/"),
                                      "Clear the filters"),
        "checks/alerts/": ("No alerts yet. Set a company's monitoring to daily or weekly to be told when it changes.",
                           page(org_a, "checks/"), "Go to your companies"),
        "checks/bulk/": ("No batches yet. Upload a CSV to check many companies at once.", "#id_file",
                         "Upload a CSV"),
        "settings/api-keys/": ("No keys yet. Your plan does not include API access.", page(org_a, "billing/"),
                               "See plans"),
        "settings/ai-providers/": ("No keys yet. Chat uses Prumo's keys until you add your own.", "#id_provider",
                                   "Add a key"),
        "billing/": ("No invoices yet. They appear here once you pay for a plan or credits.", "#plans-title",
                     "See plans"),
        "billing/usage/?start=2020-01-01&end=2020-01-31": (
            "No usage in this period. What chat answers and CNPJ checks cost shows up here.", page(org_a, "chat/"),
            "Open Chat"),
    }
    for path, state in expected.items():
        response = owner.get(page(org_a, path))
        assert response.status_code == 200, path
        assert empty_state(response) == state, path

    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="starter"))
    assert empty_state(owner.get(page(org_a, "settings/api-keys/"))) == (
        "No keys yet. Create one to call the API or /v1 from your programs.", "#id_name", "Create a key")

    Membership.objects.filter(organization=org_a).exclude(user=tenant_world["a"]["owner"]).delete()
    assert empty_state(owner.get(page(org_a, "settings/members/"))) == (
        "Only you so far. Invite your team to work together.", "#id_email", "Invite a teammate")


def test_readers_see_the_empty_state_without_actions_they_cannot_take(client_for, org_a, fake):
    in_org(org_a, lambda: [model.objects.all().delete() for model in (Batch, Target)])
    viewer = client_for("a", "viewer")
    assert empty_state(viewer.get(page(org_a, "checks/"))) == ("No companies yet.", None, None)
    assert empty_state(viewer.get(page(org_a, "checks/bulk/"))) == ("No batches yet.", None, None)
    assert empty_state(viewer.get(page(org_a, "billing/"))) == ("No invoices yet.", None, None)
