"""Checks pages under /o/<org_slug>/checks/."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from tenants.guards import org_member_required


@org_member_required
def checks_home(request: HttpRequest) -> HttpResponse:
    return render(request, "tenants/coming_soon.html", {"section": "checks", "title": "Checks"})
