"""Reading an ASGI request's scope, for the routes config/asgi.py serves before (or instead of) Django's handler."""

from __future__ import annotations

import contextlib
from http.cookies import SimpleCookie


def scope_header(scope, name: bytes) -> str:
    """The header `name` (lower case) of the request, empty when absent."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def scope_cookie(scope, name: str) -> str:
    """The cookie `name`'s value, empty when absent or when the Cookie header cannot be read (Django decides)."""
    cookies = SimpleCookie()
    with contextlib.suppress(Exception):
        cookies.load(scope_header(scope, b"cookie"))
    morsel = cookies.get(name)
    return morsel.value if morsel else ""
