from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template import loader
from django.utils.translation import gettext as _
from django.views import defaults as django_defaults
from django.views.decorators.cache import never_cache

from core.metrics import ratelimit_rejected
from core.overload import no_connection_error, overloaded, own_connection_closed
from core.redis_clients import redis_client


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready to serve: the database, Redis and the Celery broker answer (and, with READYZ_REQUIRE_WORKER, a Celery
    worker answered a ping within READYZ_WORKER_MAX_AGE seconds). 503 names what fails."""
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        redis_client().ping()
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


@own_connection_closed
def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return django_defaults.permission_denied(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """The 500 page with the request id to quote. No context processors: it must render with the database down.
    Django calls it inside its `except`: when the error was that no database connection was free, it is a 503."""
    import sys

    from core.observability import request_id_var

    if no_connection_error(sys.exc_info()[1]):
        return overloaded(request)
    request_id = getattr(request, "id", "") or request_id_var.get()
    page = loader.get_template("500.html").render({"request_id": request_id, "reported": bool(settings.SENTRY_DSN)})
    return HttpResponse(page, status=500)
