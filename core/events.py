"""Domain events that integrators may subscribe to (outbound webhooks), emitted from any layer.

Apps below `webhooks` in the layering (tenants, billing, checks, chat) call `event_emit` inside the
transaction of the change; the webhooks app registers its outbox writer as the sink when Django
starts (webhooks.apps), so the event is written in that same transaction and rolls back with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

EventSink = Callable[..., Any]
_sinks: list[EventSink] = []


def event_sink_register(sink: EventSink) -> None:
    """`sink(organization=…, type=…, data=…, private=…)` receives every event (registered once per process)."""
    if sink not in _sinks:
        _sinks.append(sink)


def event_emit(*, organization: Any, type: str, data: dict, private: dict | None = None) -> None:
    """Report that `type` happened in `organization` (call it inside the change's transaction). `private` holds
    people's words (a message's text): sinks pass it on only where it was asked for."""
    for sink in _sinks:
        sink(organization=organization, type=type, data=data, private=private)
