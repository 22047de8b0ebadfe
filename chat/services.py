"""Writes for chat: threads, questions and answers, and how an answer is paid for.

An answer is a `Message` that starts `pending` with its maximum cost reserved; a Celery
task (chat.tasks.generation_run → chat.generation) streams it and `answer_finish` closes
it: content, usage and cost in one transaction, billed at the model that served.
"""

from __future__ import annotations

import secrets
import time
from decimal import ROUND_UP, Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from accounts.models import User
from billing.charges import Metered, charge_hold, charge_settle
from billing.models import Price, UsageEvent
from billing.ratelimits import send_limited
from billing.usage import CREDIT_QUANTUM, UnknownPrice, credits_for, usage_cost
from core.events import event_emit
from core.metrics import chat_answers, llm_tokens_count
from core.redis_clients import redis_client
from tenants.audit.services import Actor, audit_record
from tenants.models import Organization
from tenants.selectors import current_organization

from .catalog.selectors import ModelOption
from .context import context_build
from .files import PDF, FileRefused, file_sniff, file_text, text_fit, tokens_estimate
from .models import Attachment, Message, Thread, answer_stream_key
from .snapshot import org_config_now

TITLE_MAX = 200


_organization_ids: dict[str, int] = {}


def current_organization_ref() -> Organization:
    """The active schema's organization with only its id and schema name, which never change: what answers need
    (plan, keys, credits and usage all go by id), without a query per answer in a task."""
    tenant = connection.tenant
    if isinstance(tenant, Organization):
        return tenant
    schema = connection.schema_name
    if schema not in _organization_ids:
        _organization_ids[schema] = Organization.objects.values_list("pk", flat=True).get(schema_name=schema)
    return Organization(pk=_organization_ids[schema], schema_name=schema)


class ChatError(Exception):
    """A request we refuse, with a message for the person who made it."""


class SendLimited(ChatError):
    """A member sent more messages this minute than the plan allows; `retry_after` is in seconds."""

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


def send_allow(*, organization: Organization, user: User) -> None:
    """Count one send from the chat pages; SendLimited when the member is over the plan's messages a minute."""
    limit = org_config_now(organization.pk).entitlements.messages_per_minute
    wait = send_limited(organization_id=organization.pk, user_id=user.pk, per_minute=limit)
    if wait is not None:
        raise SendLimited(ngettext(
            "You are sending messages faster than your plan allows (%(limit)s a minute). Try again in "
            "%(seconds)s second.",
            "You are sending messages faster than your plan allows (%(limit)s a minute). Try again in "
            "%(seconds)s seconds.", wait) % {"limit": limit, "seconds": wait}, retry_after=wait)


# ---------------------------------------------------------------- a send, once

SEND_TOKEN_SECONDS = 900  # how long a send that went through is remembered for its retries


def send_key(schema: str, user_id: int, token: str) -> str:
    """Where a send that went through is remembered, by the composer's name for it (`send_token`)."""
    return f"chat:sent:{schema}:{user_id}:{token[:64]}"


def send_remembered(thread_id: int, answer_id: int) -> str:
    return f"{thread_id}:{answer_id}"


def send_remember(*, user: User, token: str, thread: Thread, answer: Message) -> None:
    """Remember that the send named `token` (the composer's) went through: its retry answers the same."""
    if token:
        redis_client().set(send_key(connection.schema_name, user.pk, token), send_remembered(thread.pk, answer.pk),
                          ex=SEND_TOKEN_SECONDS)


def send_done(*, user: User, token: str, thread: Thread | None) -> tuple[Thread, int] | None:
    """(thread, answer id) of the send named `token` when it already went through, in `thread` when given."""
    found = redis_client().get(send_key(connection.schema_name, user.pk, token)) if token else None
    if not found:
        return None
    thread_id, answer_id = (int(part) for part in found.split(":"))
    if thread is not None and thread.pk != thread_id:
        return None
    sent = thread or Thread.objects.filter(pk=thread_id, user=user).first()
    return (sent, answer_id) if sent is not None else None


# ---------------------------------------------------------------- models available


def options_for(organization: Organization) -> list[ModelOption]:
    """The models this organization may chat with now (plan tier, provider reachable)."""
    return list(org_config_now(organization.pk).options.values())


def option_get(organization: Organization, model_id: str) -> ModelOption:
    option = org_config_now(organization.pk).options.get(model_id)
    if option is not None:
        return option
    raise ChatError(_("This model is not available on your plan. Choose another one."))


def candidates_for(organization: Organization, option: ModelOption) -> list[ModelOption]:
    """The model, then its fallbacks that this organization may also use, in order."""
    return org_config_now(organization.pk).candidates(option.model)


# ---------------------------------------------------------------- threads


def thread_create(*, user: User, model_id: str, system_prompt: str = "") -> Thread:
    return Thread.objects.create(user=user, model_id=model_id, system_prompt=system_prompt.strip())


def thread_rename(*, thread: Thread, title: str) -> Thread:
    thread.title = title.strip()[:TITLE_MAX]
    thread.title_is_auto = False
    thread.save(update_fields=["title", "title_is_auto"])
    return thread


def thread_pin(*, thread: Thread, pinned: bool) -> Thread:
    thread.pinned = pinned
    thread.save(update_fields=["pinned"])
    return thread


@transaction.atomic
def thread_delete(*, thread: Thread, actor: Actor | None = None) -> None:
    """Delete a thread with its messages and files; audited (`thread.deleted`) in the current organization."""
    for message in thread.messages.filter(status__in=Message.ACTIVE):
        generation_stop(message=message)
    files = [attachment.file.name for attachment in thread.attachments.all()]
    audit_record(organization=current_organization(), actor=actor or Actor.system("chat"), action="thread.deleted",
                 target=thread, target_label=thread.title[:255],
                 before={"title": thread.title, "user_id": thread.user_id, "messages": thread.messages.count()})
    thread.delete()
    storage = Attachment._meta.get_field("file").storage
    transaction.on_commit(lambda: [storage.delete(name) for name in files])


# ---------------------------------------------------------------- attachments


def attachment_upload(*, organization: Organization, thread: Thread | None, user: User, upload) -> Attachment:
    """Store an uploaded file after checking its size (plan limit) and its type (by content).

    Text is decoded at once (linear in a size the plan bounds); a PDF is stored `pending` and read by
    chat.tasks.attachment_extract, off the request, within a CPU-time limit and a content budget.
    """
    limit_mb = org_config_now(organization.pk).entitlements.max_upload_mb
    if upload.size > limit_mb * 1024 * 1024:
        raise FileRefused(_("This file is larger than your plan allows (%(limit)s MB).") % {"limit": limit_mb})
    data = upload.read()
    kind = file_sniff(data, upload.name)
    text, truncated = "", False
    status = Attachment.Status.PENDING if kind == PDF else Attachment.Status.READY
    if kind.has_text and kind != PDF:
        text, truncated = text_fit(file_text(data, kind), settings.CHAT_ATTACHMENT_TOKEN_BUDGET)
    attachment = Attachment(
        thread=thread, uploaded_by=user, token=secrets.token_hex(16), filename=upload.name[-200:],
        kind=kind.kind, content_type=kind.content_type, size=len(data), text=text,
        text_tokens=tokens_estimate(text), truncated=truncated, status=status,
    )
    upload.seek(0)
    attachment.file.save(upload.name[-100:], upload, save=False)
    attachment.save()
    if status == Attachment.Status.PENDING:
        schema = connection.schema_name
        transaction.on_commit(lambda: _extraction_enqueue(attachment.pk, schema))
    return attachment


def _extraction_enqueue(attachment_id: int, schema: str) -> None:
    from .tasks import attachment_extract

    attachment_extract.apply_async(args=[attachment_id], headers={"_schema_name": schema})


def attachment_text_extract(*, attachment_id: int) -> Attachment | None:
    """Read a pending attachment's text (chat.tasks.attachment_extract); None when it was read already.

    The reading runs outside any transaction (it may take the whole CPU budget); its outcome is written
    by `_attachment_close`, which also wakes or fails the answer waiting for the file.
    """
    attachment = Attachment.objects.filter(pk=attachment_id, status=Attachment.Status.PENDING).first()
    if attachment is None:
        return None
    with attachment.file.open("rb") as handle:
        data = handle.read()
    try:
        text, truncated = text_fit(file_text(data, attachment.kind), settings.CHAT_ATTACHMENT_TOKEN_BUDGET)
    except FileRefused as refused:
        uploader = User.objects.filter(pk=attachment.uploaded_by_id).first()
        # Stored as text: shown later to its uploader, so in their language.
        with translation.override(uploader.language if uploader else None):
            error = str(refused.reason)
        return _attachment_close(attachment_id=attachment_id, status=Attachment.Status.FAILED, error=error)
    return _attachment_close(attachment_id=attachment_id, status=Attachment.Status.READY, text=text,
                             truncated=truncated)


@transaction.atomic
def _attachment_close(*, attachment_id: int, status: str, text: str = "", truncated: bool = False,
                      error: str = "") -> Attachment | None:
    # Locked: a send that took this file waits for this write, or this write sees the send's question.
    attachment = Attachment.objects.select_for_update().filter(pk=attachment_id,
                                                                status=Attachment.Status.PENDING).first()
    if attachment is None:
        return None
    attachment.status, attachment.text, attachment.truncated = status, text, truncated
    attachment.text_tokens, attachment.error = tokens_estimate(text), error[:300]
    attachment.save(update_fields=["status", "text", "truncated", "text_tokens", "error"])
    if attachment.message_id is not None:
        _answer_wake(question_id=attachment.message_id)
    return attachment


def _answer_wake(*, question_id: int) -> None:
    """The question's files changed: queue its waiting answer once all are read, or fail it if one cannot be."""
    question = Message.objects.get(pk=question_id)
    # Locked, so two files finishing together see each other's outcome and only one queues the answer.
    answer = (Message.objects.select_for_update().filter(thread_id=question.thread_id, id__gt=question.id,
                                                         role=Message.Role.ASSISTANT).order_by("id").first())
    if answer is None or answer.status != Message.Status.WAITING:
        return
    files = list(question.attachments.all())
    failed = next((file for file in files if file.status == Attachment.Status.FAILED), None)
    schema = connection.schema_name
    if failed is not None:  # the hold is released: nothing is charged for a file that could not be read
        answer_finish(answer_id=answer.pk, status=Message.Status.FAILED, text="", error=_file_error(failed))
        key = answer.stream_key
        transaction.on_commit(lambda: _stream_close(key, Message.Status.FAILED))
        return
    if any(file.status == Attachment.Status.PENDING for file in files):
        return
    option = _option_or_none(current_organization_ref(), answer.model_id)
    if option is not None:  # the real estimate, now that the text is known (the hold covered the worst case)
        _messages, answer.prompt_tokens_estimate = context_build(thread=question.thread, answer=answer,
                                                                 model=option.model, load_images=False)
    answer.status = Message.Status.PENDING
    answer.save(update_fields=["status", "prompt_tokens_estimate"])
    transaction.on_commit(lambda: _generation_enqueue(answer.pk, schema))


def _file_error(attachment: Attachment) -> str:
    return f"{attachment.filename[:80]}: {attachment.error}"


def _option_or_none(organization: Organization, model_id: str) -> ModelOption | None:
    try:
        return option_get(organization, model_id)
    except ChatError:
        return None  # the generation fails it with the reason


def _stream_close(key: str, status: str) -> None:
    from .generation import stream_end

    stream_end(key, status)


# ---------------------------------------------------------------- questions and answers


def _answer_create(*, organization: Organization, thread: Thread, option: ModelOption, user: User,
                   unread: int | None = None) -> Message:
    """A pending answer with its worst-case cost reserved, then the generation queued (on commit). `unread`: how
    many of the question's files are still being read, when the caller knows (else looked up)."""
    max_tokens = answer_max_tokens(option)
    unread = _files_unread(thread) if unread is None else unread
    status = Message.Status.WAITING if unread else Message.Status.PENDING
    answer = Message(thread=thread, role=Message.Role.ASSISTANT, status=status, model_id=option.id,
                     max_tokens=max_tokens)
    _messages, prompt_tokens = context_build(thread=thread, answer=answer, model=option.model, load_images=False)
    # A file still being read adds at most its token budget once read: the hold covers that.
    prompt_tokens += unread * settings.CHAT_ATTACHMENT_TOKEN_BUDGET
    answer.prompt_tokens_estimate = prompt_tokens
    answer.save()
    worst = answer_worst_cost(candidates_for(organization, option), prompt_tokens=prompt_tokens,
                              max_tokens=max_tokens)
    # Raises InsufficientCredits, and the whole send rolls back.
    charge_hold(organization=organization, amount=worst, key=answer.billing_key, user=user,
                description=f"chat answer {answer.pk}")
    Thread.objects.filter(pk=thread.pk).update(updated_at=timezone.now(), model_id=option.id)
    schema = connection.schema_name
    # Watched before the commit: a process that dies between the commit and the enqueue still leaves the answer
    # to the reaper (which drops an entry whose answer never committed). Files still being read: the last one
    # read queues it (_answer_wake).
    _pending_watch(answer.pk, schema)
    if not unread:
        transaction.on_commit(lambda: _generation_enqueue(answer.pk, schema, watched=True))
    return answer


def answer_max_tokens(option: ModelOption) -> int:
    return min(option.model.max_output_tokens, settings.CHAT_MAX_OUTPUT_TOKENS)


def answer_worst_cost(candidates: list[ModelOption], *, prompt_tokens: int, max_tokens: int) -> Decimal:
    """What an answer is held for: the most any of the models that may serve it could cost."""
    worst = max(candidate.cost_bound(input_tokens=prompt_tokens, output_tokens=max_tokens) for candidate in candidates)
    return worst.quantize(CREDIT_QUANTUM, rounding=ROUND_UP)


def _files_unread(thread: Thread) -> int:
    """How many files of the thread's last question are still being read."""
    question = thread.messages.filter(role=Message.Role.USER).order_by("-id").first()
    if question is None:
        return 0
    return question.attachments.filter(status=Attachment.Status.PENDING).count()


PENDING_SET = "chat:pending"


def _pending_watch(answer_id: int, schema: str) -> None:
    redis_client().zadd(PENDING_SET, {answer_stream_key(schema, answer_id): time.time()})


def _generation_enqueue(answer_id: int, schema: str, *, watched: bool = False) -> None:
    """Queue the answer's generation. Until a worker claims it, the reaper watches it (`watched`: since the send,
    a moment ago): an answer whose task is lost is closed, never left pending."""
    if not watched:
        _pending_watch(answer_id, schema)
    generation_publish(answer_id, schema)


def generation_publish(answer_id: int, schema: str) -> None:
    from .tasks import generation_run

    generation_run.apply_async(args=[answer_id], headers={"_schema_name": schema})


def _busy(thread: Thread) -> bool:
    """Whether an answer is running; locks the thread so two sends cannot both start one (one statement)."""
    running = Message.objects.filter(thread_id=OuterRef("pk"), status__in=Message.ACTIVE)
    return bool(Thread.objects.select_for_update(of=("self",)).filter(pk=thread.pk)
                .values_list(Exists(running), flat=True).first())


@transaction.atomic
def message_send(*, organization: Organization, user: User, thread: Thread, content: str,
                 model_id: str | None = None, attachment_tokens: list[str] | None = None) -> Message:
    """Ask a question in `thread`; returns the (pending) answer."""
    content = content.strip()
    # Locked: a file being read either finishes before this send reads its status or sees the question.
    attachments = list(Attachment.objects.select_for_update().filter(token__in=attachment_tokens or [],
                                                                     uploaded_by=user, message__isnull=True))
    if not content and not attachments:
        raise ChatError(_("Write a message first."))
    unreadable = next((a for a in attachments if a.status == Attachment.Status.FAILED), None)
    if unreadable is not None:
        raise ChatError(_file_error(unreadable))
    if _busy(thread):
        raise ChatError(_("Wait for the current answer to finish, or stop it."))
    option = option_get(organization, model_id or thread.model_id)
    if any(a.is_image for a in attachments) and not option.model.vision:
        raise ChatError(_("%(model)s cannot read images. Choose a model that can, or remove the image.")
                        % {"model": option.model.display_name})
    question = Message.objects.create(thread=thread, role=Message.Role.USER, content=content)
    Attachment.objects.filter(pk__in=[a.pk for a in attachments]).update(message=question, thread=thread)
    unread = sum(1 for a in attachments if a.status == Attachment.Status.PENDING)  # read under their row locks
    return _answer_create(organization=organization, thread=thread, option=option, user=user, unread=unread)


def _last_exchange(thread: Thread) -> tuple[Message, Message | None]:
    question = thread.messages.filter(role=Message.Role.USER).order_by("-id").first()
    if question is None:
        raise ChatError(_("There is nothing to answer yet."))
    answer = thread.messages.filter(id__gt=question.id, role=Message.Role.ASSISTANT).order_by("-id").first()
    return question, answer


@transaction.atomic
def message_regenerate(*, organization: Organization, user: User, thread: Thread,
                       model_id: str | None = None) -> Message:
    """A new answer to the last question (the previous answer is replaced)."""
    if _busy(thread):
        raise ChatError(_("Wait for the current answer to finish, or stop it."))
    _question, answer = _last_exchange(thread)
    if answer is not None:
        answer.delete()  # its usage and credits stay in billing's records
    return _answer_create(organization=organization, thread=thread,
                          option=option_get(organization, model_id or thread.model_id), user=user)


@transaction.atomic
def message_edit_last(*, organization: Organization, user: User, thread: Thread, content: str) -> Message:
    """Change the last question and answer it again."""
    content = content.strip()
    if not content:
        raise ChatError(_("Write a message first."))
    if _busy(thread):
        raise ChatError(_("Wait for the current answer to finish, or stop it."))
    question, answer = _last_exchange(thread)
    question.content = content
    question.save(update_fields=["content"])
    if answer is not None:
        answer.delete()
    return _answer_create(organization=organization, thread=thread,
                          option=option_get(organization, thread.model_id), user=user)


def cancel_key(stream_key: str) -> str:
    return f"{stream_key}:cancel"


def generation_stop(*, message: Message) -> None:
    """Ask the running generation to stop (it ends within a second and keeps what it wrote)."""
    redis_client().set(cancel_key(message.stream_key), "1", ex=3600)
    if message.status == Message.Status.WAITING:  # nothing runs yet: close it now, its hold released
        key = message.stream_key
        with transaction.atomic():
            if answer_finish(answer_id=message.pk, status=Message.Status.STOPPED, text="") is not None:
                transaction.on_commit(lambda: _stream_close(key, Message.Status.STOPPED))


# ---------------------------------------------------------------- closing an answer


def _credits_for(*, organization: Organization, served: str, input_tokens: int,
                 output_tokens: int) -> tuple[Decimal, Price | None]:
    option = org_config_now(organization.pk).options.get(served)
    if option is not None:  # the price in force when the snapshot was taken, as /v1 bills (chat.snapshot)
        price = Price(kind=Price.Kind.MODEL, key=served, input_per_million=option.input_per_million,
                      output_per_million=option.output_per_million)
        return credits_for(input_per_million=price.input_per_million, output_per_million=price.output_per_million,
                           input_tokens=input_tokens, output_tokens=output_tokens), price
    try:
        cost = usage_cost(kind=UsageEvent.Kind.MODEL, key=served, input_tokens=input_tokens,
                          output_tokens=output_tokens)
    except UnknownPrice:
        return Decimal(0), None
    # More than was held is charged too (the ledger debits the difference as far as the balance goes).
    return cost.credits, cost.price


# prumo_chat_answers_total, one child per final status.
ANSWERS_CLOSED = {status: chat_answers.labels(status) for status in Message.Status.values}


@transaction.atomic
def answer_finish(*, answer_id: int, status: str, text: str, served_model_id: str = "",
                  input_tokens: int | None = None, output_tokens: int | None = None, finish_reason: str = "",
                  error: str = "", only_from: tuple[str, ...] = Message.ACTIVE) -> Message | None:
    """Write the finished answer, its usage and its cost in one transaction; once (None when already closed,
    or when its status is not in `only_from`).

    Token counts are the provider's; when it never said (a stop, a crash, a cut stream) they are
    estimated from the prompt and the text produced, so partial answers pay for what they used.
    """
    # Lock the answer only: FOR UPDATE on the joined thread would also lock it (see billing.ledger._close).
    answer = (Message.objects.select_for_update(of=("self",)).select_related("thread__user").filter(pk=answer_id)
              .first())
    if answer is None or answer.status not in only_from:
        return None
    organization = current_organization_ref()
    estimated = input_tokens is None or output_tokens is None
    if estimated:
        produced = bool(text)
        input_tokens = answer.prompt_tokens_estimate if produced else 0
        output_tokens = tokens_estimate(text)
    served = served_model_id or answer.model_id
    credits, price = _credits_for(organization=organization, served=served, input_tokens=input_tokens,
                                  output_tokens=output_tokens)
    usage = None if price is None else Metered.at(
        price, kind=UsageEvent.Kind.MODEL, key=served, request_id=answer.billing_key, credits=credits,
        user=answer.thread.user, input_tokens=input_tokens, output_tokens=output_tokens)
    charge_settle(organization=organization, key=answer.billing_key, actual=credits, usage=usage)
    answer.status = status
    answer.content = text
    answer.served_model_id = served if text or status == Message.Status.COMPLETE else ""
    answer.input_tokens, answer.output_tokens = input_tokens, output_tokens
    answer.usage_estimated = estimated and bool(input_tokens or output_tokens)
    answer.credits = credits
    answer.finish_reason = finish_reason[:20]
    answer.error = error[:300]
    answer.completed_at = timezone.now()
    answer.save(update_fields=["status", "content", "served_model_id", "input_tokens", "output_tokens",
                               "usage_estimated", "credits", "finish_reason", "error", "completed_at"])
    Thread.objects.filter(pk=answer.thread_id).update(updated_at=answer.completed_at)
    if status == Message.Status.COMPLETE:
        answer_event_emit(organization=organization, answer=answer)
    transaction.on_commit(ANSWERS_CLOSED[status].inc)
    if not estimated:
        provider = served.partition("/")[0]
        transaction.on_commit(lambda: llm_tokens_count(provider, input_tokens, output_tokens))
    if answer.thread.title_is_auto and not answer.thread.title and status == Message.Status.COMPLETE:
        schema = connection.schema_name
        transaction.on_commit(lambda: _title_enqueue(answer.thread_id, schema))
    return answer


def answer_event_emit(*, organization: Organization, answer: Message) -> None:
    """`chat.answer.completed` for the endpoints that chose it; the text only to those that include message text."""
    event_emit(organization=organization, type="chat.answer.completed", data={
        "answer_id": answer.pk, "thread_id": answer.thread_id, "user_id": answer.thread.user_id,
        "model": answer.served_model_id or answer.model_id, "input_tokens": answer.input_tokens,
        "output_tokens": answer.output_tokens, "usage_estimated": answer.usage_estimated,
        "credits": str(answer.credits), "finish_reason": answer.finish_reason,
        "completed_at": answer.completed_at.isoformat(),
    }, private={"text": answer.content})


def _title_enqueue(thread_id: int, schema: str) -> None:
    from .tasks import thread_title

    thread_title.apply_async(args=[thread_id], headers={"_schema_name": schema})
