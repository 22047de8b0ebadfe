"""Item 11: smaller holes — usage CSV formulas, thread_pin's `next`, top-up amounts, slug probing, the 500 page."""

from __future__ import annotations

import csv
import io
import logging
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import path
from django.utils import timezone
from django_tenants.utils import schema_context

from accounts.models import User
from billing.models import CreditEntry, Price
from billing.usage import usage_record, usage_rollup
from chat.models import Thread
from config.urls import handler404, handler500  # noqa: F401 (this urlconf's)
from config.urls import urlpatterns as site_urlpatterns
from tenants.audit.models import AuditEvent
from tenants.models import Organization

from ..test_billing_stripe import account, checkout_session_id, deliver, endpoint, stripe_client, url  # noqa: F401

pytestmark = pytest.mark.django_db


def _boom(request):
    raise RuntimeError("a bug")


# This module is also the URLconf of the 500-page test: the site's URLs plus one that fails.
urlpatterns = [path("test-boom/", _boom), *site_urlpatterns]


# ---------------------------------------------------------------- usage CSV


def test_usage_csv_writes_formula_like_text_as_text(client_for, org_a):
    key = f'=HYPERLINK("http://evil.example/{uuid.uuid4().hex[:6]}","open")'
    price = Price.objects.create(kind="model", key=key, input_per_million=Decimal("1"),
                                 effective_from=timezone.now() - timedelta(days=1))
    user = User.objects.create_user(email=f"=1+1-{uuid.uuid4().hex[:6]}@example.com", password="x-long-pass-1")
    usage_record(organization=org_a, user=user, kind="model", key=key, request_id=uuid.uuid4().hex,
                 credits=Decimal("1"), price=price, input_tokens=1000)
    usage_rollup()

    response = client_for("a", "viewer").get(f"/o/{org_a.slug}/billing/usage/", {"format": "csv"})
    [row] = [row for row in csv.DictReader(io.StringIO(response.content.decode())) if "HYPERLINK" in row["key"]]
    assert row["key"] == "'" + key
    assert row["member"] == "'" + user.email
    assert row["credits"] == "1.000000", "numbers stay numbers"


# ---------------------------------------------------------------- thread_pin


@pytest.mark.parametrize("target", ["https://evil.example/phish", "//evil.example/x", "http:\\\\evil.example"])
def test_pinning_never_redirects_off_the_site(client_for, org_a, tenant_world, target):
    with schema_context(org_a.schema_name):
        thread = Thread.objects.create(user=tenant_world["a"]["owner"], model_id="demo")
    client = client_for("a", "owner")
    response = client.post(f"/o/{org_a.slug}/chat/t/{thread.pk}/pin/", {"pinned": "1", "next": target})
    assert response.status_code == 302
    assert response["Location"] == f"/o/{org_a.slug}/chat/t/{thread.pk}/"
    with schema_context(org_a.schema_name):
        assert Thread.objects.get(pk=thread.pk).pinned

    back = client.post(f"/o/{org_a.slug}/chat/t/{thread.pk}/pin/", {"pinned": "0", "next": f"/o/{org_a.slug}/chat/"})
    assert back["Location"] == f"/o/{org_a.slug}/chat/", "a path on this site is still followed"


# ---------------------------------------------------------------- top-up amount


def test_a_top_up_credits_only_what_was_paid(client_for, org_a, fake, endpoint, stripe_client, caplog):  # noqa: F811
    before = account(org_a).credits
    owner = client_for("a", "owner")
    session_id = checkout_session_id(owner.post(url("billing_topup", org_a), {"credits": "2000"}))
    # At Checkout the customer paid 1 cent for the 2,000 credits (a 100% coupon, a tampered session...).
    fake.get("checkout.session", session_id).update(
        amount_total=1, total_details={"amount_discount": 1999, "amount_shipping": 0, "amount_tax": 0})
    [completed] = fake.checkout_complete(session_id)
    with caplog.at_level(logging.ERROR, logger="billing.stripe"):
        assert deliver(stripe_client, endpoint, completed).status_code == 200

    assert account(org_a).credits == before
    assert not CreditEntry.objects.filter(organization=org_a, kind=CreditEntry.Kind.PURCHASE).exists()
    with schema_context(org_a.schema_name):
        [refused] = AuditEvent.objects.filter(action="credits.purchase_refused")
    assert (refused.target_id, refused.after["amount_total"], refused.after["credits"]) == (session_id, 1, "2000")
    assert any(session_id in record.getMessage() for record in caplog.records)

    # Another currency for the same number is not the price either; the quoted price is credited.
    other = checkout_session_id(owner.post(url("billing_topup", org_a), {"credits": "2000"}))
    fake.get("checkout.session", other).update(currency="jpy")
    assert deliver(stripe_client, endpoint, fake.checkout_complete(other)[0]).status_code == 200
    assert account(org_a).credits == before
    paid = checkout_session_id(owner.post(url("billing_topup", org_a), {"credits": "2000"}))
    assert deliver(stripe_client, endpoint, fake.checkout_complete(paid)[0]).status_code == 200
    assert account(org_a).credits == before + Decimal("2000")


# ---------------------------------------------------------------- slugs


def test_new_organization_form_says_taken_and_nothing_more(client_for, org_b, settings):
    settings.ORGANIZATION_CREATE_ATTEMPTS_PER_HOUR = 5
    # Counters of this run only: Redis outlives a recreated test database, whose user ids repeat.
    settings.RATELIMIT_CACHE_PREFIX = f"rl-{uuid.uuid4().hex[:8]}:"
    user = User.objects.create_user(email=f"prober-{uuid.uuid4().hex[:8]}@example.com", password="x-long-pass-1")
    client = Client()
    client.force_login(user)

    answers = [client.post("/orgs/new/", {"name": "Probe", "slug": slug}) for slug in (org_b.slug, "admin", "api")]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    texts = {answer.content.decode().split('class="error"', 1)[1].split("<", 1)[0] for answer in answers}
    assert texts == {texts.copy().pop()}, "reserved and taken addresses get the same answer"
    assert "This address is taken" in texts.pop()

    for slug in ("probe-1-x", "probe-2-y"):
        assert client.post("/orgs/new/", {"name": "", "slug": slug}).status_code == 200  # invalid: still an attempt
    limited = client.post("/orgs/new/", {"name": "Probe", "slug": org_b.slug})
    assert limited.status_code == 429 and limited["Retry-After"] == "3600"
    page = limited.content.decode()
    assert "Too many attempts to create an organization" in page and "This address is taken" not in page
    assert not Organization.objects.filter(created_by=user).exists()


# ---------------------------------------------------------------- the 500 page


def test_the_500_page_shows_the_request_id_and_promises_nothing(settings):
    settings.ROOT_URLCONF = __name__
    response = Client(raise_request_exception=False).get("/test-boom/", HTTP_X_REQUEST_ID="req-500-check")
    assert response.status_code == 500
    page = response.content.decode()
    assert response["X-Request-ID"] == "req-500-check"
    assert '<code data-testid="request-id">req-500-check</code>' in page
    assert "notified" not in page
    assert "the error was logged" in page


def test_the_500_page_renders_without_the_database(rf, django_db_blocker):
    from config.views import server_error

    request = rf.get("/")
    request.id = "req-no-db"
    with django_db_blocker.block():  # any query would raise here
        response = server_error(request)
    assert response.status_code == 500 and b"req-no-db" in response.content
