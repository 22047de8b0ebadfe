"""The audit log as CSV or JSON, produced chunk by chunk so a large organization's log is never held in memory.

Texts (headers, action labels) are read in the caller's language when the export starts; rows are read
1,000 at a time in the organization's schema, so the lines can be produced after the request ended.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator

from django.core.serializers.json import DjangoJSONEncoder
from django.utils.translation import gettext as _

from core.csv_cells import csv_value

from .actions import ACTIONS
from .selectors import AuditFilters, audit_event_chunks
from .serializers import AuditEventSerializer

FORMATS = {"csv": "text/csv; charset=utf-8", "json": "application/json"}


class _Echo:
    """A file-like object for csv.writer that hands back each line instead of storing it."""

    def write(self, value: str) -> str:
        return value


def _cell(value) -> str:
    return str(csv_value(value))


def audit_csv_lines(*, schema: str, filters: AuditFilters) -> Iterator[str]:
    """A UTF-8 BOM and a header, then one line per event, newest first; every text cell safe from formulas."""
    header = [_("When (UTC)"), _("Actor type"), _("Actor id"), _("Actor"), _("Action"), _("Action name"),
              _("Target type"), _("Target id"), _("Target"), _("IP address"), _("User agent"), _("Request id"),
              _("Before"), _("After")]
    labels = {action: str(label) for action, label in ACTIONS.items()}
    return _csv_lines(schema, filters, header, labels)


def _csv_lines(schema: str, filters: AuditFilters, header: list[str], labels: dict[str, str]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield "\ufeff" + writer.writerow(header)
    for rows in audit_event_chunks(schema=schema, filters=filters):
        for event in rows:
            yield writer.writerow([
                event.created_at.isoformat(), event.actor_type, _cell(event.actor_id), _cell(event.actor_label),
                event.action, _cell(labels.get(event.action, event.action)), _cell(event.target_type),
                _cell(event.target_id), _cell(event.target_label), event.ip_address or "", _cell(event.user_agent),
                _cell(event.request_id),
                _cell(json.dumps(event.before, cls=DjangoJSONEncoder) if event.before is not None else ""),
                _cell(json.dumps(event.after, cls=DjangoJSONEncoder) if event.after is not None else ""),
            ])


def audit_json_chunks(*, schema: str, filters: AuditFilters) -> Iterator[str]:
    """One JSON array of events, newest first (the API's shape), written a chunk of rows at a time."""
    labels = {action: str(label) for action, label in ACTIONS.items()}
    return _json_chunks(schema, filters, labels)


def _json_chunks(schema: str, filters: AuditFilters, labels: dict[str, str]) -> Iterator[str]:
    yield "["
    first = True
    for rows in audit_event_chunks(schema=schema, filters=filters):
        for data in AuditEventSerializer(rows, many=True, context={"labels": labels}).data:
            yield ("\n" if first else ",\n") + json.dumps(data, cls=DjangoJSONEncoder, ensure_ascii=False)
            first = False
    yield "\n]\n"
