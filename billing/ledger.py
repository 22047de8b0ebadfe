"""The credit ledger: every movement of credits goes through `_move`.

A movement is one transaction: a conditional UPDATE of the balance (`credits + amount
>= 0`, so concurrent requests can never overspend) and the insert of its `CreditEntry`,
whose unique idempotency key makes a retried movement a no-op that returns the
original entry. Callers choose keys that name the business event (`grant:<org>:<month>`,
a Stripe checkout session id, a request id), never random ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.models import User
from tenants.models import Organization

from .models import ZERO, BillingAccount, CreditEntry, CreditReservation
from .services import billing_account_ensure


class InsufficientCredits(Exception):
    """The balance does not cover the movement; nothing was written."""

    def __init__(self, *, balance: Decimal, required: Decimal):
        super().__init__(f"balance {balance} does not cover {required}")
        self.balance = balance
        self.required = required


class IdempotencyConflict(Exception):
    """An idempotency key was reused for a different movement."""


@dataclass(frozen=True)
class Movement:
    entry: CreditEntry
    created: bool  # False when the key had already moved credits (a retry)


def _existing(key: str, *, organization: Organization, kind: str, amount: Decimal) -> Movement | None:
    entry = CreditEntry.objects.filter(idempotency_key=key).first()
    if entry is None:
        return None
    if (entry.organization_id, entry.kind, entry.amount) != (organization.pk, kind, amount):
        raise IdempotencyConflict(
            f"key {key!r} already moved {entry.amount} ({entry.kind}) for organization {entry.organization_id}"
        )
    return Movement(entry=entry, created=False)


def _move(*, organization: Organization, kind: str, amount: Decimal, key: str, description: str = "",
          user: User | None = None, reservation: CreditReservation | None = None,
          metadata: dict | None = None) -> Movement:
    amount = Decimal(amount)
    if (found := _existing(key, organization=organization, kind=kind, amount=amount)) is not None:
        return found
    table = BillingAccount._meta.db_table
    try:
        with transaction.atomic():
            for first_try in (True, False):
                with connection.cursor() as cursor:
                    cursor.execute(
                        f"UPDATE {table} SET credits = credits + %s, updated_at = now() "
                        "WHERE organization_id = %s AND credits + %s >= 0 RETURNING credits",
                        [amount, organization.pk, amount],
                    )
                    row = cursor.fetchone()
                if row is not None:
                    break
                balance = BillingAccount.objects.filter(pk=organization.pk).values_list("credits", flat=True).first()
                if balance is not None or not first_try:
                    raise InsufficientCredits(balance=balance or ZERO, required=-amount)
                # The account does not exist yet (the first movement of an organization): create it, retry once.
                billing_account_ensure(organization)
            entry = CreditEntry.objects.create(
                organization=organization, kind=kind, amount=amount, balance_after=row[0], idempotency_key=key,
                reservation=reservation, description=description[:255], created_by=user, metadata=metadata or {},
            )
    except IntegrityError:
        # The same key committed concurrently: that movement stands, ours rolled back.
        found = _existing(key, organization=organization, kind=kind, amount=amount)
        if found is None:
            raise
        return found
    return Movement(entry=entry, created=True)


def _positive(amount: Decimal) -> Decimal:
    amount = Decimal(amount)
    if amount <= ZERO:
        raise ValueError("amount must be positive")
    return amount


def credit_grant(*, organization: Organization, amount: Decimal, key: str, description: str = "") -> Movement:
    return _move(organization=organization, kind=CreditEntry.Kind.GRANT, amount=_positive(amount), key=key,
                 description=description)


def credit_purchase(*, organization: Organization, amount: Decimal, key: str, description: str = "",
                    metadata: dict | None = None) -> Movement:
    return _move(organization=organization, kind=CreditEntry.Kind.PURCHASE, amount=_positive(amount), key=key,
                 description=description, metadata=metadata)


def credit_debit(*, organization: Organization, amount: Decimal, key: str, description: str = "",
                 user: User | None = None, metadata: dict | None = None) -> Movement:
    """Spend credits now. Raises InsufficientCredits rather than going below zero."""
    return _move(organization=organization, kind=CreditEntry.Kind.DEBIT, amount=-_positive(amount), key=key,
                 description=description, user=user, metadata=metadata)


def credit_refund(*, organization: Organization, amount: Decimal, key: str, description: str = "") -> Movement:
    return _move(organization=organization, kind=CreditEntry.Kind.REFUND, amount=_positive(amount), key=key,
                 description=description)


def credit_adjust(*, organization: Organization, amount: Decimal, reason: str, user: User, key: str) -> Movement:
    """A staff correction, up or down, with its reason; audited in the organization."""
    from tenants.audit.services import Actor, audit_record

    if not reason.strip():
        raise ValueError("an adjustment needs a reason")
    with transaction.atomic():
        movement = _move(organization=organization, kind=CreditEntry.Kind.ADJUSTMENT, amount=Decimal(amount),
                         key=key, description=reason, user=user)
        if movement.created:
            audit_record(organization=organization,
                         actor=Actor(type="user", id=str(user.pk), label=user.email),
                         action="credits.adjusted", target=movement.entry,
                         after={"amount": str(movement.entry.amount), "reason": reason})
    return movement


def credit_reserve(*, organization: Organization, amount: Decimal, key: str, description: str = "",
                   user: User | None = None) -> CreditReservation:
    """Hold the most a piece of work can cost; settle or release it afterwards."""
    amount = _positive(amount)
    with transaction.atomic():
        reservation, created = CreditReservation.objects.get_or_create(
            key=key, defaults={"organization": organization, "amount": amount}
        )
        if not created:
            if (reservation.organization_id, reservation.amount) != (organization.pk, amount):
                raise IdempotencyConflict(f"reservation {key!r} exists with other terms")
            return reservation
        _move(organization=organization, kind=CreditEntry.Kind.RESERVE, amount=-amount, key=f"{key}:reserve",
              description=description, user=user, reservation=reservation)
    return reservation


def _close(reservation: CreditReservation, *, actual: Decimal | None) -> CreditReservation:
    with transaction.atomic():
        # Lock the reservation only: FOR UPDATE on the joined organization row would deadlock with
        # concurrent ledger inserts, which take a key-share lock on it through their foreign key.
        locked = (CreditReservation.objects.select_for_update(of=("self",)).select_related("organization")
                  .get(pk=reservation.pk))
        if locked.status != CreditReservation.Status.OPEN:
            return locked  # already settled or released: a retry
        organization = locked.organization
        _move(organization=organization, kind=CreditEntry.Kind.RELEASE, amount=locked.amount,
              key=f"{locked.key}:release", reservation=locked)
        if actual:
            _move(organization=organization, kind=CreditEntry.Kind.DEBIT, amount=-actual,
                  key=f"{locked.key}:debit", reservation=locked)
        locked.status = CreditReservation.Status.SETTLED if actual is not None else CreditReservation.Status.RELEASED
        locked.actual = actual
        locked.closed_at = timezone.now()
        locked.save(update_fields=["status", "actual", "closed_at"])
    return locked


def credit_settle(*, reservation: CreditReservation, actual: Decimal) -> CreditReservation:
    """Charge what the work really cost (at most what was held); the rest goes back."""
    actual = Decimal(actual)
    if actual < ZERO or actual > reservation.amount:
        raise ValueError(f"actual cost {actual} must be between 0 and the reserved {reservation.amount}")
    return _close(reservation, actual=actual)


def credit_release(*, reservation: CreditReservation) -> CreditReservation:
    """Give the whole hold back (the work failed before costing anything)."""
    return _close(reservation, actual=None)
