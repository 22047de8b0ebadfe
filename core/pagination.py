"""Page numbers and API cursors that come from the query string: anything that is not a page there is → 404.

A page number is only ever a small positive integer; a huge one (`?page=99999999999999999999`) would
otherwise overflow PostgreSQL's OFFSET (500), and a forged cursor position would reach the database
as a value of the ordering field (500).
"""

from __future__ import annotations

from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.core.paginator import InvalidPage, Page, Paginator
from django.http import Http404
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination

# No list here has this many pages; a larger number is refused before any query.
PAGE_MAX = 1_000_000


def page_number(value: str | None) -> int:
    """The page asked for in `?page=` (1 when absent); Http404 for anything but 1..PAGE_MAX."""
    if value is None or value == "":
        return 1
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= PAGE_MAX:
        raise Http404("There is no such page.")
    return int(value)


def page_get(object_list, per_page: int, value: str | None) -> Page:
    """The page `?page=` names (Django's Paginator.page, not the lenient get_page); Http404 past the end."""
    try:
        return Paginator(object_list, per_page).page(page_number(value))
    except InvalidPage:
        raise Http404("There is no such page.") from None


class CheckedCursorPagination(CursorPagination):
    """DRF's cursor pagination, with the cursor's position checked against the ordering field first."""

    def paginate_queryset(self, queryset, request, view=None):
        self._model = queryset.model
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request):
        cursor = super().decode_cursor(request)
        if cursor is None or cursor.position is None:
            return cursor
        name = self.ordering[0].lstrip("-") if isinstance(self.ordering, list | tuple) else self.ordering.lstrip("-")
        try:
            self._model._meta.get_field(name).to_python(cursor.position)
        except (FieldDoesNotExist, ValidationError, ValueError, TypeError, OverflowError):
            raise NotFound(self.invalid_cursor_message) from None
        if "\x00" in cursor.position:
            raise NotFound(self.invalid_cursor_message)
        return cursor
