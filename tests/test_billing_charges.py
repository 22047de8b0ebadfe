"""billing.charges, the one owner of hold → settle or release → usage event: what each step writes, that a retry
writes nothing more, that a refusal writes nothing, and that no other package runs the ledger's holds, settlements
or usage statements itself."""

from __future__ import annotations

import ast
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from billing.charges import Metered, charge_hold, charge_now, charge_release, charge_settle
from billing.ledger import InsufficientCredits
from billing.models import BillingAccount, CreditEntry, CreditReservation, Price, UsageEvent
from billing.selectors import ledger_sum
from tenants.audit.services import Actor
from tenants.services import organization_create

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def org(tenant_world, db):
    """A fresh organization (rolled back with the test) holding its first monthly grant (100 credits)."""
    return organization_create(user=tenant_world["a"]["owner"], name=f"Charges {uuid.uuid4().hex[:6]}",
                               actor=Actor.system("tests"))


def balance(org) -> Decimal:
    return BillingAccount.objects.get(pk=org.pk).credits


def metered(key: str, credits: str, *, tokens: int = 100) -> Metered:
    price = Price(input_per_million=Decimal("1000"), output_per_million=Decimal("2000"))
    return Metered.at(price, kind=UsageEvent.Kind.MODEL, key="openai/gpt-test", request_id=key,
                      credits=Decimal(credits), input_tokens=tokens, output_tokens=tokens)


@pytest.mark.django_db
def test_hold_then_settle_charges_the_actual_and_meters_it_once(org):
    key = f"work:{uuid.uuid4().hex}"
    reservation = charge_hold(organization=org, amount=Decimal("10"), key=key, description="work")
    assert balance(org) == Decimal("90")
    for _attempt in range(2):  # a retried settlement changes nothing
        charge_settle(organization=org, key=key, actual=Decimal("3"), usage=metered(key, "3"))
    reservation.refresh_from_db()
    assert (reservation.status, reservation.actual) == (CreditReservation.Status.SETTLED, Decimal("3"))
    assert balance(org) == Decimal("97") == ledger_sum(organization=org)
    event = UsageEvent.objects.get(organization=org, request_id=key)
    assert (event.credits, event.input_tokens, event.output_tokens) == (Decimal("3"), 100, 100)
    assert (event.input_per_million, event.output_per_million) == (Decimal("1000"), Decimal("2000"))


@pytest.mark.django_db
def test_settling_at_zero_releases_the_hold_and_meters_nothing_when_nothing_was_used(org):
    key = f"work:{uuid.uuid4().hex}"
    charge_hold(organization=org, amount=Decimal("10"), key=key)
    charge_settle(organization=org, key=key, actual=Decimal("0"), usage=metered(key, "0", tokens=0))
    assert CreditReservation.objects.get(key=key).status == CreditReservation.Status.RELEASED
    assert balance(org) == Decimal("100") == ledger_sum(organization=org)
    assert not UsageEvent.objects.filter(request_id=key).exists()


@pytest.mark.django_db
def test_usage_beyond_the_hold_is_debited_and_without_beyond_hold_is_charged_at_the_hold(org):
    over, capped = f"over:{uuid.uuid4().hex}", f"capped:{uuid.uuid4().hex}"
    charge_hold(organization=org, amount=Decimal("5"), key=over)
    charge_hold(organization=org, amount=Decimal("5"), key=capped)
    charge_settle(organization=org, key=over, actual=Decimal("8"), usage=metered(over, "8"))
    charge_settle(organization=org, key=capped, actual=Decimal("8"), usage=metered(capped, "8"), beyond_hold=False)
    assert CreditReservation.objects.get(key=over).actual == Decimal("8")  # 5 of it from the hold, 3 beyond:
    assert CreditEntry.objects.get(idempotency_key=f"{over}:overage").amount == Decimal("-3")
    assert CreditReservation.objects.get(key=capped).actual == Decimal("5")
    assert not CreditEntry.objects.filter(idempotency_key=f"{capped}:overage").exists()
    assert balance(org) == Decimal("87") == ledger_sum(organization=org)


@pytest.mark.django_db
def test_release_gives_the_whole_hold_back_once_and_an_unknown_key_is_nothing(org):
    key = f"work:{uuid.uuid4().hex}"
    charge_hold(organization=org, amount=Decimal("10"), key=key)
    assert charge_release(key=key) and charge_release(key=key)
    assert balance(org) == Decimal("100") == ledger_sum(organization=org)
    assert CreditEntry.objects.filter(idempotency_key=f"{key}:release").count() == 1
    assert charge_release(key=f"never:{uuid.uuid4().hex}") is False


@pytest.mark.django_db
def test_nothing_to_hold_holds_nothing(org):
    assert charge_hold(organization=org, amount=Decimal("0"), key=f"free:{uuid.uuid4().hex}") is None
    assert balance(org) == Decimal("100")


@pytest.mark.django_db
def test_charge_now_debits_and_meters_together_or_writes_nothing(org):
    key = f"title:{uuid.uuid4().hex}"
    for _attempt in range(2):
        charge_now(organization=org, usage=metered(key, "2"), description="title")
    assert balance(org) == Decimal("98") == ledger_sum(organization=org)
    assert UsageEvent.objects.filter(request_id=key).count() == 1
    too_much = f"title:{uuid.uuid4().hex}"
    with pytest.raises(InsufficientCredits):
        charge_now(organization=org, usage=metered(too_much, "500"))
    assert not UsageEvent.objects.filter(request_id=too_much).exists()
    assert not CreditEntry.objects.filter(idempotency_key=too_much).exists()
    assert balance(org) == Decimal("98")


# The ledger's statements and functions that charge for work, and the usage event's: only billing runs them.
CHARGING = {"billing.ledger": {"credit_reserve", "credit_settle", "credit_release", "credit_debit", "RESERVE_SQL",
                               "CLOSE_SQL", "MOVE_CTES", "MOVE_SQL", "reserve_params"},
            "billing.usage": {"usage_record", "USAGE_INSERT_SQL", "usage_insert_sql", "usage_params"}}


def test_only_billing_charges_for_work():
    offending = []
    packages = [path for path in ROOT.iterdir() if (path / "__init__.py").exists() and path.name not in
                {"billing", "tests", "bench"}]
    assert {"chat", "checks", "config", "core", "tenants"} <= {package.name for package in packages}
    for path in sorted(file for package in packages for file in package.rglob("*.py")):
        relative = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module in CHARGING:
                used = {alias.name for alias in node.names} & CHARGING[node.module]
                if used:
                    offending.append(f"{relative}: {node.module}.{', '.join(sorted(used))}")
    assert offending == []
