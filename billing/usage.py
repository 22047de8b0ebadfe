"""Usage: record billable events at their current prices, and roll them up per day.

Pages and dashboards read `DailyUsage`, never raw events. The rollup is incremental
(it claims the events not rolled up yet) and idempotent (it rebuilds each touched
organization-day from the raw events), so running it twice, concurrently or after a
crash gives the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from django.db import connection, transaction
from django.utils import timezone

from accounts.models import User
from tenants.models import Organization

from .models import DailyUsage, Price, UsageEvent
from .selectors import price_for

MILLION = Decimal(1_000_000)
CREDIT_QUANTUM = Decimal("0.000001")


class UnknownPrice(LookupError):
    """No price is in force for this model or check kind: it cannot be billed."""


@dataclass(frozen=True)
class Cost:
    credits: Decimal
    price: Price


def credits_for(*, input_per_million: Decimal, output_per_million: Decimal, per_unit: Decimal = Decimal(0),
                input_tokens: int = 0, output_tokens: int = 0, units: int = 0) -> Decimal:
    """What usage costs at the given unit prices, rounded to the ledger's quantum."""
    credits = (Decimal(input_tokens) * input_per_million / MILLION
               + Decimal(output_tokens) * output_per_million / MILLION + Decimal(units) * per_unit)
    return credits.quantize(CREDIT_QUANTUM, rounding=ROUND_HALF_UP)


def usage_cost(*, kind: str, key: str, input_tokens: int = 0, output_tokens: int = 0, units: int = 0,
               at=None) -> Cost:
    """What a piece of usage costs at the prices in force (`at`, now by default)."""
    price = price_for(kind=kind, key=key, at=at)
    if price is None:
        raise UnknownPrice(f"no {kind} price for {key!r}")
    credits = credits_for(input_per_million=price.input_per_million, output_per_million=price.output_per_million,
                          per_unit=price.per_unit, input_tokens=input_tokens, output_tokens=output_tokens,
                          units=units)
    return Cost(credits=credits, price=price)


# One event per (organization, request id): a retried request writes nothing more. The /v1
# gateway runs this statement on its async pool, in the same round trip as its settlement.
# A usage event's columns, the parameter each takes and its type (typed: a row selected FROM another CTE has no
# column to take its types from).
USAGE_ROW = (("organization_id", "organization", "bigint"), ("user_id", "user", "bigint"),
             ("api_key_id", "api_key", "bigint"), ("kind", "kind", "text"), ("key", "key", "text"),
             ("input_tokens", "input_tokens", "integer"), ("output_tokens", "output_tokens", "integer"),
             ("units", "units", "integer"), ("credits", "credits", "numeric"),
             ("input_per_million", "input_per_million", "numeric"),
             ("output_per_million", "output_per_million", "numeric"), ("per_unit", "per_unit", "numeric"),
             ("request_id", "request_id", "text"), ("occurred_at", "occurred_at", "timestamptz"))


def usage_insert_sql(*, prefix: str = "", after: str | None = None) -> str:
    """INSERT of one usage event, once per request id (a retry inserts nothing). Its parameters are
    `usage_params`'s names with `prefix`; `after`: a CTE the row is selected from, so it is written only if that
    CTE yields a row."""
    values = ", ".join(f"%({prefix}{param})s::{kind}" for _column, param, kind in USAGE_ROW)
    source = f"VALUES ({values})" if after is None else f"SELECT {values} FROM {after}"
    return (f"INSERT INTO {UsageEvent._meta.db_table} ({', '.join(column for column, _p, _k in USAGE_ROW)})\n"
            f"{source}\nON CONFLICT (organization_id, request_id) DO NOTHING")


USAGE_INSERT_SQL = usage_insert_sql()


def usage_params(*, organization_id: int, kind: str, key: str, request_id: str, credits: Decimal,
                 input_per_million: Decimal, output_per_million: Decimal, per_unit: Decimal = Decimal(0),
                 user_id: int | None = None, api_key_id: int | None = None, input_tokens: int = 0,
                 output_tokens: int = 0, units: int = 0, occurred_at=None) -> dict:
    return {"organization": organization_id, "user": user_id, "api_key": api_key_id, "kind": kind, "key": key,
            "input_tokens": input_tokens, "output_tokens": output_tokens, "units": units, "credits": credits,
            "input_per_million": input_per_million, "output_per_million": output_per_million, "per_unit": per_unit,
            "request_id": request_id, "occurred_at": occurred_at or timezone.now()}


def usage_record(*, organization: Organization, kind: str, key: str, request_id: str, credits: Decimal,
                 price: Price, user: User | None = None, api_key_id: int | None = None, input_tokens: int = 0,
                 output_tokens: int = 0, units: int = 0, occurred_at=None) -> UsageEvent:
    """Write the usage event of one request, once: a retry with the same request id returns it."""
    params = usage_params(organization_id=organization.pk, kind=kind, key=key, request_id=request_id,
                          credits=credits, input_per_million=price.input_per_million,
                          output_per_million=price.output_per_million, per_unit=price.per_unit,
                          user_id=user.pk if user else None, api_key_id=api_key_id, input_tokens=input_tokens,
                          output_tokens=output_tokens, units=units, occurred_at=occurred_at)
    with connection.cursor() as cursor:
        cursor.execute(USAGE_INSERT_SQL + " RETURNING id, credits", params)
        row = cursor.fetchone()
    if row is None:  # a retry: the event written the first time
        return UsageEvent.objects.get(organization=organization, request_id=request_id)
    return UsageEvent(pk=row[0], organization=organization, user=user, api_key_id=api_key_id, kind=kind, key=key,
                      input_tokens=input_tokens, output_tokens=output_tokens, units=units, credits=row[1],
                      input_per_million=price.input_per_million, output_per_million=price.output_per_million,
                      per_unit=price.per_unit, request_id=request_id, occurred_at=params["occurred_at"])


ROLLUP_LOCK = 7_301_001  # pg_advisory_xact_lock key: one rollup at a time
ROLLUP_BATCH = 50_000

_CLAIM_SQL = """
WITH claimed AS (
    UPDATE {events} SET rolled_up_at = now()
     WHERE id IN (SELECT id FROM {events} WHERE rolled_up_at IS NULL ORDER BY id LIMIT %(batch)s
                  FOR UPDATE SKIP LOCKED)
 RETURNING organization_id, (occurred_at AT TIME ZONE 'UTC')::date AS day
)
SELECT organization_id, day, count(*) FROM claimed GROUP BY 1, 2
"""

_TOUCHED = "SELECT * FROM unnest(%(orgs)s::bigint[], %(days)s::date[]) AS t(organization_id, day)"

_DELETE_SQL = f"""
DELETE FROM {{daily}} d USING ({_TOUCHED}) t WHERE d.organization_id = t.organization_id AND d.day = t.day
"""

_INSERT_SQL = f"""
INSERT INTO {{daily}} (organization_id, day, kind, key, user_id, events, input_tokens, output_tokens, units, credits)
SELECT e.organization_id, (e.occurred_at AT TIME ZONE 'UTC')::date, e.kind, e.key, e.user_id, count(*),
       sum(e.input_tokens), sum(e.output_tokens), sum(e.units), sum(e.credits)
  FROM {{events}} e
  JOIN ({_TOUCHED}) t ON t.organization_id = e.organization_id
   AND e.occurred_at >= t.day::timestamp AT TIME ZONE 'UTC'
   AND e.occurred_at < (t.day + 1)::timestamp AT TIME ZONE 'UTC'
 GROUP BY 1, 2, 3, 4, 5
"""


@transaction.atomic
def usage_rollup(*, batch: int = ROLLUP_BATCH) -> int:
    """Fold events not yet rolled up into DailyUsage. Returns how many events it claimed.

    Each touched organization-day is rebuilt from all of its events, so a late event, a
    second run or a crash mid-way never double-counts; events committed after this run
    read the table are still unclaimed and fold in next time.
    """
    names = {"events": UsageEvent._meta.db_table, "daily": DailyUsage._meta.db_table}
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ROLLUP_LOCK])
        cursor.execute(_CLAIM_SQL.format(**names), {"batch": batch})
        touched = cursor.fetchall()
        if not touched:
            return 0
        pairs = {"orgs": [row[0] for row in touched], "days": [row[1] for row in touched]}
        cursor.execute(_DELETE_SQL.format(**names), pairs)
        cursor.execute(_INSERT_SQL.format(**names), pairs)
    return sum(row[2] for row in touched)
