"""Not enough credits, wherever it happens: 402 with a way to top up."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils.translation import gettext as _

from .ledger import InsufficientCredits

API_PREFIXES = ("/v1/", "/api/")


class InsufficientCreditsMiddleware:
    """Turns an InsufficientCredits raised by any view into HTTP 402.

    API paths get a JSON error body (OpenAI's envelope shape, which the /v1 gateway uses);
    pages get a message with a link to the organization's top-up form.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, InsufficientCredits):
            return None
        message = _("Not enough credits: this needs %(required)s and the balance is %(balance)s.") % {
            "required": exception.required.normalize(), "balance": exception.balance.normalize()}
        if request.path_info.startswith(API_PREFIXES):
            return JsonResponse({"error": {"message": message, "type": "insufficient_credits", "param": None,
                                           "code": "insufficient_credits"}}, status=402)
        return render(request, "billing/insufficient_credits.html", {"message": message}, status=402)
