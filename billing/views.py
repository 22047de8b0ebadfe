from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from tenants.guards import org_member_required

from .selectors import billing_account_get, credit_entry_list, entitlements_for, plan_list_public


def pricing(request: HttpRequest) -> HttpResponse:
    """Public plans, read from the database."""
    return render(request, "billing/pricing.html", {"plans": plan_list_public()})


@org_member_required
def billing_overview(request: HttpRequest) -> HttpResponse:
    organization = request.tenant
    context = {
        "account": billing_account_get(organization=organization),
        "entitlements": entitlements_for(organization),
        "entries": credit_entry_list(organization=organization)[:20],
    }
    return render(request, "billing/overview.html", context)
