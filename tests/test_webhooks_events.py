"""The webhook events of billing, bulk checks and chat: each is written to the outbox in the transaction of the change
that causes it (none when that change rolls back), and reaches a real receiver on 127.0.0.1 signed as Standard
Webhooks says. `chat.answer.completed` is opt-in, and carries the answer's text only where the endpoint asked."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import transaction
from django.test import Client
from django_tenants.utils import schema_context

from billing.ledger import credit_debit, credit_purchase, credit_reserve, credit_settle
from billing.models import BillingAccount, Plan
from billing.services import credits_low_threshold_set
from billing.stripe import plan_assign
from tenants.audit.models import AuditEvent
from tenants.audit.services import Actor
from webhooks.models import WebhookMessage
from webhooks.services import webhook_endpoint_create

from .test_billing_stripe import (  # noqa: F401 (fixtures)
    checkout_session_id,
    deliver,
    endpoint,
    prices,
    stripe_client,
    subscribe,
    url,
)
from .webhook_receiver import Receiver

pytestmark = pytest.mark.django_db

ACTOR = Actor.system("tests")
FOUND = "19131243000197"
ABSENT = "11222333000181"


class Rollback(Exception):
    pass


@pytest.fixture(autouse=True)
def on_pro(org_a):
    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="pro"))


@pytest.fixture
def receiver():
    with Receiver() as server:
        yield server


def listen(org, receiver, *types, include_message_text=False):
    return webhook_endpoint_create(organization=org, actor=ACTOR, url=receiver.url(), event_types=list(types),
                                   include_message_text=include_message_text)


def outbox(org, type: str) -> list[dict]:
    with schema_context(org.schema_name):
        return [m.payload["data"] for m in WebhookMessage.objects.filter(type=type).order_by("id")]


def rolled_back(call):
    with pytest.raises(Rollback), transaction.atomic():
        call()
        raise Rollback


# ---------------------------------------------------------------- the catalogue


def test_the_catalogue_lists_the_new_events_and_says_which_are_opt_in(client_for, org_a):
    response = client_for("a", "member").get("/api/v1/webhooks/event-types/", HTTP_X_ORGANIZATION=org_a.slug)
    assert response.status_code == 200, response.content[:300]
    found = {row["type"]: row for row in response.json()}
    for name in ("batch.completed", "credits.low", "credits.purchased", "subscription.updated",
                 "chat.answer.completed"):
        assert found[name]["description"], name
    assert found["chat.answer.completed"]["opt_in"] is True and found["credits.low"]["opt_in"] is False


# ---------------------------------------------------------------- credits.low


def test_credits_low_is_sent_once_per_crossing_and_again_after_the_balance_went_back_above(
        org_a, receiver, django_capture_on_commit_callbacks):
    new = listen(org_a, receiver, "credits.low")
    BillingAccount.objects.filter(pk=org_a.pk).update(credits=Decimal("105"))
    credits_low_threshold_set(organization=org_a, threshold=Decimal("100"), actor=ACTOR)
    credit_debit(organization=org_a, amount=Decimal("3"), key="low-1")  # 102: above
    assert outbox(org_a, "credits.low") == []
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        credit_debit(organization=org_a, amount=Decimal("4"), key="low-2")  # 98: crossed
    [payload] = receiver.verify(new.secret)
    assert payload["type"] == "credits.low"
    assert payload["data"] == {"balance": "98.000000", "threshold": "100.000000", "previous_balance": "102.000000"}
    credit_debit(organization=org_a, amount=Decimal("5"), key="low-3")  # 93: still below, no new event
    hold = credit_reserve(organization=org_a, amount=Decimal("10"), key="low-hold")  # a hold is not a crossing
    credit_settle(reservation=hold, actual=Decimal("1"))  # 92
    assert len(outbox(org_a, "credits.low")) == 1
    credit_purchase(organization=org_a, amount=Decimal("20"), key="low-buy")  # 112: re-armed
    hold = credit_reserve(organization=org_a, amount=Decimal("50"), key="low-hold-2")
    credit_settle(reservation=hold, actual=Decimal("15"))  # 97: crossed again, at the settlement
    assert [data["balance"] for data in outbox(org_a, "credits.low")] == ["98.000000", "97.000000"]
    with schema_context(org_a.schema_name):
        assert AuditEvent.objects.filter(action="billing.credits_low_threshold_set").exists()


def test_no_credits_low_for_a_debit_that_rolled_back_nor_without_a_threshold(org_a, receiver):
    listen(org_a, receiver)  # every (non opt-in) event
    BillingAccount.objects.filter(pk=org_a.pk).update(credits=Decimal("105"), credits_low_threshold=Decimal("100"))
    rolled_back(lambda: credit_debit(organization=org_a, amount=Decimal("10"), key="low-rb"))
    assert outbox(org_a, "credits.low") == []
    assert BillingAccount.objects.get(pk=org_a.pk).credits == Decimal("105")
    BillingAccount.objects.filter(pk=org_a.pk).update(credits_low_threshold=None)
    credit_debit(organization=org_a, amount=Decimal("10"), key="low-off")
    assert outbox(org_a, "credits.low") == []


def test_admins_set_the_threshold_on_the_webhooks_page_and_other_organizations_get_404(client_for, org_a, org_b):
    page = client_for("a", "admin").get(f"/o/{org_a.slug}/settings/webhooks/")
    assert 'data-testid="credits-low"' in page.content.decode()
    path = f"/o/{org_a.slug}/settings/webhooks/credits-low/"
    assert client_for("a", "admin").post(path, {"threshold": "250.5"}).status_code == 302
    assert BillingAccount.objects.get(pk=org_a.pk).credits_low_threshold == Decimal("250.5")
    refused = client_for("a", "admin").post(path, {"threshold": "-1"})
    assert refused.status_code == 400 and "greater than or equal to 0" in refused.content.decode()
    assert client_for("a", "member").post(path, {"threshold": "1"}).status_code in (403, 404)
    assert client_for("b", "owner").post(path, {"threshold": "1"}).status_code == 404
    assert client_for("a", "admin").post(path, {"threshold": ""}).status_code == 302
    assert BillingAccount.objects.get(pk=org_a.pk).credits_low_threshold is None


# ---------------------------------------------------------------- credits.purchased and subscription.updated


def test_a_paid_top_up_is_a_credits_purchased_event_and_a_rolled_back_one_is_none(  # noqa: F811 (fixtures)
        client_for, org_a, fake, endpoint, stripe_client, receiver):  # noqa: F811
    from djstripe.models import Session

    from billing.stripe import checkout_topup_fulfil

    listen(org_a, receiver, "credits.purchased")
    session_id = checkout_session_id(client_for("a", "admin").post(url("billing_topup", org_a), {"credits": "1500"}))
    [completed] = fake.checkout_complete(session_id)
    session = Session.sync_from_stripe_data(fake.get("checkout.session", session_id))
    rolled_back(lambda: checkout_topup_fulfil(session=session))
    assert outbox(org_a, "credits.purchased") == []
    assert deliver(stripe_client, endpoint, completed).status_code == 200
    assert deliver(stripe_client, endpoint, completed).status_code == 200  # Stripe delivers twice: one event
    [data] = outbox(org_a, "credits.purchased")
    account = BillingAccount.objects.get(pk=org_a.pk)
    assert (data["credits"], data["balance"]) == ("1500", str(account.credits))
    assert (data["amount_total"], data["currency"]) == (1500, "usd")


def test_a_stripe_subscription_change_is_a_subscription_updated_event(  # noqa: F811 (fixtures)
        client_for, org_a, fake, prices, endpoint, stripe_client, receiver):  # noqa: F811
    listen(org_a, receiver, "subscription.updated")
    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="free"))
    subscription = subscribe(client_for, fake, endpoint, stripe_client, org_a, "pro")
    assert deliver(stripe_client, endpoint, fake.subscription_cancel(subscription)).status_code == 200
    changes = [(d["previous_plan"], d["plan"], d["status"], d["source"]) for d in outbox(org_a, "subscription.updated")]
    assert changes == [("free", "pro", "active", "stripe"), ("pro", "free", "canceled", "stripe")]


def test_an_operators_plan_assignment_is_a_subscription_updated_event_unless_it_rolled_back(
        org_a, receiver, django_capture_on_commit_callbacks):
    new = listen(org_a, receiver, "subscription.updated")
    business = Plan.objects.get(code="business")
    rolled_back(lambda: plan_assign(organization=org_a, plan=business, actor=ACTOR, note="contract"))
    assert outbox(org_a, "subscription.updated") == []
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        plan_assign(organization=org_a, plan=business, actor=ACTOR, note="contract")
    [payload] = receiver.verify(new.secret)
    assert payload["data"] == {"plan": "business", "status": "active", "previous_plan": "pro",
                               "previous_status": "active", "source": "operator", "grace_until": None}
    plan_assign(organization=org_a, plan=business, actor=ACTOR, note="another note")  # same plan: no event
    assert len(outbox(org_a, "subscription.updated")) == 1


# ---------------------------------------------------------------- batch.completed


def test_a_bulk_batch_that_finishes_is_a_batch_completed_event(registries, funded, tenant_world, receiver,
                                                              django_capture_on_commit_callbacks):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from checks.bulk import batch_create
    from checks.models import Batch

    org_a, _ = funded
    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="pro"))
    new = listen(org_a, receiver, "batch.completed")
    csv = SimpleUploadedFile("list.csv", f"cnpj\n{FOUND}\n{ABSENT}\n123\n".encode(), content_type="text/csv")
    with schema_context(org_a.schema_name):
        with django_capture_on_commit_callbacks(execute=True):  # the batch task, then its checks, run eagerly
            batch = batch_create(organization=org_a, uploaded_file=csv, user=tenant_world["a"]["member"])
        batch.refresh_from_db()
    assert batch.status == Batch.Status.DONE
    [payload] = [p for p in receiver.verify(new.secret) if p["type"] == "batch.completed"]
    data = payload["data"]
    assert (data["batch_id"], data["filename"], data["checks"], data["found"], data["not_found"]) == (
        batch.pk, "list.csv", 2, 1, 1)
    assert (data["failed"], data["invalid_rows"], data["status"]) == (0, 1, "done")


def test_no_batch_completed_when_the_finishing_transaction_rolls_back(org_a, tenant_world, receiver):
    from checks.bulk import batch_finish
    from checks.models import Batch

    listen(org_a, receiver, "batch.completed")
    with schema_context(org_a.schema_name):
        batch = Batch.objects.create(filename="empty.csv", total=0, created_by=tenant_world["a"]["member"])
        rolled_back(lambda: batch_finish(batch_id=batch.pk))
        batch.refresh_from_db()
        assert batch.status == Batch.Status.RUNNING
        assert outbox(org_a, "batch.completed") == []
        assert batch_finish(batch_id=batch.pk) is True and batch_finish(batch_id=batch.pk) is False  # once
    assert [d["batch_id"] for d in outbox(org_a, "batch.completed")] == [batch.pk]


# ---------------------------------------------------------------- chat.answer.completed


def finished_answer(org, user, text="Olá, the answer", status="complete"):
    from chat.models import Message, Thread
    from chat.services import answer_finish

    with schema_context(org.schema_name):
        thread = Thread.objects.create(user=user, model_id="demo/prumo-demo")
        Message.objects.create(thread=thread, role="user", content="a question")
        answer = Message.objects.create(thread=thread, role="assistant", status="streaming",
                                        model_id="demo/prumo-demo", max_tokens=100, prompt_tokens_estimate=10)
        answer_finish(answer_id=answer.pk, status=status, text=text, input_tokens=10, output_tokens=4,
                      finish_reason="stop")
    return answer


def test_chat_answers_go_only_to_endpoints_that_chose_them_with_text_only_where_asked(
        org_a, tenant_world, django_capture_on_commit_callbacks):
    with Receiver() as everything, Receiver() as numbers, Receiver() as texts:
        listen(org_a, everything)  # "all events": not the opt-in chat answers
        plain = listen(org_a, numbers, "chat.answer.completed")
        full = listen(org_a, texts, "chat.answer.completed", include_message_text=True)
        with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
            answer = finished_answer(org_a, tenant_world["a"]["owner"])
        finished_answer(org_a, tenant_world["a"]["owner"], status="stopped")  # not completed: no event
        assert everything.requests == []
        [without] = numbers.verify(plain.secret)
        [with_text] = texts.verify(full.secret)
    assert without["type"] == with_text["type"] == "chat.answer.completed"
    assert without["data"]["answer_id"] == answer.pk and "text" not in without["data"]
    assert (without["data"]["input_tokens"], without["data"]["output_tokens"]) == (10, 4)
    assert "Olá, the answer" not in numbers.requests[0].body.decode()
    assert with_text["data"] == {**without["data"], "text": "Olá, the answer"}
    assert numbers.requests[0].headers["webhook-id"] != texts.requests[0].headers["webhook-id"]


def test_no_chat_answer_event_when_the_answer_rolls_back(org_a, tenant_world, receiver):
    listen(org_a, receiver, "chat.answer.completed", include_message_text=True)
    rolled_back(lambda: finished_answer(org_a, tenant_world["a"]["owner"]))
    assert outbox(org_a, "chat.answer.completed") == []


def test_include_message_text_over_the_api(client_for, org_a, receiver):
    client: Client = client_for("a", "admin")
    base, org = "/api/v1/webhooks/", {"HTTP_X_ORGANIZATION": org_a.slug}
    response = client.post(base, {"url": receiver.url(), "event_types": ["chat.answer.completed"],
                                  "include_message_text": True}, content_type="application/json", **org)
    assert response.status_code == 201, response.content[:300]
    created = response.json()
    assert created["include_message_text"] is True
    patched = client.patch(f"{base}{created['id']}/", {"include_message_text": False},
                           content_type="application/json", **org)
    assert patched.status_code == 200 and patched.json()["include_message_text"] is False


def test_a_check_answered_from_the_cache_that_crosses_the_threshold_sends_credits_low(
        registries, funded, org_a, receiver, django_capture_on_commit_callbacks):
    from checks.cache import cached_lookup
    from checks.services import check_request, target_add

    BillingAccount.objects.filter(pk=org_a.pk).update(plan=Plan.objects.get(code="pro"), credits=Decimal("100.5"),
                                                      credits_low_threshold=Decimal("100"))
    new = listen(org_a, receiver, "credits.low")
    cached_lookup(FOUND)  # another organization's lookup filled the shared cache
    with schema_context(org_a.schema_name):
        target = target_add(cnpj=FOUND)
        with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
            check = check_request(organization=org_a, target=target)  # one statement: debit, check, report…
    assert check.cache_hit
    balance = BillingAccount.objects.get(pk=org_a.pk).credits
    [payload] = receiver.verify(new.secret)
    assert payload["data"] == {"balance": str(balance), "threshold": "100.000000", "previous_balance": "100.500000"}
