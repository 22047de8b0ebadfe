"""The credit ledger: every movement of credits goes through `_move`.

A movement is one statement (MOVE_SQL): the balance row locked, the `CreditEntry` inserted
when the balance covers it (`credits + amount >= 0`, so concurrent requests can never
overspend) and its key is new, and the balance updated from that entry. The entry's unique
idempotency key makes a retried movement a no-op that returns the original entry. Callers
choose keys that name the business event (`grant:<org>:<month>`, a Stripe checkout session
id, a request id), never random ones.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from decimal import Decimal

from django.db import IntegrityError, connection, transaction

from accounts.models import User
from core.events import event_emit
from core.metrics import credits_count
from tenants.models import Organization

from .models import ZERO, BillingAccount, CreditEntry, CreditReservation
from .services import billing_account_ensure

logger = logging.getLogger(__name__)


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


# One round trip, no savepoint: the account row is locked first (a concurrent movement of the same organization
# waits, then sees its committed balance), the entry goes in only if the balance covers it and its key is new
# (ON CONFLICT: a concurrent retry of the same key inserts nothing), and the balance follows the entry.
# MOVE_CTES is the movement without its result, for statements that write more in the same round trip after it
# (checks.services.CACHE_HIT_SQL adds CTEs that hang off `entry`).
MOVE_CTES = f"""
WITH account AS (
    SELECT credits, credits_low_threshold FROM {BillingAccount._meta.db_table}
    WHERE organization_id = %(organization)s FOR UPDATE
), entry AS (
    INSERT INTO {CreditEntry._meta.db_table} (organization_id, kind, amount, balance_after, idempotency_key,
        reservation_id, description, created_by_id, metadata, created_at)
    SELECT %(organization)s::bigint, %(kind)s::text, %(amount)s::numeric, account.credits + %(amount)s::numeric,
        %(key)s::text, %(reservation)s::bigint, %(description)s::text, %(user)s::bigint, %(metadata)s::jsonb, now()
    FROM account WHERE account.credits + %(amount)s::numeric >= 0
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, balance_after, created_at
), moved AS (
    UPDATE {BillingAccount._meta.db_table} SET credits = entry.balance_after, updated_at = now()
    FROM entry WHERE organization_id = %(organization)s
)"""
MOVE_SQL = MOVE_CTES + "\nSELECT entry.id, entry.balance_after, entry.created_at, account.credits_low_threshold " \
                       "FROM entry, account\n"


def _move(*, organization: Organization, kind: str, amount: Decimal, key: str, description: str = "",
          user: User | None = None, reservation: CreditReservation | None = None,
          metadata: dict | None = None) -> Movement:
    amount = Decimal(amount)
    params = {"organization": organization.pk, "kind": kind, "amount": amount, "key": key,
              "reservation": reservation.pk if reservation else None, "description": description[:255],
              "user": user.pk if user else None, "metadata": json.dumps(metadata or {})}
    for first_try in (True, False):
        with connection.cursor() as cursor:
            cursor.execute(MOVE_SQL, params)
            row = cursor.fetchone()
        if row is not None:
            if kind in _COUNTED_KINDS:
                credits_count(_COUNTED_KINDS[kind], amount)
            # In the caller's transaction; in autocommit, right after the movement committed (it cannot roll back).
            credits_low_check(organization=organization, before=row[1] - amount, after=row[1], threshold=row[3])
            entry = CreditEntry(pk=row[0], organization=organization, kind=kind, amount=amount, balance_after=row[1],
                                idempotency_key=key, reservation=reservation, description=description[:255],
                                created_by=user, metadata=metadata or {}, created_at=row[2])
            return Movement(entry=entry, created=True)
        if (found := _existing(key, organization=organization, kind=kind, amount=amount)) is not None:
            return found  # a retry: that movement stands
        balance = BillingAccount.objects.filter(pk=organization.pk).values_list("credits", flat=True).first()
        if balance is not None or not first_try:
            raise InsufficientCredits(balance=balance or ZERO, required=-amount)
        # The account does not exist yet (the first movement of an organization): create it, retry once.
        billing_account_ensure(organization)
    raise AssertionError("unreachable")


def credits_low_crossed(*, before: Decimal, after: Decimal, threshold: Decimal | None) -> bool:
    """Whether a movement took the balance from at least `threshold` to below it (once per crossing: the next one
    needs the balance back at or above the threshold first)."""
    return threshold is not None and before >= threshold > after


def credits_low_check(*, organization: Organization | int, before: Decimal, after: Decimal,
                      threshold: Decimal | None) -> bool:
    """Emit `credits.low` (in the caller's transaction) when this movement crossed the threshold; whether it did.
    Costs nothing otherwise: the balance and threshold come back from the movement's own statement."""
    if not credits_low_crossed(before=before, after=after, threshold=threshold):
        return False
    if not isinstance(organization, Organization) or not organization.schema_name:
        organization = Organization.objects.get(pk=getattr(organization, "pk", organization))
    event_emit(organization=organization, type="credits.low",
               data={"balance": str(after), "threshold": str(threshold), "previous_balance": str(before)})
    return True


def credits_low_settled(*, organization_id: int, before: Decimal, after: Decimal, threshold: Decimal | None) -> bool:
    """`credits_low_check` for a settlement that already committed (the /v1 gateway's, whose one round trip cannot
    write the event): in a transaction of its own, only when it crossed."""
    with transaction.atomic():
        return credits_low_check(organization=organization_id, before=before, after=after, threshold=threshold)


# Movements counted in prumo_credits_total by `_move` (holds and their closing are counted where they happen).
_COUNTED_KINDS = {CreditEntry.Kind.GRANT: "granted", CreditEntry.Kind.PURCHASE: "purchased"}


def credits_closed_count(*, held: Decimal, actual: Decimal | None) -> None:
    """A hold of `held` just closed (CLOSE_SQL): `actual` settled, or the whole hold released (None)."""
    if actual is None:
        credits_count("released", held)
    else:
        credits_count("settled", actual)


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


# The hold and its settlement are each one SQL statement (billing.charges also runs them on the
# async connection pool): the balance moves only if it covers the hold, and the
# reservation and its ledger entries are written with it or not at all.
RESERVE_SQL = f"""
WITH account AS (
    UPDATE {BillingAccount._meta.db_table} SET credits = credits - %(amount)s::numeric, updated_at = now()
    WHERE organization_id = %(organization)s AND credits >= %(amount)s::numeric
      AND NOT EXISTS (SELECT 1 FROM {CreditReservation._meta.db_table} WHERE key = %(key)s::text)
    RETURNING credits
), reservation AS (
    INSERT INTO {CreditReservation._meta.db_table} (organization_id, key, amount, status, created_at)
    SELECT %(organization)s::bigint, %(key)s::text, %(amount)s::numeric, 'open', now() FROM account
    RETURNING id, created_at
), entry AS (
    INSERT INTO {CreditEntry._meta.db_table} (organization_id, kind, amount, balance_after, idempotency_key,
        reservation_id, description, created_by_id, metadata, created_at)
    SELECT %(organization)s::bigint, 'reserve', -%(amount)s::numeric, account.credits,
        %(key)s::text || ':reserve', reservation.id, %(description)s::text, %(user)s::bigint, '{{}}'::jsonb,
        reservation.created_at
    FROM account, reservation
)
SELECT id, created_at FROM reservation
"""

# Closing: `actual` NULL releases the whole hold, a number settles it (release, then debit). When the
# work cost more than was held (a provider counted more tokens than estimated), the difference is
# debited too, as its own entry (`<key>:overage`), as far as the balance covers it: the balance never
# goes below zero, and what it could not cover is written in that entry's metadata (`uncovered`) and
# returned, for the caller to raise (`credit_overage_uncovered`). The balance the overage may take is
# read under the row lock the account update takes anyway, so concurrent movements cannot race it.
CLOSE_SQL = f"""
WITH reservation AS (
    UPDATE {CreditReservation._meta.db_table}
    SET status = CASE WHEN %(actual)s::numeric IS NULL THEN 'released' ELSE 'settled' END,
        actual = %(actual)s::numeric, closed_at = now()
    WHERE id = %(reservation)s AND status = 'open'
    RETURNING id, organization_id, key, amount, least(coalesce(%(actual)s::numeric, 0), amount) AS charged,
        greatest(coalesce(%(actual)s::numeric, 0) - amount, 0) AS over
), locked AS (
    SELECT a.organization_id, least(r.over, greatest(a.credits + r.amount - r.charged, 0)) AS covered
    FROM {BillingAccount._meta.db_table} a JOIN reservation r ON a.organization_id = r.organization_id
    FOR UPDATE OF a
), account AS (
    UPDATE {BillingAccount._meta.db_table} AS a
    SET credits = a.credits + r.amount - r.charged - l.covered, updated_at = now()
    FROM reservation r, locked l WHERE a.organization_id = r.organization_id
    RETURNING a.credits, l.covered, r.over - l.covered AS uncovered, a.credits_low_threshold,
        r.charged + l.covered AS cost
), entries AS (
    INSERT INTO {CreditEntry._meta.db_table} (organization_id, kind, amount, balance_after, idempotency_key,
        reservation_id, description, metadata, created_at)
    SELECT r.organization_id, v.kind, v.amount, v.balance_after, r.key || v.suffix, r.id, v.description,
        v.metadata, now()
    FROM reservation r, account a CROSS JOIN LATERAL (VALUES
        (1, 'release', r.amount, a.credits + a.covered + r.charged, ':release', '', '{{}}'::jsonb),
        (2, 'debit', -r.charged, a.credits + a.covered, ':debit', '', '{{}}'::jsonb),
        (3, 'debit', -a.covered, a.credits, ':overage', 'usage beyond the hold',
         jsonb_build_object('overage', r.over::text, 'uncovered', a.uncovered::text))
    ) AS v(position, kind, amount, balance_after, suffix, description, metadata)
    WHERE v.position = 1 OR (v.position = 2 AND r.charged > 0) OR (v.position = 3 AND r.over > 0)
    ORDER BY v.position
)
SELECT credits, covered, uncovered, credits_low_threshold, cost FROM account
"""


def reserve_params(*, organization_id: int, amount: Decimal, key: str, description: str = "",
                   user_id: int | None = None) -> dict:
    return {"organization": organization_id, "amount": amount, "key": key, "description": description[:255],
            "user": user_id}


def credit_reserve(*, organization: Organization, amount: Decimal, key: str, description: str = "",
                   user: User | None = None) -> CreditReservation:
    """Hold the most a piece of work can cost; settle or release it afterwards.

    Raises InsufficientCredits when the balance does not cover it; a retry with the same key
    returns the first hold.
    """
    amount = _positive(amount)
    params = reserve_params(organization_id=organization.pk, amount=amount, key=key, description=description,
                            user_id=user.pk if user else None)
    for first_try in (True, False):
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(RESERVE_SQL, params)
                row = cursor.fetchone()
        except IntegrityError:
            row = None  # the same key committed concurrently: the lookup below finds it
        if row is not None:
            credits_count("held", amount)
            return CreditReservation(pk=row[0], organization=organization, key=key, amount=amount,
                                     created_at=row[1])
        existing = CreditReservation.objects.filter(key=key).first()
        if existing is not None:
            if (existing.organization_id, existing.amount) != (organization.pk, amount):
                raise IdempotencyConflict(f"reservation {key!r} exists with other terms")
            return existing
        balance = BillingAccount.objects.filter(pk=organization.pk).values_list("credits", flat=True).first()
        if balance is not None or not first_try:
            raise InsufficientCredits(balance=balance or ZERO, required=amount)
        billing_account_ensure(organization)  # the organization's first movement: create its account, retry
    raise AssertionError("unreachable")


def _close(reservation: CreditReservation, *, actual: Decimal | None) -> CreditReservation:
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(CLOSE_SQL, {"reservation": reservation.pk, "actual": actual})
            row = cursor.fetchone()
        if row is not None:
            # The crossing is judged on what the work cost (the hold was never the balance's to keep).
            credits_low_check(organization=reservation.organization_id, before=row[0] + row[4], after=row[0],
                              threshold=row[3])
    if row is not None:
        credits_closed_count(held=reservation.amount, actual=actual)
    if row is not None and row[2] > 0:
        credit_overage_uncovered(organization_id=reservation.organization_id, reservation_id=reservation.pk,
                                 key=reservation.key, overage=row[1] + row[2], uncovered=row[2])
    # Closed now, or already (a retry): either way the row says how.
    return CreditReservation.objects.get(pk=reservation.pk)


def credit_settle(*, reservation: CreditReservation, actual: Decimal, beyond_hold: bool = False) -> CreditReservation:
    """Charge what the work really cost; the rest of the hold goes back.

    A cost above the hold is a ValueError unless `beyond_hold` (usage a provider reports, which no
    estimate bounds): then the difference is debited as its own entry, as far as the balance covers
    it, and the rest is raised (see CLOSE_SQL).
    """
    actual = Decimal(actual)
    if actual < ZERO or (actual > reservation.amount and not beyond_hold):
        raise ValueError(f"actual cost {actual} must be between 0 and the reserved {reservation.amount}")
    return _close(reservation, actual=actual)


def credit_overage_uncovered(*, organization_id: int, reservation_id: int, key: str, overage: Decimal,
                             uncovered: Decimal) -> None:
    """Usage beyond a hold that the balance could not cover: never silent. A warning for the operators'
    alerts and an audit event in the organization (the ledger's `<key>:overage` entry has the numbers)."""
    from tenants.audit.services import Actor, audit_record

    logger.warning("credits overage uncovered: organization=%s hold=%s overage=%s uncovered=%s",
                   organization_id, key, overage, uncovered)
    organization = Organization.objects.filter(pk=organization_id).first()
    if organization is None:
        return
    audit_record(organization=organization, actor=Actor.system("billing"), action="credits.overage_uncovered",
                 target_type="billing.creditreservation", target_id=str(reservation_id), target_label=key,
                 after={"overage": str(overage), "uncovered": str(uncovered)})


def credit_release(*, reservation: CreditReservation) -> CreditReservation:
    """Give the whole hold back (the work failed before costing anything)."""
    return _close(reservation, actual=None)
