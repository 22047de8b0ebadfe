"""Reads for plans, entitlements, prices and the ledger."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import QuerySet, Sum
from django.utils import timezone

from tenants.models import Organization

from .models import ZERO, BillingAccount, CreditEntry, DailyUsage, Plan, Price


@dataclass(frozen=True)
class Entitlements:
    """What an organization may do. Features gate on these, never on a plan's name."""

    plan_code: str
    model_tiers: frozenset[str]
    requests_per_minute: int
    tokens_per_minute: int
    monthly_credits: Decimal
    seats: int | None  # None: unlimited
    checks_per_month: int | None
    max_upload_mb: int
    api_access: bool
    webhooks: bool
    audit_retention_days: int
    metered_overage: bool
    concurrent_answers: int = 4  # answers generated at once; more wait their turn
    concurrent_checks: int = 4  # checks run at once (a bulk batch feeds this many at a time)
    messages_per_minute: int = 20  # chat sends per member and minute in the web UI
    concurrent_jobs: int = 2  # Studio jobs run at once; more wait their turn

    @classmethod
    def from_plan(cls, plan: Plan) -> Entitlements:
        return cls(
            plan_code=plan.code, model_tiers=frozenset(plan.model_tiers),
            requests_per_minute=plan.requests_per_minute, tokens_per_minute=plan.tokens_per_minute,
            monthly_credits=plan.monthly_credits, seats=plan.seats, checks_per_month=plan.checks_per_month,
            max_upload_mb=plan.max_upload_mb, api_access=plan.api_access, webhooks=plan.webhooks,
            audit_retention_days=plan.audit_retention_days, metered_overage=plan.metered_overage,
            concurrent_answers=plan.concurrent_answers, concurrent_checks=plan.concurrent_checks,
            messages_per_minute=plan.messages_per_minute, concurrent_jobs=plan.concurrent_jobs,
        )

    def allows_model_tier(self, tier: str) -> bool:
        return tier in self.model_tiers


def billing_account_get(*, organization: Organization) -> BillingAccount:
    from .services import billing_account_ensure

    return (BillingAccount.objects.select_related("plan").filter(pk=organization.pk).first()
            or billing_account_ensure(organization))


def entitlements_for(organization: Organization) -> Entitlements:
    return Entitlements.from_plan(billing_account_get(organization=organization).plan)


def plan_list_public() -> QuerySet[Plan]:
    return Plan.objects.filter(is_public=True)


def price_for(*, kind: str, key: str, at: datetime | None = None) -> Price | None:
    """The price in force at `at` (now by default): the latest row effective by then."""
    return (Price.objects.filter(kind=kind, key=key, effective_from__lte=at or timezone.now())
            .order_by("-effective_from").first())


def credit_entry_list(*, organization: Organization) -> QuerySet[CreditEntry]:
    return CreditEntry.objects.filter(organization=organization).select_related("created_by")


def ledger_sum(*, organization: Organization) -> Decimal:
    return CreditEntry.objects.filter(organization=organization).aggregate(total=Sum("amount"))["total"] or ZERO


@dataclass(frozen=True)
class UsageReport:
    """Usage of one organization over a date range, from the daily rollups."""

    start: date
    end: date
    by_day: list[dict]  # {"day", "credits", "events"} for every day of the range, zeros included
    by_key: list[dict]  # {"kind", "key", "credits", "events", "input_tokens", "output_tokens", "units"}
    by_member: list[dict]  # {"user_id", "email", "credits", "events", "input_tokens", "output_tokens", "units"}
    total_credits: Decimal
    rows: QuerySet[DailyUsage]  # the rollup rows themselves (CSV export)


def usage_per_day(*, organization: Organization, start: date, end: date) -> list[dict]:
    """{"day", "credits", "events"} for every day from `start` to `end`, zeros included, from the rollups."""
    rows = DailyUsage.objects.filter(organization=organization, day__gte=start, day__lte=end)
    per_day = {row["day"]: row for row in rows.values("day").annotate(credits=Sum("credits"), events=Sum("events"))}
    by_day = []
    day = start
    while day <= end:
        found = per_day.get(day, {})
        by_day.append({"day": day, "credits": found.get("credits") or ZERO, "events": found.get("events") or 0})
        day += timedelta(days=1)
    return by_day


def usage_report(*, organization: Organization, start: date, end: date) -> UsageReport:
    rows = DailyUsage.objects.filter(organization=organization, day__gte=start, day__lte=end)
    by_day = usage_per_day(organization=organization, start=start, end=end)
    totals = {"credits": Sum("credits"), "events": Sum("events"), "input_tokens": Sum("input_tokens"),
              "output_tokens": Sum("output_tokens"), "units": Sum("units")}
    by_key = list(rows.values("kind", "key").annotate(**totals).order_by("-credits", "key"))
    by_member = list(rows.values("user_id", "user__email").annotate(**totals).order_by("-credits"))
    for row in by_member:
        row["email"] = row.pop("user__email") or ""
    return UsageReport(start=start, end=end, by_day=by_day, by_key=by_key, by_member=by_member,
                       total_credits=sum((row["credits"] for row in by_day), ZERO),
                       rows=rows.select_related("user").order_by("day", "kind", "key", "user_id"))


def usage_top_organizations(*, start: date, end: date, limit: int = 20) -> QuerySet:
    """Staff: organizations by credits used in the range, from the rollups."""
    return (DailyUsage.objects.filter(day__gte=start, day__lte=end)
            .values("organization__name", "organization__slug")
            .annotate(credits=Sum("credits"), events=Sum("events")).order_by("-credits")[:limit])


def usage_totals_per_day(*, start: date, end: date) -> QuerySet:
    """Staff: credits and events per day across all organizations, from the rollups."""
    return (DailyUsage.objects.filter(day__gte=start, day__lte=end).values("day")
            .annotate(credits=Sum("credits"), events=Sum("events")).order_by("day"))
