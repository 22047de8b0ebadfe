"""The anonymous trial at /try (see chat.trial): public pages, no organization."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages as flash
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET

from tenants.audit.services import client_ip

from . import trial
from .models import Message
from .streams import answer_events, answer_final

SALT = "prumo-trial"


def visitor_of(request: HttpRequest) -> str | None:
    return request.get_signed_cookie(trial.COOKIE, default=None, salt=SALT, max_age=trial.TTL)


def _with_cookie(response: HttpResponse, visitor: str) -> HttpResponse:
    response.set_signed_cookie(trial.COOKIE, visitor, salt=SALT, max_age=trial.TTL, httponly=True, samesite="Lax",
                               secure=settings.SESSION_COOKIE_SECURE)
    return response


def trial_page(request: HttpRequest) -> HttpResponse:
    visitor = visitor_of(request) or trial.new_visitor_id()
    if request.method == "POST":
        try:
            trial.trial_ask(visitor=visitor, ip=client_ip(request) or "unknown",
                            content=request.POST.get("content", ""))
        except ValueError:
            flash.error(request, _("Write a message first."))
        except trial.TrialBusy:
            flash.error(request, _("Wait for the current answer to finish."))
        except trial.TrialUnavailable:
            flash.error(request, _("The trial is not available right now."))
        except trial.TrialLimit as limit:
            if limit.per_address:
                flash.error(request, _("Too many trial messages from your network today. Sign up to keep going."))
        return _with_cookie(redirect("trial"), visitor)
    used = trial.trial_used(visitor)
    option = trial.trial_option()
    context = {
        "chat_messages": trial.trial_messages(visitor), "used": used, "limit": settings.TRIAL_MESSAGES,
        "left": max(settings.TRIAL_MESSAGES - used, 0), "option": option,
    }
    return _with_cookie(render(request, "chat/trial.html", context), visitor)


@require_GET
def trial_message(request: HttpRequest, answer_id: int) -> HttpResponse:
    visitor = visitor_of(request)
    message = trial.trial_message(visitor, answer_id) if visitor else None
    if message is None:
        raise Http404
    return render(request, "chat/_trial_message.html", {"message": message})


async def trial_stream(request: HttpRequest, answer_id: int) -> StreamingHttpResponse:
    visitor = visitor_of(request)
    message = await sync_to_async(trial.trial_message)(visitor, answer_id) if visitor else None
    if message is None:
        raise Http404
    after = request.headers.get("Last-Event-ID") or "0-0"
    key = trial.stream_key(visitor, answer_id)
    if message.status in Message.ACTIVE:
        events = answer_events(key, after)
    else:
        events = answer_final(key, message.status, after)
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache, no-transform"
    response["X-Accel-Buffering"] = "no"
    return response


def trial_claim_for_request(request: HttpRequest, organization) -> None:
    """After signing up, the trial conversation moves into the new organization."""
    visitor = visitor_of(request)
    if visitor and trial.trial_claim(visitor=visitor, organization=organization, user=request.user):
        flash.info(request, _("Your trial conversation is in Chat."))
