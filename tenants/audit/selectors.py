"""Reading the audit log of the current organization's schema: filters, keyset pages, export chunks.

Pages use an opaque cursor on (created_at, id), newest first: `WHERE created_at <= t AND NOT
(created_at = t AND id >= i)` walks the created_at index, so page 1,000 costs what page 1 does
(no OFFSET, no COUNT).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Q, QuerySet
from django_tenants.utils import schema_context

from .models import AuditEvent

PAGE_SIZE = 50
PAGE_SIZE_MAX = 100


class InvalidCursor(ValueError):
    """A cursor this code did not make (or made for another ordering)."""


@dataclass(frozen=True)
class AuditFilters:
    actor: str = ""  # an actor id, or part of an actor's label (an email, "API key 12")
    actor_type: str = ""
    action: str = ""  # an action name, or `<group>.*`
    target_type: str = ""
    target_id: str = ""
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive

    def as_dict(self) -> dict:
        """What the filters were, for an export's own audit event."""
        return {name: value.isoformat() if isinstance(value, datetime) else value
                for name, value in self.__dict__.items() if value}


def audit_event_list(*, filters: AuditFilters = AuditFilters()) -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.all()
    if filters.actor:
        events = events.filter(Q(actor_id=filters.actor) | Q(actor_label__icontains=filters.actor))
    if filters.actor_type:
        events = events.filter(actor_type=filters.actor_type)
    if filters.action.endswith(".*"):
        events = events.filter(action__startswith=filters.action[:-1])
    elif filters.action:
        events = events.filter(action=filters.action)
    if filters.target_type:
        events = events.filter(target_type=filters.target_type)
    if filters.target_id:
        events = events.filter(target_id=filters.target_id)
    if filters.since:
        events = events.filter(created_at__gte=filters.since)
    if filters.until:
        events = events.filter(created_at__lt=filters.until)
    return events


@dataclass(frozen=True)
class Position:
    created_at: datetime
    id: int
    backwards: bool = False  # the page before this row (newer events), not after it


def cursor_encode(event: AuditEvent, *, backwards: bool = False) -> str:
    raw = f"{'p' if backwards else 'n'}|{event.created_at.isoformat()}|{event.pk}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def cursor_decode(cursor: str) -> Position | None:
    """The position a cursor names; None for no cursor; InvalidCursor for anything else."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        direction, created_at, pk = raw.split("|")
        when = datetime.fromisoformat(created_at)
        number = int(pk)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor(cursor) from None
    if direction not in ("n", "p") or when.tzinfo is None or not 0 < number < 2**63:
        raise InvalidCursor(cursor)
    return Position(created_at=when, id=number, backwards=direction == "p")


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditEvent] = field(default_factory=list)
    next_cursor: str = ""  # older events
    previous_cursor: str = ""  # newer events


def audit_event_page(events: QuerySet[AuditEvent], *, cursor: str = "", size: int = PAGE_SIZE) -> AuditPage:
    """One page of `events`, newest first, after (or before) the cursor's row: one query.

    Raises InvalidCursor for a cursor that does not decode.
    """
    position = cursor_decode(cursor)
    size = max(1, min(size, PAGE_SIZE_MAX))
    if position is None:
        rows = list(events.order_by("-created_at", "-id")[:size + 1])
        more = len(rows) > size
        rows = rows[:size]
        return AuditPage(rows, cursor_encode(rows[-1]) if more else "", "")
    at, pk = position.created_at, position.id
    if position.backwards:
        rows = list(events.filter(created_at__gte=at).exclude(created_at=at, id__lte=pk)
                    .order_by("created_at", "id")[:size + 1])
        if not rows:  # nothing newer any more: the first page
            return audit_event_page(events, size=size)
        more = len(rows) > size
        rows = list(reversed(rows[:size]))
        return AuditPage(rows, cursor_encode(rows[-1]), cursor_encode(rows[0], backwards=True) if more else "")
    rows = list(events.filter(created_at__lte=at).exclude(created_at=at, id__gte=pk)
                .order_by("-created_at", "-id")[:size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return AuditPage(rows, cursor_encode(rows[-1]) if more else "",
                     cursor_encode(rows[0], backwards=True) if rows else "")


def audit_event_chunks(*, schema: str, filters: AuditFilters, chunk_size: int = 1000) -> Iterator[list[AuditEvent]]:
    """Every event `filters` select, newest first, `chunk_size` rows per query, each query in `schema`:
    an export streams them after its request (and the request's schema) ended."""
    events = audit_event_list(filters=filters).order_by("-created_at", "-id")
    last: AuditEvent | None = None
    while True:
        page = events
        if last is not None:
            page = page.filter(created_at__lte=last.created_at).exclude(created_at=last.created_at, id__gte=last.pk)
        with schema_context(schema):
            rows = list(page[:chunk_size])
        if not rows:
            return
        yield rows
        if len(rows) < chunk_size:
            return
        last = rows[-1]
