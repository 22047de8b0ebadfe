"""Reads for plans, entitlements, prices and the ledger."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import QuerySet, Sum
from django.utils import timezone

from tenants.models import Organization

from .models import ZERO, BillingAccount, CreditEntry, Plan, Price


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

    @classmethod
    def from_plan(cls, plan: Plan) -> Entitlements:
        return cls(
            plan_code=plan.code, model_tiers=frozenset(plan.model_tiers),
            requests_per_minute=plan.requests_per_minute, tokens_per_minute=plan.tokens_per_minute,
            monthly_credits=plan.monthly_credits, seats=plan.seats, checks_per_month=plan.checks_per_month,
            max_upload_mb=plan.max_upload_mb, api_access=plan.api_access, webhooks=plan.webhooks,
            audit_retention_days=plan.audit_retention_days, metered_overage=plan.metered_overage,
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
