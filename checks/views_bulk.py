"""Bulk checks pages under /o/<org_slug>/checks/bulk/: upload a CSV, follow a batch, download its results.

Members upload; viewers see the batches and their results.
"""

from __future__ import annotations

from itertools import islice

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import ngettext
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from tenants.audit.records import export_record
from tenants.audit.services import Actor
from tenants.guards import org_member_required
from tenants.models import Role

from . import bulk
from .forms_bulk import BulkUploadForm
from .models import Batch


def _can_upload(request: HttpRequest) -> bool:
    return request.membership.has_role(Role.MEMBER)


def _batch_or_404(batch_id: int) -> Batch:
    batch = bulk.batch_get(batch_id=batch_id)
    if batch is None:
        raise Http404
    return batch


@org_member_required
@require_http_methods(["GET", "POST"])
def bulk_home(request: HttpRequest) -> HttpResponse:
    """The upload form (members) and the latest batches."""
    form, status = BulkUploadForm(), 200
    if request.method == "POST":  # the guard refuses viewers
        form = BulkUploadForm(request.POST, request.FILES)
        if form.is_valid():
            try:
                batch = bulk.batch_create(organization=request.tenant, uploaded_file=form.cleaned_data["file"],
                                          user=request.user)
            except bulk.BulkRefused as refused:
                form.add_error("file", refused.message)
            else:
                if batch.total:  # a file with only invalid rows has nothing queued: its page says why
                    messages.success(request, ngettext("Batch queued: %(count)d company to check.",
                                                       "Batch queued: %(count)d companies to check.",
                                                       batch.total) % {"count": batch.total})
                return redirect("checks_batch", request.tenant.slug, batch.pk)
        status = 400
    batches = list(bulk.batch_list())
    progress = {batch.pk: bulk.batch_progress(batch) for batch in batches if batch.status == Batch.Status.RUNNING}
    rows = [(batch, progress.get(batch.pk)) for batch in batches]
    return render(request, "checks/bulk.html", {"form": form, "batch_rows": rows, "can_upload": _can_upload(request),
                                                "max_rows": bulk.MAX_ROWS}, status=status)


@org_member_required
@require_GET
def batch_detail(request: HttpRequest, batch_id: int) -> HttpResponse:
    batch = _batch_or_404(batch_id)
    invalid = [{**row, "reason": bulk.invalid_reason(row)} for row in batch.invalid_rows[:bulk.INVALID_SHOWN]]
    return render(request, "checks/bulk_batch.html", {
        "batch": batch, "progress": bulk.batch_progress(batch), "invalid_rows": invalid,
        "can_cancel": _can_upload(request),
        "invalid_count": len(batch.invalid_rows), "invalid_shown": bulk.INVALID_SHOWN})


@org_member_required(role=Role.MEMBER)
@require_POST
def batch_cancel(request: HttpRequest, batch_id: int) -> HttpResponse:
    batch = _batch_or_404(batch_id)
    cancelled = bulk.batch_cancel(batch=batch)
    messages.success(request, ngettext("Batch stopped: %(count)d queued check cancelled, its credits released.",
                                       "Batch stopped: %(count)d queued checks cancelled, their credits released.",
                                       cancelled) % {"count": cancelled})
    return redirect("checks_batch", request.tenant.slug, batch.pk)


@org_member_required
@require_GET
def batch_progress_fragment(request: HttpRequest, batch_id: int) -> HttpResponse:
    """The progress card, polled by htmx every second while the batch runs."""
    batch = _batch_or_404(batch_id)
    return render(request, "checks/_bulk_progress.html", {"batch": batch, "progress": bulk.batch_progress(batch),
                                                          "can_cancel": _can_upload(request)})


async def _async_lines(lines, size: int = 200):
    """Chunks of a synchronous iterator read off the event loop (an ASGI server then streams them)."""
    take = sync_to_async(lambda: list(islice(lines, size)), thread_sensitive=True)
    while chunk := await take():
        for line in chunk:
            yield line


@org_member_required
@require_GET
def batch_csv(request: HttpRequest, batch_id: int) -> StreamingHttpResponse:
    batch = _batch_or_404(batch_id)
    export_record(organization=request.tenant, actor=Actor.from_request(request), action="checks.batch_exported",
                  what={"format": "csv", "batch_id": batch.pk})
    lines = bulk.batch_results_csv(batch)
    content = _async_lines(lines) if isinstance(request, ASGIRequest) else lines
    response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="prumo-batch-{batch.pk}.csv"'
    return response
