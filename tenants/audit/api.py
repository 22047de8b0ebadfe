"""The audit log over the API: `GET /api/v1/audit-events/`.

Key scope `read` (a member key acts as an admin or owner, a service key as the organization); session
users need the admin role. Same filters as the page (tenants.audit.forms), a cursor on (created_at, id),
newest first: `next` and `previous` are URLs to follow as they are.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

from tenants.api_base import OrgAPIView
from tenants.models import Role

from .selectors import PAGE_SIZE, PAGE_SIZE_MAX, InvalidCursor, audit_event_list, audit_event_page
from .serializers import AuditEventSerializer, AuditQuerySerializer


class AuditCursorPagination(CursorPagination):
    """A keyset cursor on (created_at, id) (tenants.audit.selectors), in DRF's cursor envelope."""

    page_size = PAGE_SIZE
    max_page_size = PAGE_SIZE_MAX
    page_size_query_param = "page_size"
    ordering = ("-created_at", "-id")

    def paginate_queryset(self, queryset, request, view=None):
        self.request = request
        raw = request.query_params.get(self.page_size_query_param, "")
        if raw and (not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= PAGE_SIZE_MAX):
            raise ValidationError({self.page_size_query_param: f"A whole number from 1 to {PAGE_SIZE_MAX}."})
        try:
            self.audit_page = audit_event_page(queryset, cursor=request.query_params.get(self.cursor_query_param, ""),
                                               size=int(raw) if raw else PAGE_SIZE)
        except InvalidCursor:
            raise NotFound(self.invalid_cursor_message) from None
        return self.audit_page.events

    def _link(self, cursor: str) -> str | None:
        if not cursor:
            return None
        return replace_query_param(self.request.build_absolute_uri(), self.cursor_query_param, cursor)

    def get_paginated_response(self, data):
        return Response({"next": self._link(self.audit_page.next_cursor),
                         "previous": self._link(self.audit_page.previous_cursor), "results": data})


@extend_schema(tags=["Organization"])
class AuditEventListView(OrgAPIView):
    """The organization's audit log, newest first. Key scope `read`; admins and owners."""

    serializer_class = AuditEventSerializer
    pagination_class = AuditCursorPagination
    read_role = Role.ADMIN

    @extend_schema(operation_id="audit_events_list", parameters=[AuditQuerySerializer],
                   responses=AuditEventSerializer(many=True),
                   summary="Audit events (who did what), newest first, filtered")
    def get(self, request: Request) -> Response:
        filters = AuditQuerySerializer.filters(self.query_params(AuditQuerySerializer))
        return self.page(audit_event_list(filters=filters), AuditEventSerializer)
