from __future__ import annotations

from functools import wraps

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template import loader
from django.utils.translation import gettext as _
from django.views import defaults as django_defaults
from django.views.decorators.cache import never_cache

from core.metrics import ratelimit_rejected


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready to serve: the database, Redis and the Celery broker answer (and, with READYZ_REQUIRE_WORKER, a Celery
    worker answered a ping within READYZ_WORKER_MAX_AGE seconds). 503 names what fails."""
    import redis

    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        client.ping()
        client.close()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {exc.__class__.__name__}"
    checks["broker"] = _broker_check()
    if settings.READYZ_REQUIRE_WORKER:
        checks["worker"] = _worker_check()
    failing = sorted(name for name, state in checks.items() if state != "ok")
    body = {"status": "ok" if not failing else "unavailable", "checks": checks}
    if failing:
        body["failing"] = failing
    return JsonResponse(body, status=503 if failing else 200)


def _broker_check() -> str:
    from config.celery import app

    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as exc:
        return f"error: {exc.__class__.__name__}"


_worker_answered_at = 0.0  # monotonic time of this process's last ping a worker answered


def _worker_check() -> str:
    """A worker answered a ping recently: this process's last answer if young enough, else a new ping (1 s)."""
    import time

    from config.celery import app

    global _worker_answered_at
    if time.monotonic() - _worker_answered_at < settings.READYZ_WORKER_MAX_AGE:
        return "ok"
    try:
        answered = app.control.ping(timeout=1.0)
    except Exception as exc:
        return f"error: {exc.__class__.__name__}"
    if not answered:
        return "error: no worker answered a ping"
    _worker_answered_at = time.monotonic()
    return "ok"


def landing(request: HttpRequest) -> HttpResponse:
    return render(request, "landing.html")


def ratelimited(request: HttpRequest, exception: Exception) -> HttpResponse:
    ratelimit_rejected("view")
    response = render(request, "429.html", {"message": _("Too many requests. Try again in a minute.")}, status=429)
    response["Retry-After"] = "60"
    return response


def _no_connection(error: BaseException | None) -> bool:
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


@own_connection_closed
def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return django_defaults.permission_denied(request, exception)


async def overloaded_asgi(send) -> None:
    """`overloaded` for the routes config/asgi.py serves itself (chat sends waiting too long for their turn)."""
    retry_after = settings.OVERLOAD_RETRY_AFTER
    body = loader.get_template("503.html").render({"retry_after": retry_after}).encode()
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()), (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})


def server_error(request: HttpRequest) -> HttpResponse:
    """The 500 page with the request id to quote. No context processors: it must render with the database down.
    Django calls it inside its `except`: when the error was that no database connection was free, it is a 503."""
    import sys

    from .observability import request_id_var

    if _no_connection(sys.exc_info()[1]):
        return overloaded(request)
    request_id = getattr(request, "id", "") or request_id_var.get()
    page = loader.get_template("500.html").render({"request_id": request_id, "reported": bool(settings.SENTRY_DSN)})
    return HttpResponse(page, status=500)
