"""Request bodies are capped before Django reads them (its ASGI handler spools a whole body to disk first).

A body that declares more than its path may send is answered 413 without reading a byte; one that
declares nothing (chunked) is cut with 413 as soon as it passes the cap. Uploads (the chat composer and
the API's attachments) may carry the largest file a plan allows; everything else gets REQUEST_BODY_MAX_BYTES.
Django's own limits (DATA_UPLOAD_MAX_MEMORY_SIZE, the plan's max_upload_mb) then apply within these.
"""

from __future__ import annotations

import json
import re

from django.conf import settings
from django.template.defaultfilters import filesizeformat
from django.utils import translation
from django.utils.translation import gettext as _
from django.utils.translation.trans_real import parse_accept_lang_header

from core.scope import scope_header

UPLOAD_PATH = re.compile(r"^/o/[^/]+/chat/(new|t/\d+/send)/$|^/api/v1/threads/\d+/attachments/$")
# Form fields and multipart framing around the files of one upload.
UPLOAD_OVERHEAD = 1024 * 1024


class BodyTooLarge(Exception):
    pass


def body_limit_for(path: str) -> int:
    """How many body bytes a request to `path` may send."""
    if UPLOAD_PATH.match(path):
        return settings.UPLOAD_MAX_MB * 1024 * 1024 + UPLOAD_OVERHEAD
    return settings.REQUEST_BODY_MAX_BYTES


def _language(scope) -> str:
    for code, _quality in parse_accept_lang_header(scope_header(scope, b"accept-language")):
        try:
            return translation.get_supported_language_variant(code)
        except LookupError:
            continue
    return settings.LANGUAGE_CODE


async def _refuse(scope, send, limit: int) -> None:
    if scope["path"].startswith("/api/"):
        body = json.dumps({"detail": f"The request body is larger than this API accepts ({limit} bytes).",
                           "code": "request_too_large"}).encode()
        content_type = b"application/json"
    else:
        with translation.override(_language(scope)):
            message = _("This request is too large (over %(size)s). Send a smaller file or less text.") % {
                "size": filesizeformat(limit)}
        body, content_type = message.encode(), b"text/plain; charset=utf-8"
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def body_limited(app):
    """Wrap an ASGI app so that no HTTP request body over its path's limit reaches it."""

    async def guarded(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        limit = body_limit_for(scope["path"])
        declared = scope_header(scope, b"content-length")
        if declared.isdigit() and int(declared) > limit:
            return await _refuse(scope, send, limit)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            return await app(scope, limited_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await _refuse(scope, send, limit)

    return guarded
