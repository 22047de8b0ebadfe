"""Checks: add targets, request and run checks, write reports and alerts, bill them.

A check answered from the shared cache finishes inside the request, billed at the cached
price. Any other check holds the lookup price, is queued (`checks.tasks.check_run_task`) and
runs through `check_run`, whose transitions are the state machine of `Check`:

    pending → running → succeeded | not_found | failed
                     ↘ pending (every registry rate-limited: run again after their wait;
                                a transient failure: run again with backoff, CHECKS_MAX_RUNS times)

Found and not-found are billed (the lookup price, or the cached price when another request
answered meanwhile); failed checks release their hold. Each organization's plan sets how many
checks a month it may request: a check takes its place in the month's count (`ChecksMonth`, one
row) in the statement that writes it, and a failed or cancelled one gives it back.

A cache hit is two round trips to PostgreSQL, both prepared once per connection (core.prepared):
one read (REQUEST_READ_SQL) and one write (CACHE_HIT_SQL: billing.charges.CHARGE_NOW_CTES, extended).

Fair sharing between organizations (the registries' rate limits are one budget for everyone):

- a run holds one of its organization's slots (billing.ratelimits `slot_acquire`, the plan's
  `concurrent_checks`, released in `finally`, its lease as long as a run can last so a dead
  worker's slot frees itself); a run over the cap goes back to pending with `run_after`, like a
  throttled one, and runs again in SLOT_RETRY_SECONDS;
- interactive checks (a page, the API) are queued at once; background ones (bulk batches,
  monitoring) are fed to the queue by `checks_feed`, at most `concurrent_checks` of the
  organization's queued or running at a time, topped up as each finishes. So a 10,000-row batch
  puts a handful of tasks in the `checks` queue, never 10,000 in front of another organization's;
- background lookups yield the registries' windows to interactive ones that wait
  (checks.registries.limits): an interactive check waits one window at most behind any batch.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, connection, models, transaction
from django.utils import timezone, translation
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.translation import gettext as _
from django_tenants.utils import schema_context

from accounts.models import User
from billing.charges import CHARGE_NOW_CTES, Metered, charge_hold, charge_now_params, charge_release, charge_settle
from billing.ledger import InsufficientCredits, credits_low_check
from billing.models import BillingAccount, Plan, Price, UsageEvent
from billing.ratelimits import slot_acquire, slot_release
from billing.selectors import entitlements_for, price_for
from core.events import event_emit
from core.prepared import PreparedStatement
from tenants.audit.services import Actor, audit_record
from tenants.models import Organization
from tenants.selectors import current_organization
from webhooks.models import WebhookEndpoint

from . import cnpj as cnpj_id
from .cache import CachedLookup, cache_peek, cached_lookup
from .diff import report_diff, risk_level_change
from .models import Alert, Attempt, Check, ChecksMonth, ChecksSettings, Report, Target
from .registries import FALLBACK_ORDER, LOOKUP_FOUND, LOOKUP_NOT_FOUND, LOOKUP_THROTTLED
from .signals import SignalThresholds, risk_level, signals_evaluate

logger = logging.getLogger(__name__)

LOOKUP_PRICE = "cnpj"
CACHED_PRICE = "cnpj_cached"
SCHEDULE_EVERY = {Target.Schedule.DAILY: timedelta(days=1), Target.Schedule.WEEKLY: timedelta(days=7)}
LANGUAGES = ("en", "pt-br")
# Checks nobody waits for on a page: fed to the queue a few at a time, and last in line for the registries.
BACKGROUND_SOURCES = (Check.Source.BULK, Check.Source.MONITOR)
SLOT_KIND = "checks"
SLOT_RETRY_SECONDS = 2.0  # a check over its organization's cap runs again this soon (plus up to 1 s)


class CheckRefused(Exception):
    """A check that cannot be requested; `code` says why (invalid CNPJ, quota, credits)."""

    def __init__(self, code: str, message: str, *, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def checks_settings() -> ChecksSettings:
    settings_row, _created = ChecksSettings.objects.get_or_create(pk=1)
    return settings_row


def cnpj_clean(raw: str) -> str:
    """The canonical CNPJ, or CheckRefused naming the reason (format, length, checksum)."""
    validation = cnpj_id.validate(raw or "")
    if not validation.is_valid:
        raise CheckRefused(f"cnpj_{validation.error}", str(validation.message))
    return validation.cnpj


def tags_clean(tags) -> list[str]:
    if isinstance(tags, str):
        tags = tags.split(",")
    return sorted({str(tag).strip()[:40] for tag in tags or () if str(tag).strip()})[:20]


def _next_check(schedule: str, now: datetime | None = None) -> datetime | None:
    every = SCHEDULE_EVERY.get(schedule)
    return (now or timezone.now()) + every if every else None


@transaction.atomic
def target_add(*, cnpj: str, label: str = "", tags=(), schedule: str | None = None,
               user: User | None = None) -> Target:
    """The target for `cnpj` (created, or updated with whatever was given)."""
    canonical = cnpj_clean(cnpj)
    target, created = Target.objects.select_for_update().get_or_create(
        cnpj=canonical, defaults={"label": label.strip()[:200], "tags": tags_clean(tags), "created_by": user,
                                  "schedule": schedule or Target.Schedule.NONE,
                                  "next_check_at": _next_check(schedule or Target.Schedule.NONE)})
    if not created:
        fields = []
        if label.strip() and label.strip() != target.label:
            target.label = label.strip()[:200]
            fields.append("label")
        if tags and tags_clean(tags) != target.tags:
            target.tags = tags_clean(tags)
            fields.append("tags")
        if schedule is not None and schedule != target.schedule:
            fields += target_schedule_apply(target, schedule)
        if fields:
            target.save(update_fields=fields)
    return target


def target_schedule_apply(target: Target, schedule: str) -> list[str]:
    target.schedule = schedule
    target.next_check_at = _next_check(schedule)
    return ["schedule", "next_check_at"]


def target_update(*, target: Target, label: str, tags, schedule: str) -> Target:
    target.label = label.strip()[:200]
    target.tags = tags_clean(tags)
    fields = ["label", "tags"]
    if schedule != target.schedule:
        fields += target_schedule_apply(target, schedule)
    target.save(update_fields=fields)
    return target


def month_of(moment: datetime | None = None) -> date:
    """The quota's month of `moment` (now by default): its first day, in UTC."""
    return (moment or timezone.now()).astimezone(UTC).date().replace(day=1)


def checks_used_this_month() -> int:
    """Checks requested this month (failed ones do not count): one row, `ChecksMonth`."""
    return ChecksMonth.objects.filter(month=month_of()).values_list("requested", flat=True).first() or 0


def _over_quota(limit: int, used: int, count: int) -> CheckRefused:
    return CheckRefused("quota_exceeded", _(
        "Your plan includes %(limit)s checks a month and %(used)s have been used; %(count)s more would go "
        "over. Upgrade your plan, or wait for next month.") % {"limit": limit, "used": used, "count": count},
        status=402)


def quota_check(organization: Organization, count: int = 1) -> None:
    """Refuse (CheckRefused) when `count` more checks would go over the plan's monthly quota. A look only:
    each check takes its place in the quota when it is written (QUOTA_TAKE_SQL)."""
    limit = entitlements_for(organization).checks_per_month
    if limit is None:
        return
    used = checks_used_this_month()
    if used + count > limit:
        raise _over_quota(limit, used, count)


QUOTA_CONSTRAINT = "checks_month_within_quota"
# A check takes its place in its month's count; over the quota (stored with it), the row's constraint fails the
# statement, so concurrent checks can never go over. `{source}`: the row to insert (VALUES, or a SELECT that
# yields it only when the check is written).
_QUOTA_TAKE = f"""
INSERT INTO {ChecksMonth._meta.db_table} AS counted (month, requested, quota) {{source}}
ON CONFLICT (month) DO UPDATE SET requested = counted.requested + 1, quota = EXCLUDED.quota
"""
QUOTA_TAKE_SQL = _QUOTA_TAKE.format(source="VALUES (%(month)s::date, 1, %(quota)s::integer)")
# A failed or cancelled check gives its place back, in the month it was requested.
QUOTA_GIVE_BACK_SQL = f"""
UPDATE {ChecksMonth._meta.db_table} SET requested = greatest(requested - 1, 0)
WHERE month = (SELECT date_trunc('month', created_at AT TIME ZONE 'UTC')::date FROM {Check._meta.db_table}
               WHERE id = %(check)s)
"""


def _quota_violated(error: IntegrityError) -> bool:
    diag = getattr(error.__cause__, "diag", None)
    return getattr(diag, "constraint_name", None) == QUOTA_CONSTRAINT


def _quota_give_back(check_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(QUOTA_GIVE_BACK_SQL, {"check": check_id})


def _price(kind: str) -> Price:
    price = price_for(kind=Price.Kind.CHECK, key=kind)
    if price is None:
        raise CheckRefused("no_price", _("Checks are not priced yet; ask the administrator."), status=503)
    return price


def _insufficient(error: InsufficientCredits) -> CheckRefused:
    return CheckRefused("insufficient_credits", _(
        "Not enough credits: a check costs %(price)s credits and the balance is %(balance)s. Top up on the "
        "billing page.") % {"price": error.required.normalize(), "balance": error.balance.normalize()}, status=402)


# A check request's reads, in one statement: a check of the target still queued or running (`reuse`), the
# organization's billing account and plan quota, the month's count, the cached price, the checks settings and,
# when the cache may answer (`hit`), the target's latest report (the signals and alerts compare with it).
REQUEST_READ_SQL = f"""
SELECT
    (SELECT id FROM {Check._meta.db_table}
      WHERE target_id = %(target)s::bigint AND %(reuse)s::boolean
        AND status IN ('{Check.Status.PENDING}', '{Check.Status.RUNNING}')
      ORDER BY created_at DESC LIMIT 1),
    account.organization_id IS NOT NULL, plan.checks_per_month,
    coalesce((SELECT requested FROM {ChecksMonth._meta.db_table} WHERE month = %(month)s::date), 0),
    price.id, price.input_per_million, price.output_per_million, price.per_unit,
    settings.id IS NOT NULL, settings.thresholds, settings.alert_emails,
    previous.id, previous.data, previous.risk_level,
    -- Anyone listening? (checks reads the webhooks table here only, so a cache hit stays one read.)
    EXISTS (SELECT 1 FROM {WebhookEndpoint._meta.db_table} WHERE enabled)
FROM (SELECT 1) AS one
LEFT JOIN {BillingAccount._meta.db_table} account ON account.organization_id = %(organization)s::bigint
LEFT JOIN {Plan._meta.db_table} plan ON plan.id = account.plan_id
LEFT JOIN LATERAL (
    SELECT id, input_per_million, output_per_million, per_unit FROM {Price._meta.db_table}
     WHERE kind = '{Price.Kind.CHECK}' AND key = '{CACHED_PRICE}' AND effective_from <= %(now)s::timestamptz
     ORDER BY effective_from DESC LIMIT 1
) price ON true
LEFT JOIN {ChecksSettings._meta.db_table} settings ON settings.id = 1
LEFT JOIN LATERAL (
    SELECT id, data, risk_level FROM {Report._meta.db_table}
     WHERE target_id = %(target)s::bigint AND %(hit)s::boolean ORDER BY created_at DESC, id DESC LIMIT 1
) previous ON true
"""

# A check answered from the cache, written in one statement: its charge (billing.charges.CHARGE_NOW_CTES: the
# balance row locked, the entry inserted only if the balance covers it and its key is new, the balance updated,
# the usage event), then, only when its entry went in, the check (inserted finished), its place in the month's
# quota, the report and alert when the company was found, and the target. A balance that does not cover it
# writes nothing; a quota reached meanwhile fails the statement.
CACHE_HIT_SQL = CHARGE_NOW_CTES + f""",
checked AS (
    INSERT INTO {Check._meta.db_table} (target_id, batch_id, status, source, refresh, cache_hit, provider, runs,
        error, credits, billing_key, requested_by_id, api_key_id, created_at, started_at, finished_at)
    SELECT %(target)s::bigint, %(batch)s::bigint, %(status)s::text, %(source)s::text, false, true,
        %(provider)s::text, 0, '', %(price)s::numeric, %(key)s::text, %(user)s::bigint, %(api_key)s::bigint,
        %(now)s::timestamptz, %(now)s::timestamptz, %(now)s::timestamptz
    FROM entry
    RETURNING id
), quota AS ({_QUOTA_TAKE.format(source="SELECT %(month)s::date, 1, %(quota)s::integer FROM entry")}
), reported AS (
    INSERT INTO {Report._meta.db_table} (target_id, check_run_id, data, signals, risk_level, provider, data_date,
        fetched_at, created_at)
    SELECT %(target)s::bigint, checked.id, %(data)s::jsonb, %(signals)s::jsonb, %(risk_level)s::text,
        %(provider)s::text, %(data_date)s::date, %(fetched_at)s::timestamptz, %(now)s::timestamptz
    FROM checked WHERE %(found)s::boolean
    RETURNING id
), alerted AS (
    INSERT INTO {Alert._meta.db_table} (target_id, report_id, previous_report_id, kinds, summary, created_at)
    SELECT %(target)s::bigint, reported.id, %(previous)s::bigint, %(alert_kinds)s::jsonb, %(alert_summary)s::jsonb,
        %(now)s::timestamptz
    FROM reported WHERE %(alert_kinds)s::jsonb IS NOT NULL
    RETURNING id
), targeted AS (
    UPDATE {Target._meta.db_table} SET status = %(status)s::text, last_checked_at = %(now)s::timestamptz,
        risk_level = CASE WHEN %(found)s::boolean THEN %(risk_level)s::text ELSE risk_level END,
        company_name = CASE WHEN %(found)s::boolean THEN %(company_name)s::text ELSE company_name END
    FROM entry WHERE {Target._meta.db_table}.id = %(target)s::bigint
)
SELECT account.credits, entry.id, checked.id, reported.id, alerted.id, account.credits_low_threshold
FROM account LEFT JOIN entry ON true LEFT JOIN checked ON true LEFT JOIN reported ON true LEFT JOIN alerted ON true
"""


# Prepared once per connection: parsing and planning these two took longer than running them (1.1 of a cache
# hit's 2.9 ms, measured; bench/RESULTS.md).
REQUEST_READ = PreparedStatement("checks_request_read", REQUEST_READ_SQL)
CACHE_HIT = PreparedStatement("checks_cache_hit", CACHE_HIT_SQL)


def _json(value):
    """A jsonb column as read by a raw cursor (Django's psycopg setup returns its text)."""
    return json.loads(value) if isinstance(value, str | bytes) else value


@dataclass(frozen=True)
class RequestFacts:
    """What a check request reads before it writes (REQUEST_READ_SQL)."""

    running_id: int | None
    has_account: bool
    quota: int | None
    used: int
    cached_price: Price | None
    has_settings: bool
    thresholds: dict
    alert_emails: bool
    previous_id: int | None
    previous_data: dict | None
    previous_risk_level: str | None
    webhook_endpoints: bool = True  # whether a `check.completed` event may have someone to go to


def _request_facts(*, organization: Organization, target: Target, reuse: bool, hit: bool, now: datetime,
                   month: date) -> RequestFacts:
    with connection.cursor() as cursor:
        REQUEST_READ.execute(cursor, {"organization": organization.pk, "target": target.pk, "reuse": reuse,
                                      "hit": hit, "now": now, "month": month})
        (running_id, has_account, quota, used, price_id, input_per_million, output_per_million, per_unit,
         has_settings, thresholds, alert_emails, previous_id, previous_data, previous_risk_level,
         webhook_endpoints) = cursor.fetchone()
    price = None if price_id is None else Price(
        pk=price_id, kind=Price.Kind.CHECK, key=CACHED_PRICE, input_per_million=input_per_million,
        output_per_million=output_per_million, per_unit=per_unit)
    return RequestFacts(running_id=running_id, has_account=has_account, quota=quota, used=used, cached_price=price,
                        has_settings=has_settings, thresholds=_json(thresholds) or {},
                        alert_emails=bool(alert_emails), previous_id=previous_id,
                        previous_data=_json(previous_data), previous_risk_level=previous_risk_level,
                        webhook_endpoints=webhook_endpoints)


def check_request(*, organization: Organization, target: Target, source: str = Check.Source.MANUAL,
                  user: User | None = None, api_key_id: int | None = None, refresh: bool = False,
                  batch=None, enqueue: bool = True) -> Check:
    """Ask about `target`: answered now from the cache, or queued. Raises CheckRefused.

    A person (or an API client) asking again while a check of the target is still queued or
    running gets that check back: a double click or a retried request is not billed twice.
    Background checks (BACKGROUND_SOURCES) are left for `checks_feed`, which the caller runs
    once it has requested them all.

    Every check takes its place in the month's quota as it is written. A cache hit costs one read
    (REQUEST_READ_SQL), one Redis call and one write (CACHE_HIT_SQL); any other check is held, then queued."""
    now = timezone.now()
    month = month_of(now)
    facts = _request_facts(organization=organization, target=target, now=now, month=month, hit=not refresh,
                           reuse=source in (Check.Source.MANUAL, Check.Source.API))
    if facts.running_id is not None:
        return Check.objects.get(pk=facts.running_id)
    # An organization without a billing account yet: entitlements_for makes it.
    quota = facts.quota if facts.has_account else entitlements_for(organization).checks_per_month
    if quota is not None and facts.used + 1 > quota:
        raise _over_quota(quota, facts.used, 1)
    billing_key = f"check:{connection.schema_name}:{uuid.uuid4().hex}"
    cached = None if refresh else cache_peek(target.cnpj)
    if cached is not None:
        return _check_from_cache(organization=organization, target=target, lookup=cached, facts=facts, quota=quota,
                                 now=now, key=billing_key, source=source, user=user, api_key_id=api_key_id,
                                 batch=batch)
    price = _price(LOOKUP_PRICE)
    try:
        with transaction.atomic():
            check = Check.objects.create(target=target, source=source, requested_by=user, api_key_id=api_key_id,
                                         refresh=refresh, batch=batch, billing_key=billing_key, created_at=now)
            charge_hold(organization=organization, amount=price.per_unit, key=billing_key,
                           description=_("Check %(cnpj)s") % {"cnpj": target.cnpj_formatted}, user=user)
            with connection.cursor() as cursor:  # after the hold: the balance row is always locked first
                cursor.execute(QUOTA_TAKE_SQL, {"month": month, "quota": quota})
            Target.objects.filter(pk=target.pk).update(status=Check.Status.PENDING)
            if enqueue and source not in BACKGROUND_SOURCES:
                schema = connection.schema_name
                transaction.on_commit(lambda: check_enqueue(check, schema=schema))
    except InsufficientCredits as error:
        raise _insufficient(error) from None
    except IntegrityError as error:
        if not _quota_violated(error):
            raise
        raise _over_quota(quota, quota, 1) from None
    return check


def _check_from_cache(*, organization: Organization, target: Target, lookup: CachedLookup, facts: RequestFacts,
                      quota: int | None, now: datetime, key: str, source: str, user: User | None,
                      api_key_id: int | None, batch) -> Check:
    """A check answered from the cache, billed at the cached price, written finished in one statement."""
    price = facts.cached_price
    if price is None:
        raise CheckRefused("no_price", _("Checks are not priced yet; ask the administrator."), status=503)
    settings_row = None if facts.has_settings else checks_settings()
    result = lookup.result
    found = result.outcome == LOOKUP_FOUND
    status = Check.Status.SUCCEEDED if found else Check.Status.NOT_FOUND
    provider = result.provider or ""
    draft = alert = None
    if found:
        thresholds = settings_row.thresholds if settings_row else facts.thresholds
        draft = report_draft(record=result.record, thresholds=thresholds, previous=facts.previous_data,
                             today=timezone.localdate(now))
        if facts.previous_data is not None and target.schedule != Target.Schedule.NONE:
            alert = alert_terms(previous_data=facts.previous_data, previous_level=facts.previous_risk_level,
                                data=draft.data, level=draft.risk_level)
    metered = Metered.at(price, kind=UsageEvent.Kind.CHECK, key=price.key, request_id=key, credits=price.per_unit,
                         user=user, api_key_id=api_key_id, units=1, occurred_at=now)
    params = {
        **charge_now_params(organization=organization, usage=metered,
                            description=_("Check %(cnpj)s (cached)") % {"cnpj": target.cnpj_formatted}),
        "target": target.pk, "batch": batch.pk if batch is not None else None, "status": status, "source": source,
        "provider": provider, "price": price.per_unit, "api_key": api_key_id, "now": now, "month": month_of(now),
        "quota": quota, "found": found, "data": json.dumps(result.record) if found else None,
        "signals": json.dumps(draft.signals) if draft else None, "risk_level": draft.risk_level if draft else "",
        "data_date": draft.data_date if draft else None, "fetched_at": draft.fetched_at if draft else None,
        "company_name": (result.record.get("razao_social") or "")[:200] if found else "",
        "previous": facts.previous_id, "alert_kinds": json.dumps(alert[0]) if alert else None,
        "alert_summary": json.dumps(alert[1]) if alert else None,
    }
    try:
        # Inside a caller's transaction, a failed statement marks it for rollback (it cannot go on).
        with transaction.mark_for_rollback_on_error(), connection.cursor() as cursor:
            CACHE_HIT.execute(cursor, params)
            row = cursor.fetchone()
    except IntegrityError as error:
        if not _quota_violated(error):
            raise
        raise _over_quota(quota, quota, 1) from None
    balance, entry_id, check_id, _report_id, alert_id, low_threshold = row or (None,) * 6
    if entry_id is None:
        raise _insufficient(InsufficientCredits(balance=balance or Decimal(0), required=price.per_unit))
    # `account.credits` is the balance the movement started from (billing.ledger.MOVE_CTES).
    credits_low_check(organization=organization, before=balance, after=balance - price.per_unit,
                      threshold=low_threshold)
    if alert_id is not None and (settings_row.alert_emails if settings_row else facts.alert_emails):
        from .tasks import alert_email_task

        transaction.on_commit(lambda: alert_email_task.delay(alert_id))
    target.status, target.last_checked_at = status, now
    if found:
        target.risk_level, target.company_name = draft.risk_level, params["company_name"]
    check = Check(pk=check_id, target=target, batch=batch, status=status, source=source, cache_hit=True,
                  provider=provider, credits=price.per_unit, billing_key=key, requested_by=user,
                  api_key_id=api_key_id, created_at=now, started_at=now, finished_at=now)
    if facts.webhook_endpoints:  # the cache hit stays one read and one write when nobody listens
        check_event_emit(organization=organization, check=check, target=target)
        if alert_id is not None:
            alert_event_emit(organization=organization, alert_id=alert_id, target=target, report_id=_report_id,
                             kinds=alert[0], summary=alert[1])
    return check


def check_event_emit(*, organization: Organization, check: Check, target: Target) -> None:
    """A finished check's event for integrators (`check.completed`, or `check.failed`), in its transaction."""
    failed = check.status == Check.Status.FAILED
    event_emit(organization=organization, type="check.failed" if failed else "check.completed", data={
        "check_id": check.pk, "status": check.status, "target_id": target.pk, "cnpj": target.cnpj,
        "label": target.label, "company_name": target.company_name, "risk_level": target.risk_level,
        "cache_hit": check.cache_hit, "credits": str(check.credits), "source": check.source,
        "batch_id": check.batch_id, "error": check.error,
        "finished_at": check.finished_at.isoformat() if check.finished_at else None,
    })


def check_enqueue(check: Check, countdown: float | None = None, *, schema: str | None = None) -> None:
    """Queue the check's run in its organization's schema (`schema`: when called outside it, e.g. on commit)."""
    from .tasks import check_run_task

    with schema_context(schema or connection.schema_name):
        check_run_task.apply_async((check.pk,), countdown=countdown)


def checks_feed() -> int:
    """Queue the organization's background checks waiting to be fed, oldest first, until it has its plan's
    `concurrent_checks` background checks queued or running; returns how many were queued.

    A fed check is pending with `run_after` set (or running); an unfed one is pending without it."""
    organization = current_organization()
    limit = entitlements_for(organization).concurrent_checks
    background = Check.objects.filter(source__in=BACKGROUND_SOURCES)
    schema = connection.schema_name
    with transaction.atomic():
        with connection.cursor() as cursor:  # one feeder at a time per organization: never more than the cap
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"checks.feed:{schema}"])
        in_flight = background.filter(models.Q(status=Check.Status.RUNNING)
                                      | models.Q(status=Check.Status.PENDING, run_after__isnull=False)).count()
        if in_flight >= limit:
            return 0
        ids = list(background.filter(status=Check.Status.PENDING, run_after__isnull=True)
                   .order_by("pk").values_list("pk", flat=True)[:limit - in_flight])
        Check.objects.filter(pk__in=ids).update(run_after=timezone.now())
        transaction.on_commit(lambda: [check_enqueue(Check(pk=pk), schema=schema) for pk in ids])
    return len(ids)


@transaction.atomic
def target_delete(*, target: Target, actor: Actor | None = None) -> None:
    """Delete a target with its checks and reports (audited: `checks.target_deleted`). Refused (409) while a
    check runs: its credit hold is settled or released only by its run."""
    if target.checks.exclude(status__in=Check.FINAL).exists():
        raise CheckRefused("check_in_progress", _("A check of this target is still running: delete it once it "
                                                  "finishes."), status=409)
    audit_record(organization=current_organization(), actor=actor or Actor.system("checks"),
                 action="checks.target_deleted", target=target, target_label=target.cnpj,
                 before={"cnpj": target.cnpj, "label": target.label, "company_name": target.company_name,
                         "checks": target.checks.count()})
    target.delete()


@dataclass(frozen=True)
class RunOutcome:
    status: str
    retry_in: float | None = None  # seconds: run the check again then
    background: bool = False  # a background check (its end makes room for `checks_feed`)


def _slot_lease() -> float:
    """The longest a run can last: waiting for another's lookup of the CNPJ, then every provider timing out."""
    per_provider = settings.CHECKS_CONNECT_TIMEOUT + settings.CHECKS_READ_TIMEOUT
    return settings.CHECKS_LOCK_SECONDS + len(FALLBACK_ORDER) * per_provider + 10


def check_run(check_id: int) -> RunOutcome:
    """Run a queued check once (idempotent: a check that is not pending is left alone), holding one of its
    organization's slots; when they are all taken it stays pending and should run again in `retry_in`."""
    organization = current_organization()
    slot = slot_acquire(kind=SLOT_KIND, organization_id=organization.pk,
                        limit=entitlements_for(organization).concurrent_checks, lease_seconds=_slot_lease())
    if slot is None:
        wait = SLOT_RETRY_SECONDS + random.uniform(0, 1)
        if Check.objects.filter(pk=check_id, status=Check.Status.PENDING).update(
                run_after=timezone.now() + timedelta(seconds=wait)):
            return RunOutcome(Check.Status.PENDING, retry_in=wait)
        return RunOutcome(Check.objects.filter(pk=check_id).values_list("status", flat=True).first() or "")
    try:
        outcome = _check_run(check_id, organization)
    finally:
        slot_release(slot)
    if outcome.background and outcome.status in Check.FINAL:
        checks_feed()
    return outcome


def _check_run(check_id: int, organization: Organization) -> RunOutcome:
    claimed = Check.objects.filter(pk=check_id, status=Check.Status.PENDING).update(
        status=Check.Status.RUNNING, started_at=timezone.now(), run_after=None)
    check = Check.objects.select_related("target").get(pk=check_id)
    background = check.source in BACKGROUND_SOURCES
    if not claimed:
        return RunOutcome(check.status, background=background)
    Target.objects.filter(pk=check.target_id).update(status=Check.Status.RUNNING)
    lookup = cached_lookup(check.target.cnpj, refresh=check.refresh, background=background,
                           waiter=check.billing_key)
    result = lookup.result
    Attempt.objects.bulk_create([
        Attempt(check_run=check, provider=a.provider, outcome=a.outcome, http_status=a.http_status,
                latency_ms=int(a.latency_ms or 0)) for a in result.attempts])
    if result.outcome in (LOOKUP_FOUND, LOOKUP_NOT_FOUND):
        price = _price(CACHED_PRICE if lookup.hit else LOOKUP_PRICE)
        with transaction.atomic():
            _finish(check, lookup, organization=organization, price=price)
        return RunOutcome(check.status, background=background)
    if result.outcome == LOOKUP_THROTTLED:
        wait = max(1, int(result.retry_after or 1))
        _requeue(check, wait, error="")
        logger.info("check %s throttled: every registry is rate-limited for %s s", check.pk, wait)
        return RunOutcome(Check.Status.PENDING, retry_in=wait, background=background)
    runs = check.runs + 1
    if runs < settings.CHECKS_MAX_RUNS:
        wait = max(result.retry_after or 0, 5 * 2 ** (runs - 1)) + random.uniform(0, 2)
        Check.objects.filter(pk=check.pk).update(runs=runs)
        _requeue(check, wait, error=result.error or result.outcome)
        return RunOutcome(Check.Status.PENDING, retry_in=wait, background=background)
    with transaction.atomic():
        check.runs = runs
        _fail(check, result.error or _("The registries could not be reached."), organization=organization)
    return RunOutcome(Check.Status.FAILED, background=background)


def _requeue(check: Check, wait: float, *, error: str) -> None:
    Check.objects.filter(pk=check.pk).update(status=Check.Status.PENDING, error=error[:255],
                                             run_after=timezone.now() + timedelta(seconds=wait))
    Target.objects.filter(pk=check.target_id).update(status=Check.Status.PENDING)


def _fail(check: Check, error: str, *, organization: Organization) -> None:
    charge_release(key=check.billing_key)
    check.status, check.error, check.finished_at = Check.Status.FAILED, error[:255], timezone.now()
    check.save(update_fields=["status", "error", "finished_at", "runs"])
    _quota_give_back(check.pk)
    Target.objects.filter(pk=check.target_id).update(status=check.status, last_checked_at=check.finished_at)
    check.target.status, check.target.last_checked_at = check.status, check.finished_at
    check_event_emit(organization=organization, check=check, target=check.target)
    _batch_finish(check)


def _finish(check: Check, lookup: CachedLookup, *, organization: Organization, price: Price) -> None:
    """Record a run's answer (a report when found), settle its hold at `price`, update the target. In a
    transaction. (A cache hit in the request is `_check_from_cache`.)"""
    result = lookup.result
    check.cache_hit = lookup.hit
    check.provider = result.provider or ""
    check.credits = price.per_unit
    check.finished_at = timezone.now()
    check.status = Check.Status.SUCCEEDED if result.outcome == LOOKUP_FOUND else Check.Status.NOT_FOUND
    user = check.requested_by if check.requested_by_id else None
    charge_settle(organization=organization, key=check.billing_key, actual=price.per_unit, beyond_hold=False,
                  usage=Metered.at(price, kind=UsageEvent.Kind.CHECK, key=price.key, request_id=check.billing_key,
                                   credits=price.per_unit, user=user, api_key_id=check.api_key_id, units=1))
    check.save(update_fields=["cache_hit", "provider", "credits", "finished_at", "status"])
    target = check.target
    target.status, target.last_checked_at = check.status, check.finished_at
    fields = ["status", "last_checked_at"]
    if result.outcome == LOOKUP_FOUND:
        report = report_write(target=target, check=check, record=result.record, provider=result.provider)
        target.risk_level = report.risk_level
        target.company_name = (result.record.get("razao_social") or "")[:200]
        fields += ["risk_level", "company_name"]
    target.save(update_fields=fields)
    check_event_emit(organization=organization, check=check, target=target)
    _batch_finish(check)


def _batch_finish(check: Check) -> None:
    """The last check of a bulk batch to finish finishes the batch (checks.bulk.batch_finish)."""
    if check.batch_id is not None:
        from .bulk import batch_finish

        batch_finish(batch_id=check.batch_id)


def signals_stored(signals) -> list[dict]:
    """Signals as stored on a report: code, severity and evidence, with their texts in every language."""
    stored = []
    for signal in signals:
        texts = {}
        for language in LANGUAGES:
            with translation.override(language):
                texts[language] = {"title": str(signal.title), "explanation": str(signal.explanation)}
        stored.append({"code": signal.code, "severity": str(signal.severity), "evidence": signal.evidence,
                       "texts": texts})
    return stored


def _data_date(record: dict) -> date | None:
    value = (record.get("provenance") or {}).get("source_updated_at")
    return parse_date(value) if value else None


@dataclass(frozen=True)
class ReportDraft:
    """A report's contents before it is written: the record, its signals (as stored) and risk level."""

    data: dict
    signals: list[dict]
    risk_level: str
    data_date: date | None
    fetched_at: datetime


def report_draft(*, record: dict, thresholds: dict, previous: dict | None, today: date) -> ReportDraft:
    """The signals of `record`, evaluated with the organization's `thresholds` (its settings) against the
    target's `previous` report data."""
    signals = signals_evaluate(record, thresholds=SignalThresholds.from_settings(thresholds), today=today,
                               previous=previous)
    fetched = parse_datetime((record.get("provenance") or {}).get("fetched_at") or "") or timezone.now()
    return ReportDraft(data=record, signals=signals_stored(signals), risk_level=str(risk_level(signals)),
                       data_date=_data_date(record), fetched_at=fetched)


def report_write(*, target: Target, check: Check | None, record: dict, provider: str | None,
                 today: date | None = None) -> Report:
    """A new report for `target` (signals evaluated with the organization's thresholds) and, when a
    monitored target changed status, partners or risk level, an alert."""
    previous = target.reports.order_by("-created_at", "-id").first()
    draft = report_draft(record=record, thresholds=checks_settings().thresholds, today=today or timezone.localdate(),
                         previous=previous.data if previous else None)
    report = Report.objects.create(target=target, check_run=check, data=draft.data, signals=draft.signals,
                                   risk_level=draft.risk_level, provider=provider or "", data_date=draft.data_date,
                                   fetched_at=draft.fetched_at)
    if previous is not None and target.schedule != Target.Schedule.NONE:
        alert_raise(target=target, report=report, previous=previous)
    return report


def alert_terms(*, previous_data: dict, previous_level: str, data: dict, level: str) -> tuple[list[str], dict] | None:
    """An alert's kinds and summary when a report differs from the previous one in status, partners or risk
    level; None when it does not."""
    diff = report_diff(previous_data, data)
    kinds = []
    if diff.status_changed:
        kinds.append(Alert.Kind.STATUS)
    if diff.partners_changed:
        kinds.append(Alert.Kind.PARTNERS)
    if risk_level_change(previous_level, level) is not None:
        kinds.append(Alert.Kind.RISK)
    if not kinds:
        return None
    return [str(k) for k in kinds], {"diff": diff.as_dict(), "risk": [previous_level, level]}


def alert_raise(*, target: Target, report: Report, previous: Report) -> Alert | None:
    terms = alert_terms(previous_data=previous.data, previous_level=previous.risk_level, data=report.data,
                        level=report.risk_level)
    if terms is None:
        return None
    alert = Alert.objects.create(target=target, report=report, previous_report=previous, kinds=terms[0],
                                 summary=terms[1])
    alert_event_emit(organization=current_organization(), alert_id=alert.pk, target=target, report_id=report.pk,
                     kinds=terms[0], summary=terms[1])
    if checks_settings().alert_emails:
        from .tasks import alert_email_task

        transaction.on_commit(lambda: alert_email_task.delay(alert.pk))
    return alert


def alert_event_emit(*, organization: Organization, alert_id: int, target: Target, report_id: int | None,
                     kinds: list[str], summary: dict) -> None:
    """A monitoring alert's event for integrators (`alert.created`), in its transaction."""
    event_emit(organization=organization, type="alert.created", data={
        "alert_id": alert_id, "target_id": target.pk, "cnpj": target.cnpj, "label": target.label,
        "report_id": report_id, "kinds": kinds, "summary": summary})


def check_cancel(check: Check) -> bool:
    """Cancel a check still waiting in the queue: it fails as cancelled and its hold goes back. A check a
    worker already took runs to its end. Returns whether it was cancelled."""
    with transaction.atomic():
        if not Check.objects.filter(pk=check.pk, status=Check.Status.PENDING).update(
                status=Check.Status.FAILED, error=_("Cancelled"), finished_at=timezone.now()):
            return False
        charge_release(key=check.billing_key)
        _quota_give_back(check.pk)
    return True


def alerts_mark_read(*, alert_id: int | None = None) -> int:
    """Mark one alert (or, with None, every unread one) as read; returns how many changed."""
    alerts = Alert.objects.filter(read_at__isnull=True)
    if alert_id is not None:
        alerts = alerts.filter(pk=alert_id)
    return alerts.update(read_at=timezone.now())


@transaction.atomic
def checks_settings_update(*, organization: Organization, actor, retention_days: int, alert_emails: bool,
                           thresholds: dict) -> ChecksSettings:
    """Save the organization's checks settings, with an audit event (before and after)."""
    from tenants.audit.services import audit_record

    row = checks_settings()
    before = {"retention_days": row.retention_days, "alert_emails": row.alert_emails, "thresholds": row.thresholds}
    row.retention_days, row.alert_emails, row.thresholds = retention_days, alert_emails, thresholds
    row.save(update_fields=["retention_days", "alert_emails", "thresholds", "updated_at"])
    audit_record(organization=organization, actor=actor, action="checks.settings_changed", target=row,
                 before=before, after={"retention_days": retention_days, "alert_emails": alert_emails,
                                       "thresholds": thresholds})
    return row


def checks_due(now: datetime | None = None):
    now = now or timezone.now()
    return Target.objects.exclude(schedule=Target.Schedule.NONE).filter(next_check_at__lte=now)


def monitoring_run(*, organization: Organization, now: datetime | None = None) -> int:
    """Request a fresh check of every monitored target that is due, fed to the queue by `checks_feed`;
    returns how many were requested.

    Stops at the plan's monthly quota or the balance (the rest stay due for the next run)."""
    now = now or timezone.now()
    queued = 0
    for target in checks_due(now).order_by("next_check_at")[:1000]:
        try:
            check_request(organization=organization, target=target, source=Check.Source.MONITOR, refresh=True)
        except CheckRefused as refused:
            logger.info("monitoring stopped for %s: %s", organization.slug, refused.code)
            break
        Target.objects.filter(pk=target.pk).update(next_check_at=_next_check(target.schedule, now))
        queued += 1
    if queued:
        checks_feed()
    return queued


def checks_reap(*, older_than: timedelta = timedelta(minutes=10)) -> int:
    """Checks whose task was lost go back to the queue: left running by a worker that died, or still
    pending well after they were due (background checks never fed are `checks_feed`'s). Returns how many."""
    cutoff = timezone.now() - older_than
    running = Check.objects.filter(status=Check.Status.RUNNING, started_at__lt=cutoff)
    for check_id in running.values_list("pk", flat=True):
        Check.objects.filter(pk=check_id, status=Check.Status.RUNNING).update(status=Check.Status.PENDING)
    lost = (Check.objects.filter(status=Check.Status.PENDING, created_at__lt=cutoff)
            .filter(models.Q(run_after__isnull=True) | models.Q(run_after__lt=cutoff))
            .exclude(source__in=BACKGROUND_SOURCES, run_after__isnull=True))
    count = 0
    for check_id in lost.values_list("pk", flat=True):
        check_enqueue(Check(pk=check_id))
        count += 1
    return count + checks_feed()


def reports_purge(*, now: datetime | None = None) -> int:
    """Delete reports older than the organization's retention (each target keeps its latest), with the
    checks and attempts of that age; returns how many reports went."""
    days = checks_settings().retention_days
    cutoff = (now or timezone.now()) - timedelta(days=days)
    latest = Report.objects.order_by("target_id", "-created_at", "-id").distinct("target_id").values("pk")
    doomed = Report.objects.filter(created_at__lt=cutoff).exclude(pk__in=latest)
    _total, deleted = doomed.delete()
    Check.objects.filter(created_at__lt=cutoff, status__in=Check.FINAL, report__isnull=True).delete()
    Alert.objects.filter(created_at__lt=cutoff).delete()
    return deleted.get(Report._meta.label, 0)


def check_cost_preview() -> dict[str, Decimal]:
    return {"lookup": _price(LOOKUP_PRICE).per_unit, "cached": _price(CACHED_PRICE).per_unit}
