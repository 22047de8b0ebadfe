"""Checks pages under /o/<slug>/checks/: targets, live check progress, reports (page, CSV, print), history
and diff, alerts, settings. Thin: parse, call a selector or service, render.

Viewers read; members add targets and request checks; owners and admins change the settings.
"""

from __future__ import annotations

import csv
import math
from typing import Any

from django.contrib import messages
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST, require_safe

from core.pagination import page_get
from tenants.audit.records import export_record
from tenants.audit.services import Actor
from tenants.guards import org_member_required
from tenants.models import Role

from . import presentation, selectors
from .diff import report_diff, risk_level_change
from .forms import ChecksSettingsForm, TargetAddForm, TargetEditForm, TargetFilterForm
from .models import Alert, Check, Report, Target
from .services import (
    CheckRefused,
    alerts_mark_read,
    check_cost_preview,
    check_request,
    checks_settings,
    checks_settings_update,
    target_add,
    target_update,
)

PAGE_SIZE = 25
ALERTS_PAGE_SIZE = 50
HISTORY_SHOWN = 100


# ---------------------------------------------------------------- helpers


def _render(request: HttpRequest, template: str, context: dict, *, status: int = 200) -> HttpResponse:
    membership = request.membership
    common = {"can_write": membership.has_role(Role.MEMBER), "can_manage": membership.has_role(Role.ADMIN),
              "unread_alerts": selectors.alert_unread_count()}
    return render(request, template, {**common, **context}, status=status)


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _prices() -> dict | None:
    try:
        return check_cost_preview()
    except CheckRefused:
        return None


def _target_or_404(target_id: int) -> Target:
    target = selectors.target_get(target_id=target_id)
    if target is None:
        raise Http404
    return target


def _report_or_404(report_id: int) -> Report:
    report = selectors.report_get(report_id=report_id)
    if report is None:
        raise Http404
    return report


def _csv_response(filename: str) -> tuple[HttpResponse, Any]:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    return response, writer


def _refusal(refused: CheckRefused) -> dict:
    return {"code": refused.code, "message": refused.message}


def _check_requested(request: HttpRequest, check: Check) -> None:
    if check.is_final:
        messages.success(request, _("Checked: the report is ready."))
    else:
        messages.success(request, _("Check queued: its progress and report appear on this page."))


# ---------------------------------------------------------------- targets


def _home(request: HttpRequest, add_form: TargetAddForm, *, refusal: dict | None = None,
          status: int = 200) -> HttpResponse:
    filter_form = TargetFilterForm(request.GET, tags=selectors.target_tags())
    filters = filter_form.filters()
    targets = selectors.target_list(search=filters["q"], risk=filters["risk"], status=filters["status"],
                                    tag=filters["tag"])
    page = page_get(targets, PAGE_SIZE, request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {"add_form": add_form, "filter_form": filter_form, "page": page, "query": query.urlencode(),
               "filtered": any(filters.values()), "prices": _prices(), "refusal": refusal}
    return _render(request, "checks/home.html", context, status=status)


@org_member_required
@require_safe
def checks_home(request: HttpRequest) -> HttpResponse:
    """Targets with their status and risk, search, filters, pages; the add form for members."""
    return _home(request, TargetAddForm())


@org_member_required(role=Role.MEMBER)
@require_POST
def target_add_view(request: HttpRequest) -> HttpResponse:
    form = TargetAddForm(request.POST)
    if not form.is_valid():
        return _home(request, form, status=400)
    data = form.cleaned_data
    try:
        # A refused check leaves nothing behind (not even a new target); the form keeps what was typed.
        with transaction.atomic():
            target = target_add(cnpj=data["cnpj"], label=data["label"], tags=data["tags"],
                                schedule=data["schedule"], user=request.user)
            check = check_request(organization=request.tenant, target=target, user=request.user,
                                  refresh=data["refresh"])
    except CheckRefused as refused:
        return _home(request, form, refusal=_refusal(refused), status=refused.status)
    _check_requested(request, check)
    return redirect("checks_target", request.tenant.slug, target.pk)


@org_member_required
@require_safe
def targets_export(request: HttpRequest) -> HttpResponse:
    """The targets list (with the page's filters) as CSV."""
    filters = TargetFilterForm(request.GET, tags=selectors.target_tags()).filters()
    targets = selectors.target_list(search=filters["q"], risk=filters["risk"], status=filters["status"],
                                    tag=filters["tag"])
    export_record(organization=request.tenant, actor=Actor.from_request(request), action="checks.targets_exported",
                  what={"format": "csv", "filters": {name: value for name, value in filters.items() if value}})
    response, writer = _csv_response(f"checks-{request.tenant.slug}-{timezone.localdate():%Y-%m-%d}.csv")
    writer.writerow(presentation.TARGET_CSV_HEADER)
    for target in targets.iterator(chunk_size=1000):
        writer.writerow(presentation.target_csv_row(target))
    return response


def _history(target: Target) -> list[Report]:
    history = list(selectors.report_history(target=target)[:HISTORY_SHOWN])
    for report in history:
        report.provider_name = presentation.provider_name(report.provider)
    return history


def _target_context(target: Target) -> dict:
    """What the target page shows around the progress: badges, latest report, history (latest two picked)."""
    latest = selectors.report_latest(target=target)
    history = _history(target)
    return {"target": target, "latest_report": latest,
            "latest_signals": presentation.signals_view(latest.signals) if latest else [], "history": history,
            "selected_a": history[1].pk if len(history) > 1 else None,
            "selected_b": history[0].pk if history else None}


def _progress_context(check: Check | None) -> dict:
    if check is None:
        return {"check": None}
    wait = None
    if check.status == Check.Status.PENDING and check.run_after and check.run_after > timezone.now():
        wait = math.ceil((check.run_after - timezone.now()).total_seconds())
    return {"check": check, "attempts": presentation.attempt_rows(selectors.attempt_list(check=check)),
            "wait_seconds": wait, "throttled": wait is not None and not check.error,
            "provider_name": presentation.provider_name(check.provider)}


def _target_page(request: HttpRequest, target: Target, *, edit_form: TargetEditForm | None = None,
                 refusal: dict | None = None, status: int = 200) -> HttpResponse:
    recent = selectors.check_recent_list(target=target)
    for run in recent:
        run.provider_name = presentation.provider_name(run.provider)
    edit_form = edit_form or TargetEditForm(initial={"label": target.label, "tags": target.tags,
                                                     "schedule": target.schedule})
    context = {**_target_context(target), **_progress_context(selectors.check_latest(target=target)),
               "edit_form": edit_form, "refusal": refusal, "prices": _prices(), "recent_checks": recent}
    return _render(request, "checks/target.html", context, status=status)


@org_member_required
@require_safe
def target_detail(request: HttpRequest, target_id: int) -> HttpResponse:
    return _target_page(request, _target_or_404(target_id))


@org_member_required(role=Role.MEMBER)
@require_POST
def target_edit(request: HttpRequest, target_id: int) -> HttpResponse:
    target = _target_or_404(target_id)
    form = TargetEditForm(request.POST)
    if not form.is_valid():
        return _target_page(request, target, edit_form=form, status=400)
    target_update(target=target, label=form.cleaned_data["label"], tags=form.cleaned_data["tags"],
                  schedule=form.cleaned_data["schedule"])
    messages.success(request, _("Saved."))
    return redirect("checks_target", request.tenant.slug, target.pk)


@org_member_required(role=Role.MEMBER)
@require_POST
def target_check(request: HttpRequest, target_id: int) -> HttpResponse:
    """Check now (the cache may answer) or, with refresh=1, ask the registries again."""
    target = _target_or_404(target_id)
    try:
        check = check_request(organization=request.tenant, target=target, user=request.user,
                              refresh=request.POST.get("refresh") == "1")
    except CheckRefused as refused:
        return _target_page(request, target, refusal=_refusal(refused), status=refused.status)
    _check_requested(request, check)
    return redirect("checks_target", request.tenant.slug, target.pk)


@org_member_required
@require_safe
def check_progress(request: HttpRequest, check_id: int) -> HttpResponse:
    """The live progress fragment (htmx polls it every second until the check is final).

    The final answer also swaps in the target's badges, latest report and history (out of band)."""
    check = selectors.check_get(check_id=check_id)
    if check is None:
        raise Http404
    if not request.htmx:
        return redirect("checks_target", request.tenant.slug, check.target_id)
    context = _progress_context(check)
    if check.is_final:
        target = selectors.target_get(target_id=check.target_id)
        context.update(_target_context(target), oob=True)
    return render(request, "checks/progress.html", context)


# ---------------------------------------------------------------- reports


def _report_context(report: Report) -> dict:
    check = report.check_run
    attempts = selectors.attempt_list(check=check) if check is not None else []
    provenance = report.data.get("provenance") or {}
    return {"report": report, "target": report.target, "company": presentation.company_view(report.data),
            "signals": presentation.signals_view(report.signals), "check": check,
            "attempts": presentation.attempt_rows(attempts or provenance.get("attempts") or []),
            "provider_name": presentation.provider_name(report.provider),
            "previous": selectors.report_previous(report=report)}


@org_member_required
@require_safe
def report_detail(request: HttpRequest, report_id: int) -> HttpResponse:
    return _render(request, "checks/report.html", _report_context(_report_or_404(report_id)))


@org_member_required
@require_safe
def report_print(request: HttpRequest, report_id: int) -> HttpResponse:
    """The report alone on a clean A4 page: no navigation, a print stylesheet."""
    return _render(request, "checks/report_print.html", _report_context(_report_or_404(report_id)))


@org_member_required
@require_safe
def report_csv(request: HttpRequest, report_id: int) -> HttpResponse:
    """Three tables separated by a blank row: field,value rows; the partners (masked); the signals."""
    report = _report_or_404(report_id)
    export_record(organization=request.tenant, actor=Actor.from_request(request), action="checks.report_exported",
                  what={"format": "csv", "report_id": report.pk, "cnpj": report.target.cnpj})
    response, writer = _csv_response(f"report-{report.target.cnpj}-{report.created_at:%Y%m%d}-{report.pk}.csv")
    writer.writerows(presentation.report_csv_rows(report))
    return response


# ---------------------------------------------------------------- history and diff


@org_member_required
@require_safe
def target_diff(request: HttpRequest, target_id: int) -> HttpResponse:
    """What changed between two reports of a target (`?a=<id>&b=<id>`; the latest two by default)."""
    target = _target_or_404(target_id)
    first_id, second_id = _int(request.GET.get("a")), _int(request.GET.get("b"))
    context = {"target": target, "history": _history(target), "selected_a": first_id, "selected_b": second_id}
    if first_id is not None and first_id == second_id:
        return _render(request, "checks/diff.html", {**context, "error": _("Pick two different reports.")},
                       status=400)
    pair = selectors.report_pair(target=target, first_id=first_id, second_id=second_id)
    if pair is None:
        if first_id is not None or second_id is not None:
            raise Http404
        return _render(request, "checks/diff.html", context)
    old, new = pair
    diff = report_diff(presentation.report_with_risk(old), presentation.report_with_risk(new))
    context.update(old=old, new=new, changes=presentation.change_rows(diff.changes),
                   risk_change=risk_level_change(old.risk_level, new.risk_level),
                   selected_a=old.pk, selected_b=new.pk)
    return _render(request, "checks/diff.html", context)


# ---------------------------------------------------------------- alerts


@org_member_required
@require_safe
def alert_list_view(request: HttpRequest) -> HttpResponse:
    page = page_get(selectors.alert_list(), ALERTS_PAGE_SIZE, request.GET.get("page"))
    rows = [presentation.alert_view(alert) for alert in page.object_list]
    return _render(request, "checks/alerts.html", {"page": page, "rows": rows})


def _back_to_alerts(request: HttpRequest) -> HttpResponse:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                  require_https=request.is_secure()):
        return redirect(target)
    return redirect("checks_alerts", request.tenant.slug)


@org_member_required(role=Role.MEMBER)
@require_POST
def alert_read(request: HttpRequest, alert_id: int) -> HttpResponse:
    if not Alert.objects.filter(pk=alert_id).exists():
        raise Http404
    alerts_mark_read(alert_id=alert_id)
    return _back_to_alerts(request)


@org_member_required(role=Role.MEMBER)
@require_POST
def alerts_read_all(request: HttpRequest) -> HttpResponse:
    alerts_mark_read()
    return _back_to_alerts(request)


# ---------------------------------------------------------------- settings


@org_member_required(role=Role.ADMIN)
def checks_settings_view(request: HttpRequest) -> HttpResponse:
    """Retention, alert e-mails and the risk thresholds (owners and admins)."""
    row = checks_settings()
    form = ChecksSettingsForm(request.POST if request.method == "POST" else None, thresholds=row.thresholds,
                              initial={"retention_days": row.retention_days, "alert_emails": row.alert_emails})
    if request.method == "POST" and form.is_valid():
        checks_settings_update(organization=request.tenant, actor=Actor.from_request(request),
                               retention_days=form.cleaned_data["retention_days"],
                               alert_emails=form.cleaned_data["alert_emails"],
                               thresholds=form.cleaned_data["thresholds"])
        messages.success(request, _("Saved. New reports use these thresholds."))
        return redirect("checks_settings", request.tenant.slug)
    return _render(request, "checks/settings.html", {"form": form, "settings_row": row},
                   status=400 if form.errors else 200)
