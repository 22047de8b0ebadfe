"""Reads for the checks pages: targets with filters, a target's checks and reports, alerts.

Every query runs in the current organization's schema (the tenant middleware set it), so an id
from another organization simply is not found.
"""

from __future__ import annotations

from django.db.models import F, Func, Q, QuerySet

from . import cnpj as cnpj_id
from .models import Alert, Attempt, Check, Report, Target

# Status filter value for targets that were never checked (their status is blank).
NEVER_CHECKED = "never"
TAGS_SHOWN = 200


def target_list(*, search: str = "", risk: str = "", status: str = "", tag: str = "") -> QuerySet[Target]:
    """Targets, newest first, matching a search over CNPJ (any format), label and company name."""
    targets = Target.objects.order_by("-created_at", "-id")
    search = search.strip()
    if search:
        matches = Q(label__icontains=search) | Q(company_name__icontains=search)
        canonical = cnpj_id.normalize(search)
        if canonical and canonical.isalnum():
            matches |= Q(cnpj__contains=canonical)
        targets = targets.filter(matches)
    if risk:
        targets = targets.filter(risk_level=risk)
    if status == NEVER_CHECKED:
        targets = targets.filter(status="")
    elif status:
        targets = targets.filter(status=status)
    if tag:
        targets = targets.filter(tags__contains=[tag])
    return targets


def target_tags() -> list[str]:
    """Distinct tags in use (for the filter), alphabetically."""
    tags = (Target.objects.annotate(tag=Func(F("tags"), function="jsonb_array_elements_text"))
            .values_list("tag", flat=True).distinct().order_by("tag"))
    return list(tags[:TAGS_SHOWN])


def target_get(*, target_id: int) -> Target | None:
    return Target.objects.filter(pk=target_id).first()


def check_get(*, check_id: int) -> Check | None:
    return Check.objects.select_related("target").filter(pk=check_id).first()


def check_latest(*, target: Target) -> Check | None:
    return target.checks.order_by("-created_at", "-id").first()


def check_recent_list(*, target: Target, limit: int = 10) -> list[Check]:
    return list(target.checks.order_by("-created_at", "-id")[:limit])


def check_latest_list(*, limit: int = 5) -> list[Check]:
    """The organization's latest checks, any target, with their target: the dashboard's list."""
    return list(Check.objects.select_related("target").order_by("-created_at", "-id")[:limit])


def attempt_list(*, check: Check) -> list[Attempt]:
    return list(Attempt.objects.filter(check_run=check).order_by("created_at", "id"))


def report_get(*, report_id: int) -> Report | None:
    return Report.objects.select_related("target", "check_run").filter(pk=report_id).first()


def report_latest(*, target: Target) -> Report | None:
    return target.reports.order_by("-created_at", "-id").first()


def report_history(*, target: Target) -> QuerySet[Report]:
    """A target's reports, newest first, without their (large) data."""
    return (target.reports.order_by("-created_at", "-id")
            .only("id", "target_id", "created_at", "provider", "risk_level", "data_date", "fetched_at"))


def report_previous(*, report: Report) -> Report | None:
    """The report of the same target written just before `report`."""
    return (Report.objects.filter(target_id=report.target_id)
            .filter(Q(created_at__lt=report.created_at) | Q(created_at=report.created_at, id__lt=report.pk))
            .order_by("-created_at", "-id").only("id").first())


def report_pair(*, target: Target, first_id: int | None, second_id: int | None) -> tuple[Report, Report] | None:
    """Two reports of `target`, older first: the ones asked for, or the latest two when none is given.

    None when the target has fewer than two reports or an id is not one of its reports.
    """
    if first_id is None and second_id is None:
        latest = list(target.reports.order_by("-created_at", "-id")[:2])
        return (latest[1], latest[0]) if len(latest) == 2 else None
    if first_id is None or second_id is None or first_id == second_id:
        return None
    pair = list(target.reports.filter(pk__in=[first_id, second_id]).order_by("created_at", "id"))
    return (pair[0], pair[1]) if len(pair) == 2 else None


def alert_list() -> QuerySet[Alert]:
    return Alert.objects.select_related("target").order_by("-created_at", "-id")


def alert_unread_count() -> int:
    return Alert.objects.filter(read_at__isnull=True).count()
