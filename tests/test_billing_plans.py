"""The billing page's plan cards (the /pricing cards, with the current plan marked and one action each) and
the plan change they start, end to end through the fake Stripe."""

from __future__ import annotations

import re
from html import unescape

import pytest

from billing.models import BillingAccount, Plan
from billing.services import plans_seed

from . import test_billing_stripe as stripe_tests
from .test_billing_stripe import checkout_session_id, deliver, state, url

pytestmark = pytest.mark.django_db

prices = stripe_tests.prices
endpoint = stripe_tests.endpoint
stripe_client = stripe_tests.stripe_client

CARD = re.compile(r'<article class="card plan[^"]*" data-plan="(?P<code>[\w-]+)"(?P<attrs>[^>]*)>'
                  r'(?P<body>.*?)</article>', re.DOTALL)


def cards(html: str) -> dict[str, dict]:
    """Each plan card by plan code: whether it is marked current, its action's text and what it posts."""
    found = {}
    for match in CARD.finditer(html):
        body = match["body"]
        action = re.search(r'data-testid="plan-action"[^>]*>(.*?)</', body, re.DOTALL)
        form = re.search(r'<form method="post" action="([^"]+)"', body)
        found[match["code"]] = {
            "current": 'aria-current="true"' in match["attrs"],
            "badge": "Current plan" in body,
            "action": " ".join(unescape(action[1]).split()) if action else None,
            "posts_to": form[1] if form else None,
            "fields": dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', body)),
            "href": (re.search(r'<a class="button[^"]*" href="([^"]+)"', body) or [None, None])[1],
        }
    return found


def test_owner_sees_the_current_plan_marked_and_one_action_per_plan(client_for, org_a, fake, prices):
    shown = cards(client_for("a", "owner").get(url("billing_home", org_a)).content.decode())

    assert list(shown) == ["free", "starter", "pro", "business", "enterprise"]
    assert [code for code, card in shown.items() if card["current"]] == ["free"]
    assert shown["free"]["badge"] and shown["free"]["action"] is None
    assert {code: card["action"] for code, card in shown.items() if code != "free"} == {
        "starter": "Upgrade to Starter", "pro": "Upgrade to Pro", "business": "Upgrade to Business",
        "enterprise": "Contact us"}
    assert shown["pro"]["posts_to"] == url("billing_plan_change", org_a)
    assert shown["pro"]["fields"] == {"csrfmiddlewaretoken": shown["pro"]["fields"]["csrfmiddlewaretoken"],
                                      "plan": "pro"}
    assert shown["enterprise"]["href"].startswith("mailto:") and shown["enterprise"]["posts_to"] is None


def test_on_a_paid_plan_cheaper_plans_are_a_switch_and_dearer_ones_an_upgrade(client_for, org_a, fake, prices):
    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="pro"))

    shown = cards(client_for("a", "admin").get(url("billing_home", org_a)).content.decode())

    assert [code for code, card in shown.items() if card["current"]] == ["pro"]
    assert {code: card["action"] for code, card in shown.items()} == {
        "free": "Switch to Free", "starter": "Switch to Starter", "pro": None, "business": "Upgrade to Business",
        "enterprise": "Contact us"}


@pytest.mark.parametrize("role", ["member", "viewer"])
def test_members_who_may_not_change_the_plan_see_the_cards_without_actions(client_for, org_a, fake, prices, role):
    html = client_for("a", role).get(url("billing_home", org_a)).content.decode()
    shown = cards(html)

    assert len(shown) == 5 and shown["free"]["current"] and shown["free"]["badge"]
    assert all(card["action"] is None for card in shown.values())
    assert url("billing_plan_change", org_a) not in html
    assert "Only owners and admins can change the plan" in html


def test_the_cards_action_changes_the_plan_end_to_end(client_for, org_a, fake, prices, endpoint, stripe_client):
    owner = client_for("a", "owner")
    pro = cards(owner.get(url("billing_home", org_a)).content.decode())["pro"]

    session_id = checkout_session_id(owner.post(pro["posts_to"], pro["fields"]))
    for event in fake.checkout_complete(session_id):
        assert deliver(stripe_client, endpoint, event).status_code == 200

    assert state(org_a) == ("pro", "active")
    after = cards(owner.get(url("billing_home", org_a)).content.decode())
    assert [code for code, card in after.items() if card["current"]] == ["pro"]
    business = after["business"]
    assert business["action"] == "Upgrade to Business"
    response = owner.post(business["posts_to"], business["fields"])
    assert response.status_code == 303 and response["Location"].startswith("https://billing.stripe.com/p/session/")


def test_pricing_page_shows_the_same_cards_without_actions(client):
    plans_seed()
    html = client.get("/pricing").content.decode()
    shown = cards(html)

    assert list(shown) == ["free", "starter", "pro", "business", "enterprise"]
    assert not any(card["current"] or card["action"] for card in shown.values())
    assert "Current plan" not in html
