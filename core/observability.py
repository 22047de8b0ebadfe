"""Request ids and the request context that every log line carries."""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar

from core.metrics import http_request_duration, http_requests
from core.tracing import request_id_tag

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
organization_var: ContextVar[str] = ContextVar("organization", default="-")
user_var: ContextVar[str] = ContextVar("user_id", default="-")

# Accept a caller's id only when it looks like one (no log injection).
VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIDMiddleware:
    """Accepts `X-Request-ID` (or makes one), returns it, and scopes log context to the request."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        # Set, not reset at the end: Django logs 4xx/5xx responses after the middleware returns.
        request.id = request_context_set(incoming=request.headers.get("X-Request-ID", ""))
        response = self.get_response(request)
        response["X-Request-ID"] = request.id
        return response


def request_context_set(*, incoming: str = "", organization: str = "-", user: str = "-") -> str:
    """What RequestIDMiddleware and the tenant and user middleware set, for the ASGI paths that bypass Django
    (chat.send_direct, chat.v1): the caller's `X-Request-ID` when it looks like one, else a new id (returned).
    Log lines, and the tasks the request queues (task_context_publish), carry them."""
    request_id = incoming if VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
    request_id_var.set(request_id)
    request_id_tag(request_id)
    organization_var.set(organization)
    user_var.set(user)
    return request_id


class HealthzMiddleware:
    """Answers `/healthz` first: alive means the process serves, whatever the host, proxy or database."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path_info == "/healthz":
            from django.http import JsonResponse

            return JsonResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})
        return self.get_response(request)


class RequestMetricsMiddleware:
    """Counts and times every request Django answers by its URL pattern's name (`prumo_http_*`); "unmatched" when
    none matched. The paths served outside Django (/v1, direct chat sends and streams) have metrics of their own."""

    def __init__(self, get_response):
        from core.metrics import pools_record

        self.get_response = get_response
        self.pools_record = pools_record

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = (match.view_name or match.route or "unnamed") if match is not None else "unmatched"
        method = request.method if request.method in KNOWN_METHODS else "other"
        http_request_duration.labels(route, method).observe(time.perf_counter() - started)
        http_requests.labels(route, method, str(response.status_code)).inc()
        self.pools_record(every=POOLS_RECORD_SECONDS)
        return response


KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
# How often a process copies its connection pools' state into prumo_db_pool_connections (at a request's end).
POOLS_RECORD_SECONDS = 5.0


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        if not hasattr(record, "organization"):
            record.organization = organization_var.get()
        record.user_id = user_var.get()
        return True


# A task carries the context of whatever queued it (a request, or another task): set on every message as it is
# published (Celery's before_task_publish), restored in the worker as the task starts (task_prerun), so the
# worker's log lines name the request that caused them. config.celery connects both.
TASK_CONTEXT_HEADERS = {"prumo_request_id": request_id_var, "prumo_organization": organization_var,
                        "prumo_user": user_var}


def task_context_publish(headers: dict | None = None, **kwargs) -> None:
    if headers is None:
        return
    for name, var in TASK_CONTEXT_HEADERS.items():
        value = var.get()
        if value != "-":
            headers.setdefault(name, value)


def task_context_restore(task=None, **kwargs) -> None:
    request = task.request
    if request.is_eager:  # run inside its caller, whose context it already has
        return
    carried = request.headers or {}
    for name, var in TASK_CONTEXT_HEADERS.items():
        value = carried.get(name) or request.get(name) or "-"
        var.set(value if VALID_REQUEST_ID.match(str(value)) else "-")


def sentry_init(*, dsn: str, environment: str, release: str) -> None:
    """Errors to Sentry (or any server speaking its protocol): Django's, Celery's, and log records at ERROR.
    No personal data (no user, no client address, no bodies): neither `send_default_pii` (deprecated in
    sentry-sdk 2.76, a DeprecationWarning) nor `data_collection` is passed, which the SDK resolves to its no-PII
    collection with the event scrubber on (passing `data_collection` would turn the scrubber off). Every event is
    tagged with the request id the person was shown (the 500 page) and that the log lines carry."""
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration

    sentry_sdk.init(dsn=dsn, environment=environment or None, release=release or None,
                    integrations=[DjangoIntegration(), CeleryIntegration(),
                                  LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)],
                    traces_sample_rate=0.0, before_send=_sentry_tagged)


def _sentry_tagged(event: dict, hint: dict) -> dict:
    tags = event.setdefault("tags", {})
    if request_id_var.get() != "-":
        tags.setdefault("request_id", request_id_var.get())
    return event
