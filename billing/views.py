from __future__ import annotations

import csv

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from core.csv_cells import csv_value
from tenants.audit.records import export_record
from tenants.audit.services import Actor
from tenants.guards import org_member_required

from .charts import bar_chart
from .forms import UsageRangeForm
from .selectors import billing_account_get, credit_entry_list, plan_list_public, usage_report
from .stripe_views import billing_panel_context, plan_cards


def pricing(request: HttpRequest) -> HttpResponse:
    """Public plans, read from the database: the billing page's cards, without its actions."""
    return render(request, "billing/pricing.html",
                  {"plan_cards": plan_cards(plan_list_public(), current=None, can_manage=False)})


@org_member_required
def billing_overview(request: HttpRequest) -> HttpResponse:
    organization = request.tenant
    account = billing_account_get(organization=organization)
    context = {
        "account": account,
        "entries": credit_entry_list(organization=organization)[:20],
        **billing_panel_context(request, account),
    }
    return render(request, "billing/overview.html", context)


@org_member_required
def usage(request: HttpRequest) -> HttpResponse:
    """Usage per day, per model or check kind and per member; CSV with ?format=csv."""
    form = UsageRangeForm(request.GET)  # both dates optional: the last 30 days by default
    if not form.is_valid():
        return render(request, "billing/usage.html", {"form": form}, status=400)
    start, end = form.range()
    report = usage_report(organization=request.tenant, start=start, end=end)
    if request.GET.get("format") == "csv":
        export_record(organization=request.tenant, actor=Actor.from_request(request), action="billing.usage_exported",
                      what={"format": "csv", "start": str(start), "end": str(end)})
        return usage_csv(report, filename=f"usage-{request.tenant.slug}-{start}-{end}.csv")
    context = {
        "form": form,
        "report": report,
        "daily_chart": bar_chart([(f"{row['day']:%Y-%m-%d}", row["credits"]) for row in report.by_day]),
        "key_chart": bar_chart([(row["key"], row["credits"]) for row in report.by_key[:10]], horizontal=True,
                               height=max(24 * min(len(report.by_key), 10), 24)),
    }
    return render(request, "billing/usage.html", context)


def usage_csv(report, *, filename: str) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(["day", "kind", "key", "member", "events", "input_tokens", "output_tokens", "units", "credits"])
    for row in report.rows:
        # A model id or an address can start with "=" or "@": written as text, never as a formula.
        writer.writerow([row.day, row.kind, csv_value(row.key), csv_value(row.user.email if row.user else ""),
                         row.events, row.input_tokens, row.output_tokens, row.units, row.credits])
    return response
