"""Every URL pattern of the project, for architecture tests that check each view."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver


@dataclass(frozen=True)
class Route:
    route: str  # the full pattern, e.g. "o/<slug:org_slug>/chat/t/<int:thread_id>/"
    callback: Any
    default_args: dict
    name: str | None


def routes(prefix: str = "") -> list[Route]:
    """Every pattern whose full route starts with `prefix`."""
    found: list[Route] = []

    def walk(patterns, parent: str) -> None:
        for entry in patterns:
            route = parent + str(entry.pattern)
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, route)
            elif isinstance(entry, URLPattern):
                found.append(Route(route, entry.callback, entry.default_args, entry.name))

    walk(get_resolver().url_patterns, "")
    return [route for route in found if route.route.startswith(prefix)]
