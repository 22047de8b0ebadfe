"""Reads for chat pages: a member's threads (search, pages) and one thread's messages."""

from __future__ import annotations

from django.db.models import Exists, OuterRef, Q, QuerySet

from accounts.models import User

from .models import Attachment, Message, Thread

SIDEBAR_PAGE = 50


def thread_list(*, user: User, search: str = "") -> QuerySet[Thread]:
    """The member's threads, pinned first then most recent; `search` matches titles and message text."""
    threads = Thread.objects.filter(user=user)
    search = search.strip()
    if search:
        in_messages = Message.objects.filter(thread=OuterRef("pk"), content__icontains=search)
        threads = threads.filter(Q(title__icontains=search) | Exists(in_messages))
    return threads.order_by("-pinned", "-updated_at", "-id").only("id", "title", "pinned", "updated_at", "model_id")


def thread_recent_list(*, user: User, limit: int = 5) -> list[Thread]:
    """The member's latest conversations by last activity (pinned or not): the dashboard's list."""
    return list(Thread.objects.filter(user=user).order_by("-updated_at", "-id")
                .only("id", "title", "updated_at", "model_id")[:limit])


def thread_page(*, user: User, search: str = "", page: int = 1) -> tuple[list[Thread], bool]:
    """One page of the sidebar and whether there is another."""
    page = max(page, 1)
    start = (page - 1) * SIDEBAR_PAGE
    rows = list(thread_list(user=user, search=search)[start:start + SIDEBAR_PAGE + 1])
    return rows[:SIDEBAR_PAGE], len(rows) > SIDEBAR_PAGE


def thread_get(*, user: User, thread_id: int) -> Thread | None:
    return Thread.objects.filter(user=user, pk=thread_id).first()


def message_list(*, thread: Thread) -> QuerySet[Message]:
    return thread.messages.prefetch_related("attachments").order_by("id")


def message_get(*, user: User, message_id: int) -> Message | None:
    return Message.objects.select_related("thread").filter(pk=message_id, thread__user=user).first()


def attachment_get(*, user: User, token: str) -> Attachment | None:
    """A file its uploader may download (threads are private to their member)."""
    return Attachment.objects.filter(token=token, uploaded_by=user).first()


def attachment_pending_list(*, user: User, tokens) -> QuerySet[Attachment]:
    """Files uploaded with a question that was not sent (kept for the retry)."""
    return Attachment.objects.filter(token__in=list(tokens), uploaded_by=user, message__isnull=True)
