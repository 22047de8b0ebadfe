"""Plans and billing accounts."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from django.db import transaction
from django.utils.translation import gettext_noop

from tenants.models import Organization

from .models import BillingAccount, Plan, Price

FREE_PLAN = "free"

# Seeded plans. Staff edit them in the admin afterwards; seeding never overwrites edits.
# Seeded descriptions are in the translation catalog; edited ones show as written.
PLAN_SEEDS: list[dict] = [
    {"code": "free", "name": "Free", "description": gettext_noop("Try Prumo with your team."), "monthly_price_cents": 0,
     "model_tiers": ["basic"], "requests_per_minute": 10, "tokens_per_minute": 20_000,
     "monthly_credits": Decimal("100"), "seats": 3, "checks_per_month": 20, "max_upload_mb": 5,
     "api_access": False, "webhooks": False, "audit_retention_days": 7, "sort_order": 0},
    {"code": "starter", "name": "Starter", "description": gettext_noop("For small teams getting real work done."),
     "monthly_price_cents": 1900, "model_tiers": ["basic", "standard"], "requests_per_minute": 60,
     "tokens_per_minute": 100_000, "monthly_credits": Decimal("2000"), "seats": 5, "checks_per_month": 200,
     "max_upload_mb": 20, "api_access": True, "webhooks": False, "audit_retention_days": 30, "sort_order": 1},
    {"code": "pro", "name": "Pro", "description": gettext_noop("Every model, the API and webhooks."),
     "monthly_price_cents": 4900,
     "model_tiers": ["basic", "standard", "premium"], "requests_per_minute": 300, "tokens_per_minute": 500_000,
     "monthly_credits": Decimal("10000"), "seats": 20, "checks_per_month": 2000, "max_upload_mb": 50,
     "api_access": True, "webhooks": True, "audit_retention_days": 90, "metered_overage": True, "sort_order": 2},
    {"code": "business", "name": "Business", "description": gettext_noop("Higher limits and a year of audit history."),
     "monthly_price_cents": 19900, "model_tiers": ["basic", "standard", "premium"], "requests_per_minute": 1000,
     "tokens_per_minute": 2_000_000, "monthly_credits": Decimal("50000"), "seats": 100, "checks_per_month": 20000,
     "max_upload_mb": 100, "api_access": True, "webhooks": True, "audit_retention_days": 365,
     "metered_overage": True, "sort_order": 3},
    {"code": "enterprise", "name": "Enterprise", "description": gettext_noop("Custom limits, contracts and support."),
     "monthly_price_cents": 0, "model_tiers": ["basic", "standard", "premium"], "requests_per_minute": 5000,
     "tokens_per_minute": 10_000_000, "monthly_credits": Decimal("250000"), "seats": None,
     "checks_per_month": None, "max_upload_mb": 500, "api_access": True, "webhooks": True,
     "audit_retention_days": 730, "metered_overage": True, "sort_order": 4},
]

# Fair-sharing limits per seeded plan (kept apart from PLAN_SEEDS: migration 0002 seeds those with the
# Plan of its time, which has no such fields). Answers and checks at once; chat sends per member a minute.
PLAN_FAIR_LIMITS: dict[str, dict] = {
    "free": {"concurrent_answers": 2, "concurrent_checks": 2, "messages_per_minute": 10},
    "starter": {"concurrent_answers": 4, "concurrent_checks": 4, "messages_per_minute": 20},
    "pro": {"concurrent_answers": 8, "concurrent_checks": 8, "messages_per_minute": 30},
    "business": {"concurrent_answers": 16, "concurrent_checks": 16, "messages_per_minute": 60},
    "enterprise": {"concurrent_answers": 32, "concurrent_checks": 32, "messages_per_minute": 120},
}

# Studio jobs (images, speech, transcriptions, video) an organization runs at once, per seeded plan (kept apart
# from PLAN_FAIR_LIMITS for the same reason: migration 0006 seeds those with the Plan of its time).
PLAN_STUDIO_LIMITS: dict[str, dict] = {
    "free": {"concurrent_jobs": 1}, "starter": {"concurrent_jobs": 2}, "pro": {"concurrent_jobs": 3},
    "business": {"concurrent_jobs": 5}, "enterprise": {"concurrent_jobs": 10},
}

# Checks are priced per check, by kind: a registry lookup, or an answer from the shared cache.
CHECK_PRICES = {"cnpj": Decimal("5"), "cnpj_cached": Decimal("1")}


def prices_seed(*, kind: str, prices: dict[str, Decimal], price_class=Price) -> int:
    """Add a per-unit price of `kind` for each key of `prices` that has none. Returns how many were added."""
    added = 0
    for key, per_unit in prices.items():
        if not price_class.objects.filter(kind=kind, key=key).exists():
            price_class.objects.create(kind=kind, key=key, per_unit=per_unit,
                                       effective_from=datetime(2026, 1, 1, tzinfo=UTC))
            added += 1
    return added


def check_prices_seed(*, price_class=Price) -> int:
    """Add a price for each check kind that has none. Returns how many were added."""
    return prices_seed(kind="check", prices=CHECK_PRICES, price_class=price_class)


@transaction.atomic
def plans_seed() -> int:
    """Create the standard plans that do not exist yet. Returns how many were created."""
    created = 0
    for seed in PLAN_SEEDS:
        _plan, was_created = Plan.objects.get_or_create(
            code=seed["code"], defaults={**seed, **PLAN_FAIR_LIMITS.get(seed["code"], {}),
                      **PLAN_STUDIO_LIMITS.get(seed["code"], {})})
        created += was_created
    return created


def billing_account_ensure(organization: Organization) -> BillingAccount:
    """The organization's billing account, created on the Free plan the first time."""
    account = BillingAccount.objects.filter(pk=organization.pk).first()
    if account is not None:
        return account
    plans_seed()
    account, _created = BillingAccount.objects.get_or_create(
        organization=organization, defaults={"plan": Plan.objects.get(code=FREE_PLAN)}
    )
    return account


def grant_period(now=None) -> str:
    from django.utils import timezone

    return (now or timezone.now()).strftime("%Y-%m")


def _grant_keys(organization: Organization, period: str) -> tuple[str, str]:
    # The period's grant, and the prefix of its upgrade top-ups (one per plan code).
    return f"grant:{organization.pk}:{period}", f"grant-upgrade:{organization.pk}:{period}:"


@transaction.atomic
def credits_grant_monthly(organization: Organization, *, period: str | None = None):
    """This period's plan credits: granted once per organization and period, whatever the plan's amount.

    A later call in the same period tops the grant up to the current plan's credits (an
    upgrade gets the difference at once, audited) and grants nothing after a downgrade.
    Returns the Movement made, or None when nothing was owed.
    """
    from django.db.models import Q, Sum

    from tenants.audit.services import Actor, audit_record

    from .ledger import credit_grant
    from .models import CreditEntry

    period = period or grant_period()
    billing_account_ensure(organization)
    # Under the account's row lock, so two concurrent calls never both top up one period.
    account = (BillingAccount.objects.select_for_update(of=("self",)).select_related("plan")
               .get(pk=organization.pk))
    plan = account.plan
    key, upgrade_prefix = _grant_keys(organization, period)
    entries = CreditEntry.objects.filter(organization=organization, kind=CreditEntry.Kind.GRANT)
    if not entries.filter(idempotency_key=key).exists():
        if plan.monthly_credits <= 0:
            return None
        return credit_grant(organization=organization, amount=plan.monthly_credits, key=key,
                            description=f"{plan.name} plan credits for {period}")
    granted = entries.filter(Q(idempotency_key=key) | Q(idempotency_key__startswith=upgrade_prefix)).aggregate(
        total=Sum("amount"))["total"]
    upgrade_key = f"{upgrade_prefix}{plan.code}"
    missing = plan.monthly_credits - granted
    # One top-up per plan and period: staff editing a plan's credits mid-month does not grant again.
    if missing <= 0 or entries.filter(idempotency_key=upgrade_key).exists():
        return None
    movement = credit_grant(organization=organization, amount=missing, key=upgrade_key,
                            description=f"{plan.name} plan credits for {period} (upgrade)")
    audit_record(organization=organization, actor=Actor.system("billing"), action="credits.upgrade_granted",
                 target=movement.entry, after={"plan": plan.code, "period": period, "credits": str(missing),
                                               "granted_before": str(granted)})
    return movement


def credits_low_threshold_set(*, organization: Organization, threshold: Decimal | None, actor) -> BillingAccount:
    """Set (None: clear) the balance under which a `credits.low` event is sent; audited."""
    from tenants.audit.services import audit_record

    if threshold is not None and threshold < 0:
        raise ValueError("the threshold cannot be negative")
    billing_account_ensure(organization)
    with transaction.atomic():
        account = BillingAccount.objects.select_for_update().get(pk=organization.pk)
        before = account.credits_low_threshold
        if before == threshold:
            return account
        account.credits_low_threshold = threshold
        account.save(update_fields=["credits_low_threshold", "updated_at"])
        audit_record(organization=organization, actor=actor, action="billing.credits_low_threshold_set",
                     target=account, before={"threshold": None if before is None else str(before)},
                     after={"threshold": None if threshold is None else str(threshold)})
    return account
