"""JSON bodies for the API, read only up to API_JSON_MAX_BYTES: larger ones are refused with 413 unparsed."""

from __future__ import annotations

import io

from django.conf import settings
from rest_framework import parsers, status
from rest_framework.exceptions import APIException


class RequestTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"

    def __init__(self, limit: int) -> None:
        # A dict detail is the response body as is: the reason and a code clients can branch on.
        super().__init__({"detail": f"The request body is larger than this API accepts ({limit} bytes).",
                          "code": self.default_code})


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser behind a size check: the declared length first, then what is actually read
    (a chunked body declares none)."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.API_JSON_MAX_BYTES
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestTooLarge(limit)
        data = stream.read(limit + 1) if stream is not None else b""
        if len(data) > limit:
            raise RequestTooLarge(limit)
        return super().parse(io.BytesIO(data), media_type, parser_context)
