"""The organization's dashboard: money, plan limits, recent work and what to do next, in a bounded number of
queries whatever the organization holds.

It is the one tenants page that reads every product (chat, checks, billing): those imports point up the
layering on purpose, like the trial claim in tenants.views, and stay inside the function so that importing
tenants never imports the products.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from django.utils import timezone

from accounts.models import User

from .models import Membership, Organization, Role
from .selectors import SeatUsage, api_key_active_count, audit_recent_list, seat_usage

SPEND_DAYS = 30
RECENT = 5


@dataclass(frozen=True)
class SpendDay:
    day: date
    credits: Decimal


@dataclass(frozen=True)
class DashboardSummary:
    balance: Decimal
    spent_this_month: Decimal
    spend: list[SpendDay]  # the last SPEND_DAYS days, oldest first, zeros included
    plan_name: str
    monthly_credits: Decimal
    messages_per_minute: int  # per member: a rate, so there is no "used" to show
    seats: SeatUsage
    checks_used: int  # this month
    checks_quota: int | None  # None: unlimited
    threads: list  # chat.models.Thread, the member's own
    checks: list  # checks.models.Check, with their target
    alerts_unread: int
    audit_events: list  # tenants.audit.models.AuditEvent, newest first
    api_keys_active: int | None  # None: not shown (members and viewers)

    @property
    def spent_last_days(self) -> Decimal:
        return sum((day.credits for day in self.spend), Decimal(0))

    @property
    def spend_start(self) -> date:
        return self.spend[0].day

    @property
    def spend_end(self) -> date:
        return self.spend[-1].day

    @property
    def busiest_day(self) -> SpendDay | None:
        busiest = max(self.spend, key=lambda day: day.credits, default=None)
        return busiest if busiest is not None and busiest.credits else None

    @property
    def checks_full(self) -> bool:
        return self.checks_quota is not None and self.checks_used >= self.checks_quota

    @property
    def shows_admin(self) -> bool:
        return self.api_keys_active is not None


def dashboard_summary(*, organization: Organization, membership: Membership, user: User) -> DashboardSummary:
    """What the dashboard shows `user`, in the current organization's schema."""
    from billing.selectors import Entitlements, billing_account_get, usage_per_day
    from chat.selectors import thread_recent_list
    from checks.selectors import alert_unread_count, check_latest_list
    from checks.services import checks_used_this_month, month_of

    account = billing_account_get(organization=organization)
    entitlements = Entitlements.from_plan(account.plan)
    today = timezone.localdate()  # UTC, like the rollups' days and the checks' month
    month_start = month_of()
    first_day = min(month_start, today - timedelta(days=SPEND_DAYS - 1))
    days = [SpendDay(day=row["day"], credits=row["credits"])
            for row in usage_per_day(organization=organization, start=first_day, end=today)]
    is_admin = membership.has_role(Role.ADMIN)
    return DashboardSummary(
        balance=account.credits,
        spent_this_month=sum((day.credits for day in days if day.day >= month_start), Decimal(0)),
        spend=days[-SPEND_DAYS:],
        plan_name=account.plan.name,
        monthly_credits=entitlements.monthly_credits,
        messages_per_minute=entitlements.messages_per_minute,
        seats=seat_usage(organization=organization, entitlements=entitlements),
        checks_used=checks_used_this_month(),
        checks_quota=entitlements.checks_per_month,
        threads=thread_recent_list(user=user, limit=RECENT),
        checks=check_latest_list(limit=RECENT),
        alerts_unread=alert_unread_count(),
        audit_events=list(audit_recent_list(limit=RECENT)),
        api_keys_active=api_key_active_count(organization=organization) if is_admin else None,
    )
