"""Checks: add targets, request and run checks, write reports and alerts, bill them.

A check answered from the shared cache finishes inside the request, billed at the cached
price. Any other check holds the lookup price, is queued (`checks.tasks.check_run_task`) and
runs through `check_run`, whose transitions are the state machine of `Check`:

    pending → running → succeeded | not_found | failed
                     ↘ pending (every registry rate-limited: run again after their wait;
                                a transient failure: run again with backoff, CHECKS_MAX_RUNS times)

Found and not-found are billed (the lookup price, or the cached price when another request
answered meanwhile); failed checks release their hold. Each organization's plan sets how many
checks a month it may request.

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

import logging
import random
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone, translation
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.translation import gettext as _
from django_tenants.utils import schema_context

from accounts.models import User
from billing.ledger import InsufficientCredits, credit_debit, credit_release, credit_reserve, credit_settle
from billing.models import CreditReservation, Price, UsageEvent
from billing.ratelimits import slot_acquire, slot_release
from billing.selectors import entitlements_for, price_for
from billing.usage import usage_record
from tenants.models import Organization

from . import cnpj as cnpj_id
from .cache import CachedLookup, cache_peek, cached_lookup
from .diff import report_diff, risk_level_change
from .models import Alert, Attempt, Check, ChecksSettings, Report, Target
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


def current_organization() -> Organization:
    """The organization whose schema this runs in (tasks and `schema_context` only know the schema)."""
    tenant = getattr(connection, "tenant", None)
    if isinstance(tenant, Organization):
        return tenant
    return Organization.objects.get(schema_name=connection.schema_name)


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


def month_start(now: datetime | None = None) -> datetime:
    now = timezone.localtime(now or timezone.now())
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def checks_used_this_month() -> int:
    """Checks requested this month (failed ones do not count)."""
    return Check.objects.filter(created_at__gte=month_start()).exclude(status=Check.Status.FAILED).count()


def quota_check(organization: Organization, count: int = 1) -> None:
    limit = entitlements_for(organization).checks_per_month
    if limit is None:
        return
    used = checks_used_this_month()
    if used + count > limit:
        raise CheckRefused("quota_exceeded", _(
            "Your plan includes %(limit)s checks a month and %(used)s have been used; %(count)s more would go "
            "over. Upgrade your plan, or wait for next month.") % {"limit": limit, "used": used, "count": count},
            status=402)


def _price(kind: str) -> Price:
    price = price_for(kind=Price.Kind.CHECK, key=kind)
    if price is None:
        raise CheckRefused("no_price", _("Checks are not priced yet; ask the administrator."), status=503)
    return price


def _insufficient(error: InsufficientCredits) -> CheckRefused:
    return CheckRefused("insufficient_credits", _(
        "Not enough credits: a check costs %(price)s credits and the balance is %(balance)s. Top up on the "
        "billing page.") % {"price": error.required.normalize(), "balance": error.balance.normalize()}, status=402)


def check_request(*, organization: Organization, target: Target, source: str = Check.Source.MANUAL,
                  user: User | None = None, api_key_id: int | None = None, refresh: bool = False,
                  batch=None, enqueue: bool = True) -> Check:
    """Ask about `target`: answered now from the cache, or queued. Raises CheckRefused.

    A person (or an API client) asking again while a check of the target is still queued or
    running gets that check back: a double click or a retried request is not billed twice.
    Background checks (BACKGROUND_SOURCES) are left for `checks_feed`, which the caller runs
    once it has requested them all."""
    if source in (Check.Source.MANUAL, Check.Source.API):
        running = target.checks.exclude(status__in=Check.FINAL).order_by("-created_at").first()
        if running is not None:
            return running
    quota_check(organization)
    billing_key = f"check:{connection.schema_name}:{uuid.uuid4().hex}"
    fields = {"target": target, "source": source, "requested_by": user, "api_key_id": api_key_id,
              "refresh": refresh, "batch": batch, "billing_key": billing_key}
    cached = None if refresh else cache_peek(target.cnpj)
    if cached is not None:
        price = _price(CACHED_PRICE)
        try:
            with transaction.atomic():
                check = Check(status=Check.Status.RUNNING, started_at=timezone.now(), **fields)
                _finish(check, cached, organization=organization, price=price, settle=False)
                # Last: the organization's balance row stays locked only from here to the commit.
                credit_debit(organization=organization, amount=price.per_unit, key=billing_key,
                             description=_("Check %(cnpj)s (cached)") % {"cnpj": target.cnpj_formatted}, user=user)
        except InsufficientCredits as error:
            raise _insufficient(error) from None
        return check
    price = _price(LOOKUP_PRICE)
    try:
        with transaction.atomic():
            check = Check.objects.create(**fields)
            credit_reserve(organization=organization, amount=price.per_unit, key=billing_key,
                           description=_("Check %(cnpj)s") % {"cnpj": target.cnpj_formatted}, user=user)
            Target.objects.filter(pk=target.pk).update(status=Check.Status.PENDING)
            if enqueue and source not in BACKGROUND_SOURCES:
                schema = connection.schema_name
                transaction.on_commit(lambda: check_enqueue(check, schema=schema))
    except InsufficientCredits as error:
        raise _insufficient(error) from None
    return check


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


def target_delete(*, target: Target) -> None:
    """Delete a target with its checks and reports. Refused (409) while a check runs: its credit hold is
    settled or released only by its run."""
    if target.checks.exclude(status__in=Check.FINAL).exists():
        raise CheckRefused("check_in_progress", _("A check of this target is still running: delete it once it "
                                                  "finishes."), status=409)
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
            _finish(check, lookup, organization=organization, price=price, settle=True)
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
        _fail(check, result.error or _("The registries could not be reached."))
    return RunOutcome(Check.Status.FAILED, background=background)


def _requeue(check: Check, wait: float, *, error: str) -> None:
    Check.objects.filter(pk=check.pk).update(status=Check.Status.PENDING, error=error[:255],
                                             run_after=timezone.now() + timedelta(seconds=wait))
    Target.objects.filter(pk=check.target_id).update(status=Check.Status.PENDING)


def _fail(check: Check, error: str) -> None:
    reservation = CreditReservation.objects.filter(key=check.billing_key).first()
    if reservation is not None:
        credit_release(reservation=reservation)
    check.status, check.error, check.finished_at = Check.Status.FAILED, error[:255], timezone.now()
    check.save(update_fields=["status", "error", "finished_at", "runs"])
    Target.objects.filter(pk=check.target_id).update(status=check.status, last_checked_at=check.finished_at)


def _finish(check: Check, lookup: CachedLookup, *, organization: Organization, price: Price, settle: bool) -> None:
    """Record the answer (a report when found), bill it at `price`, update the target. In a transaction.
    A check not saved yet (a cache hit) is inserted finished."""
    result = lookup.result
    check.cache_hit = lookup.hit
    check.provider = result.provider or ""
    check.credits = price.per_unit
    check.finished_at = timezone.now()
    check.status = Check.Status.SUCCEEDED if result.outcome == LOOKUP_FOUND else Check.Status.NOT_FOUND
    if settle:
        reservation = CreditReservation.objects.get(key=check.billing_key)
        credit_settle(reservation=reservation, actual=min(price.per_unit, reservation.amount))
    user = check.requested_by if check.requested_by_id else None
    usage_record(organization=organization, kind=UsageEvent.Kind.CHECK, key=price.key, request_id=check.billing_key,
                 credits=price.per_unit, price=price, user=user, api_key_id=check.api_key_id, units=1)
    if check.pk is None:  # answered from the cache: written once, finished
        check.save()
    else:
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


def report_write(*, target: Target, check: Check | None, record: dict, provider: str | None,
                 today: date | None = None) -> Report:
    """A new report for `target` (signals evaluated with the organization's thresholds) and, when a
    monitored target changed status, partners or risk level, an alert."""
    thresholds = SignalThresholds.from_settings(checks_settings().thresholds)
    previous = target.reports.order_by("-created_at", "-id").first()
    signals = signals_evaluate(record, thresholds=thresholds, today=today or timezone.localdate(),
                               previous=previous.data if previous else None)
    level = str(risk_level(signals))
    fetched = parse_datetime((record.get("provenance") or {}).get("fetched_at") or "") or timezone.now()
    report = Report.objects.create(target=target, check_run=check, data=record, signals=signals_stored(signals),
                                   risk_level=level, provider=provider or "", data_date=_data_date(record),
                                   fetched_at=fetched)
    if previous is not None and target.schedule != Target.Schedule.NONE:
        alert_raise(target=target, report=report, previous=previous)
    return report


def alert_raise(*, target: Target, report: Report, previous: Report) -> Alert | None:
    diff = report_diff(previous.data, report.data)
    kinds = []
    if diff.status_changed:
        kinds.append(Alert.Kind.STATUS)
    if diff.partners_changed:
        kinds.append(Alert.Kind.PARTNERS)
    if risk_level_change(previous.risk_level, report.risk_level) is not None:
        kinds.append(Alert.Kind.RISK)
    if not kinds:
        return None
    alert = Alert.objects.create(target=target, report=report, previous_report=previous, kinds=[str(k) for k in kinds],
                                 summary={"diff": diff.as_dict(), "risk": [previous.risk_level, report.risk_level]})
    if checks_settings().alert_emails:
        from .tasks import alert_email_task

        transaction.on_commit(lambda: alert_email_task.delay(alert.pk))
    return alert


def check_cancel(check: Check) -> bool:
    """Cancel a check still waiting in the queue: it fails as cancelled and its hold goes back. A check a
    worker already took runs to its end. Returns whether it was cancelled."""
    with transaction.atomic():
        if not Check.objects.filter(pk=check.pk, status=Check.Status.PENDING).update(
                status=Check.Status.FAILED, error=_("Cancelled"), finished_at=timezone.now()):
            return False
        reservation = CreditReservation.objects.filter(key=check.billing_key).first()
        if reservation is not None:
            credit_release(reservation=reservation)
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
