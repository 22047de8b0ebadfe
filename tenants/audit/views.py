"""Settings → Audit log (/o/<slug>/settings/audit/): who did what, filtered, a cursor page at a time,
and the filtered log as CSV or JSON (streamed, and itself audited). Owners and admins only."""

from __future__ import annotations

from itertools import islice

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_safe

from tenants.guards import org_member_required
from tenants.models import Role

from .actions import action_label
from .exports import FORMATS, audit_csv_lines, audit_json_chunks
from .forms import AuditFilterForm
from .records import export_record
from .selectors import PAGE_SIZE, InvalidCursor, audit_event_list, audit_event_page
from .services import Actor


def _query(form: AuditFilterForm) -> str:
    """The filters as a query string, for the pagination and export links."""
    return urlencode({name: value for name, value in form.data.items()
                      if name in form.fields and value}) if form.is_bound else ""


@org_member_required(role=Role.ADMIN)
@require_safe
def audit_log(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET or None)
    context = {"form": form, "page": None, "query": "", "filtered": False}
    if form.is_bound and not form.is_valid():
        return render(request, "tenants/audit.html", context, status=400)
    filters = form.filters() if form.is_bound else None
    events = audit_event_list(filters=filters) if filters else audit_event_list()
    try:
        page = audit_event_page(events, cursor=request.GET.get("cursor", ""), size=PAGE_SIZE)
    except InvalidCursor:
        raise Http404("There is no such page.") from None
    for event in page.events:
        event.label = action_label(event.action)
    context.update(page=page, query=_query(form), filtered=bool(filters and filters.as_dict()))
    return render(request, "tenants/audit.html", context)


async def _async_chunks(lines, size: int = 200):
    """Chunks of a synchronous iterator read off the event loop (an ASGI server then streams them)."""
    take = sync_to_async(lambda: list(islice(lines, size)), thread_sensitive=True)
    while chunk := await take():
        for line in chunk:
            yield line


@org_member_required(role=Role.ADMIN)
@require_safe
def audit_export(request: HttpRequest) -> HttpResponse:
    kind = request.GET.get("format", "csv")
    if kind not in FORMATS:
        return HttpResponse("Unknown format: use format=csv or format=json.", status=400,
                            content_type="text/plain; charset=utf-8")
    form = AuditFilterForm(request.GET)
    if not form.is_valid():
        return HttpResponse("Invalid filters: " + "; ".join(f"{field}: {' '.join(errors)}"
                                                            for field, errors in form.errors.items()),
                            status=400, content_type="text/plain; charset=utf-8")
    filters = form.filters()
    export_record(organization=request.tenant, actor=Actor.from_request(request), action="audit.exported",
                  what={"format": kind, "filters": filters.as_dict()})
    schema = connection.schema_name
    lines = (audit_csv_lines if kind == "csv" else audit_json_chunks)(schema=schema, filters=filters)
    content = _async_chunks(lines) if isinstance(request, ASGIRequest) else lines
    response = StreamingHttpResponse(content, content_type=FORMATS[kind])
    name = f"audit-{request.tenant.slug}-{timezone.localdate():%Y-%m-%d}.{kind}"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "no-store"
    return response
