"""Reads that check the audit chain (the hash chain and its anchor: see `AuditEvent`'s docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from django.db import connection
from django_tenants.utils import schema_context

from .models import AuditEvent

if TYPE_CHECKING:
    from tenants.models import Organization

PURGED_ACTION = "audit.purged"
# For operators (audit_verify), in English like the other management commands.
REASONS = {
    "hash": "hash mismatch: the event's content does not match its hash (the row was altered)",
    "prev_hash": "prev_hash mismatch: it does not follow the event before it (an event was deleted or "
                 "altered before it)",
    "start": "prev_hash mismatch at the start: the oldest event follows neither the start of the chain nor "
             "the last retention purge (older events were deleted)",
}

# The first event (in id order) whose hash or link is wrong; `audit_event_hash` recomputes the hash in the
# schema (the function is the one the insert trigger used).
FIRST_BREAK = """
SELECT id, created_at, recomputed <> hash
FROM (SELECT event.id, event.created_at, event.hash, event.prev_hash, audit_event_hash(event) AS recomputed,
             lag(event.hash) OVER (ORDER BY event.id) AS previous
      FROM {table} AS event) AS chain
WHERE recomputed <> hash OR prev_hash <> previous
ORDER BY id
LIMIT 1
"""


@dataclass(frozen=True)
class ChainBreak:
    event_id: int
    created_at: datetime
    reason: str  # a key of REASONS

    def __str__(self) -> str:
        return f"event {self.event_id} ({self.created_at.isoformat()}): {REASONS[self.reason]}"


@dataclass(frozen=True)
class ChainStatus:
    events: int
    broken: ChainBreak | None

    @property
    def intact(self) -> bool:
        return self.broken is None


def audit_chain_verify(*, organization: Organization) -> ChainStatus:
    """Recompute every event's hash and link, oldest first; the first break found, if any. Four queries."""
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    with schema_context(organization.schema_name):
        events = AuditEvent.objects.count()
        first = AuditEvent.objects.order_by("id").values("id", "created_at", "prev_hash").first()
        if first is None:
            return ChainStatus(events=0, broken=None)
        with connection.cursor() as cursor:
            cursor.execute(FIRST_BREAK.format(table=table))
            row = cursor.fetchone()
        broken = None
        if row is not None:
            broken = ChainBreak(event_id=row[0], created_at=row[1], reason="hash" if row[2] else "prev_hash")
        if first["prev_hash"] and (broken is None or broken.event_id > first["id"]):
            # Not the start of the chain: the last purge must have deleted exactly what came before.
            anchor = (AuditEvent.objects.filter(action=PURGED_ACTION).order_by("-id")
                      .values_list("after__anchor", flat=True).first())
            if first["prev_hash"] != anchor:
                broken = ChainBreak(event_id=first["id"], created_at=first["created_at"], reason="start")
    return ChainStatus(events=events, broken=broken)
