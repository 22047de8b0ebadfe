"""Request ids and the request context that every log line carries."""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

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
        incoming = request.headers.get("X-Request-ID", "")
        request.id = incoming if VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        # Set, not reset at the end: Django logs 4xx/5xx responses after the middleware returns.
        request_id_var.set(request.id)
        organization_var.set("-")
        user_var.set("-")
        response = self.get_response(request)
        response["X-Request-ID"] = request.id
        return response


class HealthzMiddleware:
    """Answers `/healthz` first: alive means the process serves, whatever the host, proxy or database."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path_info == "/healthz":
            from django.http import JsonResponse

            return JsonResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})
        return self.get_response(request)


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        if not hasattr(record, "organization"):
            record.organization = organization_var.get()
        record.user_id = user_var.get()
        return True
