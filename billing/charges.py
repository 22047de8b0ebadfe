"""Charging for work: the one owner of hold → settle or release → usage event.

Every paid piece of work (a chat answer, a thread title, a `/v1` call, a CNPJ check) is charged here, so
that what billing.ledger promises stays true: credits move only through the ledger's statements, and the
usage event that meters the work is written with the movement that bills it, in the same transaction,
once per request id (a retry writes nothing more).

- `charge_hold`: reserve the most the work can cost (InsufficientCredits when the balance does not cover it);
- `charge_settle`: charge what it really cost (beyond the hold when a provider counted more: see
  billing.ledger.CLOSE_SQL) and meter it; nothing used releases the hold instead;
- `charge_release`: give the whole hold back (the work failed, or was cancelled, before costing anything);
- `charge_now`: debit and meter work that had no hold (a thread title).

The `/v1` gateway and the direct chat send run the same statements on the async pool, queued with their own
writes so each stays one round trip: `charge_hold_async` / `charge_hold_queue`, and `charge_settle_queue`.
A check answered from the cache is charged inside one larger statement: `CHARGE_NOW_CTES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection, transaction
from psycopg import AsyncConnection, AsyncCursor

from accounts.models import User
from core.db_async import async_pool, orm_call
from core.metrics import credits_count
from tenants.models import Organization

from .ledger import (
    CLOSE_SQL,
    MOVE_CTES,
    RESERVE_SQL,
    credit_debit,
    credit_overage_uncovered,
    credit_release,
    credit_reserve,
    credit_settle,
    credits_closed_count,
    credits_low_crossed,
    credits_low_settled,
    reserve_params,
)
from .models import ZERO, CreditEntry, CreditReservation, Price
from .usage import USAGE_INSERT_SQL, usage_insert_sql, usage_params


@dataclass(frozen=True)
class Metered:
    """What one piece of work used, at which price and what it costs: its usage event.

    `request_id` makes the event idempotent (the hold's key, or the work's own key when nothing was held)."""

    kind: str  # billing.models.UsageEvent.Kind
    key: str  # the model id or the price key
    request_id: str
    credits: Decimal
    input_per_million: Decimal = ZERO  # the unit prices it was billed at
    output_per_million: Decimal = ZERO
    per_unit: Decimal = ZERO
    user: User | None = None
    api_key_id: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    units: int = 0
    occurred_at: datetime | None = None

    @classmethod
    def at(cls, price: Price, **fields) -> Metered:
        """Usage billed at `price`'s unit prices."""
        return cls(input_per_million=price.input_per_million, output_per_million=price.output_per_million,
                   per_unit=price.per_unit, **fields)

    @property
    def measured(self) -> bool:
        """Whether there is anything to meter (a call that produced nothing writes no event)."""
        return bool(self.input_tokens or self.output_tokens or self.units)

    def params(self, *, organization_id: int) -> dict:
        """The usage event's statement parameters (billing.usage.usage_params)."""
        return usage_params(organization_id=organization_id, kind=self.kind, key=self.key,
                            request_id=self.request_id, credits=self.credits,
                            input_per_million=self.input_per_million, output_per_million=self.output_per_million,
                            per_unit=self.per_unit, user_id=self.user.pk if self.user else None,
                            api_key_id=self.api_key_id, input_tokens=self.input_tokens,
                            output_tokens=self.output_tokens, units=self.units, occurred_at=self.occurred_at)


def _record(organization: Organization, usage: Metered | None) -> None:
    """The usage event, once per request id (a retry inserts nothing)."""
    if usage is not None and usage.measured:
        with connection.cursor() as cursor:
            cursor.execute(USAGE_INSERT_SQL, usage.params(organization_id=organization.pk))


# ---------------------------------------------------------------- sync (Django's connection)


def charge_hold(*, organization: Organization, amount: Decimal, key: str, description: str = "",
                user: User | None = None) -> CreditReservation | None:
    """Hold `amount` under `key` (None: nothing to hold). Raises InsufficientCredits; a retry with the same key
    returns the first hold. Inside the caller's transaction: the hold rolls back with the work's own rows."""
    if amount <= ZERO:
        return None
    return credit_reserve(organization=organization, amount=amount, key=key, description=description, user=user)


def _open_hold(key: str) -> CreditReservation | None:
    return CreditReservation.objects.filter(key=key).first()


def charge_settle(*, organization: Organization, key: str, actual: Decimal, usage: Metered | None = None,
                  beyond_hold: bool = True) -> None:
    """Close the hold under `key` at `actual` and write `usage`'s event, together. 0 releases the hold; above the
    hold is debited as far as the balance goes (usage a provider reports, which no estimate bounds), or, without
    `beyond_hold`, charged at the hold (a price raised since the hold does not charge more). Work that had no hold
    is metered only (a free model). Closing an already closed hold, or metering twice, changes nothing."""
    with transaction.atomic(savepoint=False):  # within the caller's transaction: no savepoint to pay for
        reservation = _open_hold(key)
        if reservation is not None:
            if not beyond_hold:
                actual = min(actual, reservation.amount)
            if actual > ZERO:
                credit_settle(reservation=reservation, actual=actual, beyond_hold=beyond_hold)
            else:
                credit_release(reservation=reservation)
        _record(organization, usage)


def charge_release(*, key: str) -> bool:
    """Give back the whole hold under `key`, if there is one (whether it was open or already closed, the
    ledger changes once). Returns whether a hold exists."""
    reservation = _open_hold(key)
    if reservation is None:
        return False
    credit_release(reservation=reservation)
    return True


def charge_now(*, organization: Organization, usage: Metered, description: str = "") -> None:
    """Debit `usage.credits` at once and meter it, together (work that had no hold). Raises InsufficientCredits
    (nothing written); a retry with the same request id changes nothing."""
    with transaction.atomic():
        if usage.credits > ZERO:
            credit_debit(organization=organization, amount=usage.credits, key=usage.request_id,
                         description=description, user=usage.user)
        _record(organization, usage)


# The debit of `charge_now` and its usage event as CTEs, for a statement that writes more after them in the
# same round trip (checks.services.CACHE_HIT_SQL): `entry` yields a row only when the balance covered it, and the
# usage event is written only then. Parameters: `charge_now_params`.
CHARGE_NOW_CTES = MOVE_CTES + f""",
usage AS (
    {usage_insert_sql(prefix="usage_", after="entry")}
)"""


def charge_now_params(*, organization: Organization, usage: Metered, description: str = "") -> dict:
    return {"organization": organization.pk, "kind": CreditEntry.Kind.DEBIT, "amount": -usage.credits,
            "key": usage.request_id, "reservation": None, "description": description[:255],
            "user": usage.user.pk if usage.user else None, "metadata": "{}",
            **{f"usage_{name}": value for name, value in usage.params(organization_id=organization.pk).items()}}


# ---------------------------------------------------------------- async (the /v1 gateway's pool)


@dataclass
class PendingHold:
    """A hold queued on a connection (`charge_hold_queue`); `taken()` once its statement has run."""

    cursor: AsyncCursor
    amount: Decimal

    async def taken(self) -> int | None:
        """The hold's id, or None when the balance did not cover it (or for an organization's first movement: no
        account row yet)."""
        row = await self.cursor.fetchone()
        if row is None:
            return None
        credits_count("held", self.amount)
        return row[0]


async def charge_hold_queue(async_connection: AsyncConnection, *, organization_id: int, amount: Decimal, key: str,
                            description: str = "", user_id: int | None = None) -> PendingHold:
    """`charge_hold`'s statement on an async connection, queued in the caller's pipeline or transaction (so the
    work's own rows can depend on it, in the same round trip)."""
    cursor = await async_connection.execute(RESERVE_SQL, reserve_params(
        organization_id=organization_id, amount=amount, key=key, description=description, user_id=user_id))
    return PendingHold(cursor=cursor, amount=amount)


async def charge_hold_async(*, organization_id: int, amount: Decimal, key: str, description: str = "") -> int:
    """`charge_hold` in one statement on the event loop's pool; returns the hold's id. A refusal (or the
    organization's first movement, which has no account row yet) is decided, and explained, by the sync path."""
    pool = await async_pool()
    async with pool.connection() as async_connection:
        hold = await charge_hold_queue(async_connection, organization_id=organization_id, amount=amount, key=key,
                                       description=description)
        reservation_id = await hold.taken()
    if reservation_id is not None:
        return reservation_id
    reservation = await orm_call(credit_reserve, organization=Organization(pk=organization_id), amount=amount,
                                 key=key, description=description)
    return reservation.pk


@dataclass
class PendingSettlement:
    """A settlement queued on a pipeline (`charge_settle_queue`); `done()` once the pipeline has synced."""

    cursor: AsyncCursor | None
    organization_id: int
    reservation_id: int | None
    key: str
    held: Decimal
    actual: Decimal

    async def done(self) -> None:
        closed = await self.cursor.fetchone() if self.cursor is not None else None
        if closed is None:
            return  # nothing was held, or the hold was already closed (a retry)
        credits_closed_count(held=self.held, actual=self.actual if self.actual > ZERO else None)
        # credits.low: the crossing is seen in the settlement's own answer (CLOSE_SQL returns the balance, the
        # threshold and the cost); the rare event is written after it, in a transaction of its own, since the
        # caller's pipeline has committed by then.
        before, after, threshold = closed[0] + closed[4], closed[0], closed[3]
        if credits_low_crossed(before=before, after=after, threshold=threshold):
            await orm_call(credits_low_settled, organization_id=self.organization_id, before=before, after=after,
                           threshold=threshold)
        if closed[2] > 0:
            await orm_call(credit_overage_uncovered, organization_id=self.organization_id,
                           reservation_id=self.reservation_id, key=self.key, overage=closed[1] + closed[2],
                           uncovered=closed[2])


async def charge_settle_queue(async_connection: AsyncConnection, *, organization_id: int, reservation_id: int | None,
                              key: str, held: Decimal, actual: Decimal, usage: Metered) -> PendingSettlement:
    """`charge_settle` for an async connection inside the caller's `pipeline()`: PostgreSQL runs the statements
    up to the pipeline's Sync as one implicit transaction, so the hold closes and the usage event is written
    together (with whatever else the caller queues there), in one round trip."""
    closing = None
    if reservation_id is not None:
        closing = await async_connection.execute(CLOSE_SQL, {"reservation": reservation_id,
                                                       "actual": actual if actual > ZERO else None})
    if usage.measured:
        await async_connection.execute(USAGE_INSERT_SQL, usage.params(organization_id=organization_id))
    return PendingSettlement(cursor=closing, organization_id=organization_id, reservation_id=reservation_id,
                             key=key, held=held, actual=actual)
