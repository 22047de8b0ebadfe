"""What every entry point answers when the process has no database connection to give: 503 with Retry-After,
never a 500 (config.views.server_error, config.asgi, chat.send_direct), and the wrapper that closes the
connection Django's exception pages open on a thread of their own."""

from __future__ import annotations

from functools import wraps

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader
from django.utils.translation import gettext as _


def no_connection_error(error: BaseException | None) -> bool:
    """Whether `error` (or what caused it) says no database connection was free: the process's pool timed out,
    or PostgreSQL has no slot left (SQLSTATE 53300)."""
    from psycopg_pool import PoolTimeout

    while error is not None:
        if isinstance(error, PoolTimeout) or getattr(error, "sqlstate", None) == "53300" or (
                "too many clients" in str(error)):
            return True
        error = error.__cause__
    return False


def overloaded(request: HttpRequest) -> HttpResponse:
    """503 with Retry-After: the request changed nothing (no connection, so no transaction), ask again."""
    retry_after = settings.OVERLOAD_RETRY_AFTER
    if request.path.startswith("/api/"):
        response = JsonResponse({"detail": _("Prumo is busy. Try again in a few seconds."), "code": "overloaded"},
                                status=503)
    else:
        response = HttpResponse(loader.get_template("503.html").render({"retry_after": retry_after}), status=503)
    response["Retry-After"] = str(retry_after)
    return response


def own_connection_closed(view):
    """For the views Django renders an exception's page with (403, 404). Under ASGI it runs them on a thread of
    their own (convert_exception_to_response: sync_to_async, thread_sensitive=False), where the page's queries
    (the header's organizations) open a connection that nothing closes: the request's end closes its own thread's.
    Closed here once the page is rendered (on the request's thread, the next query just opens another)."""

    @wraps(view)
    def closing(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        finally:
            if not connection.in_atomic_block:
                connection.close()

    return closing


async def overloaded_asgi(send) -> None:
    """`overloaded` for the routes config/asgi.py serves itself (chat sends waiting too long for their turn)."""
    retry_after = settings.OVERLOAD_RETRY_AFTER
    body = loader.get_template("503.html").render({"retry_after": retry_after}).encode()
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()), (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})
