"""Toasts on htmx answers: Django messages added while answering an htmx request are appended to
the answer as an out-of-band swap of the page's toast region (templates/_toasts.html), so a view
shows feedback the same way whether it redirects to a full page or answers a fragment."""

from __future__ import annotations

from django.contrib.messages import get_messages
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string

# htmx follows none of these with a swap: the messages wait for the page it loads next.
NAVIGATION_HEADERS = ("HX-Redirect", "HX-Location", "HX-Refresh")


class HtmxToastsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            request.headers.get("HX-Request") != "true"
            or response.streaming
            or not 200 <= response.status_code < 300
            or not response.get("Content-Type", "").startswith("text/html")
            or any(response.has_header(header) for header in NAVIGATION_HEADERS)
            or not hasattr(request, "_messages")
        ):
            return response
        messages = list(get_messages(request))  # read: they are not shown again on the next page
        if messages:
            response.content += render_to_string("_toasts.html", {"messages": messages, "oob": True},
                                                 request=request).encode()
            if response.has_header("Content-Length"):
                response["Content-Length"] = str(len(response.content))
        return response
