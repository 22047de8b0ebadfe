"""Chat pages under /o/<slug>/chat/. Thin: parse, call a service or selector, render."""

from __future__ import annotations

import secrets

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages as flash
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST
from django_tenants.utils import schema_context

from billing.ledger import InsufficientCredits
from billing.selectors import billing_account_get
from core.pagination import page_number
from tenants.audit.services import Actor
from tenants.guards import org_member_required

from . import selectors, services
from .files import FileRefused
from .models import Attachment, Message
from .send_direct import send_grant
from .streams import STREAM_RETRY_SECONDS, STREAMS_TOO_MANY, answer_events, answer_final, leased, stream_lease_take


def _options(request: HttpRequest):
    return services.options_for(request.tenant)


def _sidebar(request: HttpRequest) -> dict:
    search = request.GET.get("q", "")
    page = page_number(request.GET.get("page"))
    threads, has_more = selectors.thread_page(user=request.user, search=search, page=page)
    if page > 1 and not threads:
        raise Http404("There is no such page.")
    return {"threads": threads, "has_more": has_more, "next_page": page + 1, "search": search}


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _thread_or_404(request: HttpRequest, thread_id: int):
    thread = selectors.thread_get(user=request.user, thread_id=thread_id)
    if thread is None:
        raise Http404
    return thread


def _composer_context(request: HttpRequest, *, thread=None, text: str = "", error: str = "",
                      credits_short: bool = False, pending=()) -> dict:
    options = _options(request)
    selected = request.POST.get("model") or (thread.model_id if thread else (options[0].id if options else ""))
    # Names one send: a retry of it (the page sends again after a 503) finds it done instead of asking twice.
    send_token = request.POST.get("send_token") or secrets.token_hex(16)
    return {"options": options, "selected_model": selected, "composer_text": text, "composer_error": error,
            "credits_short": credits_short, "pending_files": pending, "send_token": send_token,
            "send_grant": _send_grant(request) if thread is not None else "",
            "balance": billing_account_get(organization=request.tenant).credits}


def _send_grant(request: HttpRequest) -> str:
    """Lets the thread's composer send without Django's request cycle (chat.send_direct), in this session."""
    session_key = request.session.session_key
    if not session_key:
        return ""
    return send_grant(user_id=request.user.pk, organization=request.tenant, session_key=session_key,
                      language=translation.get_language() or settings.LANGUAGE_CODE)


@org_member_required
def chat_home(request: HttpRequest) -> HttpResponse:
    context = {"thread": None, **_sidebar(request), **_composer_context(request)}
    return render(request, "chat/home.html", context)


@org_member_required
@require_GET
def thread_sidebar(request: HttpRequest) -> HttpResponse:
    """The sidebar's thread list (search and the next pages, loaded by htmx)."""
    context = {**_sidebar(request), "current_thread_id": _int(request.GET.get("current"), 0)}
    return render(request, "chat/_thread_list.html", context)


@org_member_required
def thread_detail(request: HttpRequest, thread_id: int) -> HttpResponse:
    thread = _thread_or_404(request, thread_id)
    rows = list(selectors.message_list(thread=thread))
    context = {"thread": thread, "chat_messages": rows, "last_question_id": _last_question_id(rows),
               "current_thread_id": thread.pk, **_sidebar(request), **_composer_context(request, thread=thread)}
    return render(request, "chat/thread.html", context)


@org_member_required
@require_GET
def thread_title(request: HttpRequest, thread_id: int) -> HttpResponse:
    """The thread's title as plain text, empty while it has none: the page asks once its first answer ends."""
    thread = _thread_or_404(request, thread_id)
    return HttpResponse(thread.title, content_type="text/plain; charset=utf-8",
                        headers={"Cache-Control": "no-store"})


def _last_question_id(rows: list[Message]) -> int | None:
    return next((m.pk for m in reversed(rows) if m.role == Message.Role.USER), None)


def _composer_error(request: HttpRequest, thread, error: str, *, credits_short: bool = False,
                    tokens: list[str] = ()) -> HttpResponse:
    """The composer again, with the person's text and files kept (sent again with the retry) and the reason."""
    # A file that could not be read is not offered again (the error says why).
    pending = selectors.attachment_pending_list(user=request.user, tokens=tokens).exclude(
        status=Attachment.Status.FAILED)
    context = _composer_context(request, thread=thread, text=request.POST.get("content", ""), error=error,
                                credits_short=credits_short, pending=pending)
    if request.htmx:
        response = render(request, "chat/_composer_error.html", context)
        response["HX-Retarget"] = "#composer-error"
        response["HX-Reswap"] = "innerHTML"
        return response
    template = "chat/thread.html" if thread else "chat/home.html"
    extra = {}
    if thread:
        rows = list(selectors.message_list(thread=thread))
        extra = {"chat_messages": rows, "last_question_id": _last_question_id(rows)}
    return render(request, template, {"thread": thread, **extra, **_sidebar(request), **context}, status=400)


def _send(request: HttpRequest, thread, *, new_thread: bool) -> HttpResponse:
    send_token = request.POST.get("send_token", "")
    done = services.send_done(user=request.user, token=send_token, thread=thread)
    if done is not None:  # this very send went through before (its answer was lost on the way back): say so again
        return _sent(request, *done, new_thread=new_thread)
    tokens = request.POST.getlist("attachments")
    try:
        services.send_allow(organization=request.tenant, user=request.user)
    except services.SendLimited as error:
        response = _composer_error(request, thread, str(error), tokens=tokens)
        response.status_code = 429  # chat.js swaps the message in all the same
        response["Retry-After"] = str(error.retry_after)
        return response
    try:
        for upload in request.FILES.getlist("files"):
            tokens.append(services.attachment_upload(organization=request.tenant, thread=thread, user=request.user,
                                                     upload=upload).token)
        if thread is None:
            option = services.option_get(request.tenant, request.POST.get("model", ""))
            thread = services.thread_create(user=request.user, model_id=option.id,
                                            system_prompt=request.POST.get("system_prompt", ""))
        answer = services.message_send(organization=request.tenant, user=request.user, thread=thread,
                                       content=request.POST.get("content", ""), model_id=request.POST.get("model"),
                                       attachment_tokens=tokens)
    except FileRefused as error:
        return _composer_error(request, None if new_thread else thread, str(error.reason), tokens=tokens)
    except services.ChatError as error:
        if new_thread and thread is not None:
            thread.delete()
        return _composer_error(request, None if new_thread else thread, str(error), tokens=tokens)
    except InsufficientCredits:
        if new_thread and thread is not None:
            thread.delete()
        return _composer_error(request, None if new_thread else thread,
                               _("Not enough credits for this answer."), credits_short=True, tokens=tokens)
    services.send_remember(user=request.user, token=send_token, thread=thread, answer=answer)
    return _sent(request, thread, answer.pk, new_thread=new_thread)


def _sent(request: HttpRequest, thread, answer_id: int, *, new_thread: bool) -> HttpResponse:
    """The answer to a send that went through: the new exchange (htmx), or the thread's page."""
    url = reverse("chat_thread", args=[request.tenant.slug, thread.pk])
    if request.htmx and not new_thread:
        # The question and its answer: the thread's last two messages up to it (ids are shared by every thread).
        latest = thread.messages.filter(id__lte=answer_id).prefetch_related("attachments").order_by("-id")[:2]
        rows = list(reversed(latest))
        response = render(request, "chat/_messages.html", {"thread": thread, "chat_messages": rows,
                                                            "last_question_id": _last_question_id(rows)})
        response["HX-Trigger"] = "chat-sent"
        return response
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = url
        return response
    return redirect(url)


@org_member_required
@require_POST
def thread_new(request: HttpRequest) -> HttpResponse:
    return _send(request, None, new_thread=True)


@org_member_required
@require_POST
def message_create(request: HttpRequest, thread_id: int) -> HttpResponse:
    return _send(request, _thread_or_404(request, thread_id), new_thread=False)


def _rerun(request: HttpRequest, thread_id: int, run) -> HttpResponse:
    thread = _thread_or_404(request, thread_id)
    try:
        services.send_allow(organization=request.tenant, user=request.user)
        run(thread)
    except services.ChatError as error:
        flash.error(request, str(error))
    except InsufficientCredits:
        flash.error(request, _("Not enough credits for this answer."))
    return redirect("chat_thread", request.tenant.slug, thread.pk)


@org_member_required
@require_POST
def message_regenerate(request: HttpRequest, thread_id: int) -> HttpResponse:
    return _rerun(request, thread_id, lambda thread: services.message_regenerate(
        organization=request.tenant, user=request.user, thread=thread, model_id=request.POST.get("model")))


@org_member_required
@require_POST
def message_edit(request: HttpRequest, thread_id: int) -> HttpResponse:
    return _rerun(request, thread_id, lambda thread: services.message_edit_last(
        organization=request.tenant, user=request.user, thread=thread, content=request.POST.get("content", "")))


@org_member_required
@require_POST
def thread_rename(request: HttpRequest, thread_id: int) -> HttpResponse:
    thread = _thread_or_404(request, thread_id)
    title = request.POST.get("title", "").strip()
    if title:
        services.thread_rename(thread=thread, title=title)
    return redirect("chat_thread", request.tenant.slug, thread.pk)


@org_member_required
@require_POST
def thread_pin(request: HttpRequest, thread_id: int) -> HttpResponse:
    from django.utils.http import url_has_allowed_host_and_scheme

    thread = _thread_or_404(request, thread_id)
    services.thread_pin(thread=thread, pinned=request.POST.get("pinned") == "1")
    target = request.POST.get("next", "")
    # Back where the button was, but only on this site: never an open redirect.
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                                  require_https=request.is_secure()):
        return redirect(target)
    return redirect("chat_thread", request.tenant.slug, thread.pk)


@org_member_required
@require_POST
def thread_delete(request: HttpRequest, thread_id: int) -> HttpResponse:
    thread = _thread_or_404(request, thread_id)
    services.thread_delete(thread=thread, actor=Actor.from_request(request))
    flash.success(request, _("Conversation deleted."))
    return redirect("chat_home", request.tenant.slug)


@org_member_required
@require_GET
def message_detail(request: HttpRequest, message_id: int) -> HttpResponse:
    """One message, rendered (the stream's reader swaps it in when the answer ends)."""
    message = selectors.message_get(user=request.user, message_id=message_id)
    if message is None:
        raise Http404
    return render(request, "chat/_message.html", {"message": message, "thread": message.thread, "is_last": True})


@org_member_required
@require_POST
def message_stop(request: HttpRequest, message_id: int) -> HttpResponse:
    message = selectors.message_get(user=request.user, message_id=message_id)
    if message is None:
        raise Http404
    if message.is_active:
        services.generation_stop(message=message)
    if request.htmx:
        return HttpResponse(status=204)
    return redirect("chat_thread", request.tenant.slug, message.thread_id)


@org_member_required
@require_GET
def attachment_download(request: HttpRequest, token: str) -> FileResponse:
    attachment = selectors.attachment_get(user=request.user, token=token)
    if attachment is None:
        raise Http404
    response = FileResponse(attachment.file.open("rb"), as_attachment=True, filename=attachment.filename,
                            content_type=attachment.content_type)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


def _stream_target(schema: str, user, message_id: int) -> tuple[str, str] | None:
    with schema_context(schema):
        message = selectors.message_get(user=user, message_id=message_id)
        if message is None:
            return None
        return message.stream_key, message.status


@org_member_required
async def message_stream(request: HttpRequest, message_id: int) -> StreamingHttpResponse:
    """Server-sent events of an answer, resumable with `Last-Event-ID` (see chat.streams); at most
    CHAT_STREAMS_PER_USER open at once per person."""
    user = await request.auser()
    target = await sync_to_async(_stream_target)(request.tenant.schema_name, user, message_id)
    if target is None:
        raise Http404
    key, status = target
    after = request.headers.get("Last-Event-ID") or request.GET.get("after") or "0-0"
    if status not in Message.ACTIVE:  # replayed while Redis keeps it, else its end (the page shows the answer)
        events = answer_final(key, status, after)
    else:
        lease = await stream_lease_take(user.pk)
        if lease is None:
            response = HttpResponse(STREAMS_TOO_MANY,
                                    status=429, content_type="text/plain; charset=utf-8")
            response["Retry-After"] = str(STREAM_RETRY_SECONDS)
            return response
        events = leased(answer_events(key, after), lease)
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache, no-transform"
    response["X-Accel-Buffering"] = "no"  # nginx and friends: do not buffer
    return response

