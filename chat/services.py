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
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from accounts.models import User
from billing.ledger import credit_release, credit_reserve, credit_settle
from billing.models import CreditReservation, Price, UsageEvent
from billing.ratelimits import send_limited
from billing.selectors import entitlements_for
from billing.usage import CREDIT_QUANTUM, UnknownPrice, usage_cost, usage_record
from tenants.models import Organization

from .catalog.selectors import ModelOption, model_options, provider_keys_for
from .context import context_build
from .files import FileRefused, file_sniff, file_text, text_fit, tokens_estimate
from .models import Attachment, Message, Thread
from .redis import sync_client

TITLE_MAX = 200


def current_organization() -> Organization:
    """The organization whose schema is active (tasks and schema_context only carry the schema name)."""
    tenant = connection.tenant
    if isinstance(tenant, Organization):
        return tenant
    return Organization.objects.get(schema_name=connection.schema_name)


class ChatError(Exception):
    """A request we refuse, with a message for the person who made it."""


class SendLimited(ChatError):
    """A member sent more messages this minute than the plan allows; `retry_after` is in seconds."""

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


def send_allow(*, organization: Organization, user: User) -> None:
    """Count one send from the chat pages; SendLimited when the member is over the plan's messages a minute."""
    limit = entitlements_for(organization).messages_per_minute
    wait = send_limited(organization_id=organization.pk, user_id=user.pk, per_minute=limit)
    if wait is not None:
        raise SendLimited(ngettext(
            "You are sending messages faster than your plan allows (%(limit)s a minute). Try again in "
            "%(seconds)s second.",
            "You are sending messages faster than your plan allows (%(limit)s a minute). Try again in "
            "%(seconds)s seconds.", wait) % {"limit": limit, "seconds": wait}, retry_after=wait)


# ---------------------------------------------------------------- models available


def options_for(organization: Organization) -> list[ModelOption]:
    """The models this organization may chat with now (plan tier, provider reachable)."""
    return model_options(entitlements=entitlements_for(organization), own_keys=provider_keys_for(organization))


def option_get(organization: Organization, model_id: str) -> ModelOption:
    for option in options_for(organization):
        if option.id == model_id:
            return option
    raise ChatError(_("This model is not available on your plan. Choose another one."))


def candidates_for(organization: Organization, option: ModelOption) -> list[ModelOption]:
    """The model, then its fallbacks that this organization may also use, in order."""
    fallbacks = [model_id for model_id in option.model.fallbacks if model_id != option.id]
    if not fallbacks:
        return [option]
    allowed = model_options(entitlements=entitlements_for(organization), own_keys=provider_keys_for(organization),
                            ids=fallbacks)
    return [option, *allowed]


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
def thread_delete(*, thread: Thread) -> None:
    for message in thread.messages.filter(status__in=Message.ACTIVE):
        generation_stop(message=message)
    files = [attachment.file.name for attachment in thread.attachments.all()]
    thread.delete()
    storage = Attachment._meta.get_field("file").storage
    transaction.on_commit(lambda: [storage.delete(name) for name in files])


# ---------------------------------------------------------------- attachments


def attachment_upload(*, organization: Organization, thread: Thread | None, user: User, upload) -> Attachment:
    """Store an uploaded file after checking its size (plan limit) and its type (by content)."""
    limit_mb = entitlements_for(organization).max_upload_mb
    if upload.size > limit_mb * 1024 * 1024:
        raise FileRefused(_("This file is larger than your plan allows (%(limit)s MB).") % {"limit": limit_mb})
    data = upload.read()
    kind = file_sniff(data, upload.name)
    text, truncated = "", False
    if not kind.is_image:
        text, truncated = text_fit(file_text(data, kind), settings.CHAT_ATTACHMENT_TOKEN_BUDGET)
    attachment = Attachment(
        thread=thread, uploaded_by=user, token=secrets.token_hex(16), filename=upload.name[-200:],
        kind=kind.kind, content_type=kind.content_type, size=len(data), text=text,
        text_tokens=tokens_estimate(text), truncated=truncated,
    )
    upload.seek(0)
    attachment.file.save(upload.name[-100:], upload, save=False)
    attachment.save()
    return attachment


# ---------------------------------------------------------------- questions and answers


def _answer_create(*, organization: Organization, thread: Thread, option: ModelOption, user: User) -> Message:
    """A pending answer with its worst-case cost reserved, then the generation queued (on commit)."""
    max_tokens = min(option.model.max_output_tokens, settings.CHAT_MAX_OUTPUT_TOKENS)
    answer = Message.objects.create(thread=thread, role=Message.Role.ASSISTANT, status=Message.Status.PENDING,
                                    model_id=option.id, max_tokens=max_tokens)
    _messages, prompt_tokens = context_build(thread=thread, answer=answer, model=option.model, load_images=False)
    answer.prompt_tokens_estimate = prompt_tokens
    answer.save(update_fields=["prompt_tokens_estimate"])
    worst = max(candidate.cost_bound(input_tokens=prompt_tokens, output_tokens=max_tokens)
                for candidate in candidates_for(organization, option))
    worst = worst.quantize(CREDIT_QUANTUM, rounding=ROUND_UP)
    if worst > 0:  # raises InsufficientCredits, and the whole send rolls back
        credit_reserve(organization=organization, amount=worst, key=answer.billing_key, user=user,
                       description=f"chat answer {answer.pk}")
    Thread.objects.filter(pk=thread.pk).update(updated_at=timezone.now(), model_id=option.id)
    schema = connection.schema_name
    transaction.on_commit(lambda: _generation_enqueue(answer.pk, schema))
    return answer


PENDING_SET = "chat:pending"


def _generation_enqueue(answer_id: int, schema: str) -> None:
    from .tasks import generation_run

    # Until a worker claims it: an answer whose task is lost is closed by the reaper, never left pending.
    sync_client().zadd(PENDING_SET, {f"chat:gen:{schema}:{answer_id}": time.time()})
    generation_run.apply_async(args=[answer_id], headers={"_schema_name": schema})


def _busy(thread: Thread) -> bool:
    """Whether an answer is running; locks the thread so two sends cannot both start one."""
    Thread.objects.select_for_update().filter(pk=thread.pk).first()
    return thread.messages.filter(status__in=Message.ACTIVE).exists()


@transaction.atomic
def message_send(*, organization: Organization, user: User, thread: Thread, content: str,
                 model_id: str | None = None, attachment_tokens: list[str] | None = None) -> Message:
    """Ask a question in `thread`; returns the (pending) answer."""
    content = content.strip()
    attachments = list(Attachment.objects.filter(token__in=attachment_tokens or [], uploaded_by=user,
                                                 message__isnull=True))
    if not content and not attachments:
        raise ChatError(_("Write a message first."))
    if _busy(thread):
        raise ChatError(_("Wait for the current answer to finish, or stop it."))
    option = option_get(organization, model_id or thread.model_id)
    if any(a.is_image for a in attachments) and not option.model.vision:
        raise ChatError(_("%(model)s cannot read images. Choose a model that can, or remove the image.")
                        % {"model": option.model.display_name})
    question = Message.objects.create(thread=thread, role=Message.Role.USER, content=content)
    Attachment.objects.filter(pk__in=[a.pk for a in attachments]).update(message=question, thread=thread)
    return _answer_create(organization=organization, thread=thread, option=option, user=user)


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
    sync_client().set(cancel_key(message.stream_key), "1", ex=3600)


# ---------------------------------------------------------------- closing an answer


def _credits_for(*, served: str, input_tokens: int, output_tokens: int,
                 reservation: CreditReservation | None) -> tuple[Decimal, Price | None]:
    try:
        cost = usage_cost(kind=UsageEvent.Kind.MODEL, key=served, input_tokens=input_tokens,
                          output_tokens=output_tokens)
    except UnknownPrice:
        return Decimal(0), None
    credits = cost.credits
    if reservation is not None:
        credits = min(credits, reservation.amount)  # never more than the person agreed to hold
    return credits, cost.price


@transaction.atomic
def answer_finish(*, answer_id: int, status: str, text: str, served_model_id: str = "",
                  input_tokens: int | None = None, output_tokens: int | None = None, finish_reason: str = "",
                  error: str = "") -> Message | None:
    """Write the finished answer, its usage and its cost in one transaction; once (None when already closed).

    Token counts are the provider's; when it never said (a stop, a crash, a cut stream) they are
    estimated from the prompt and the text produced, so partial answers pay for what they used.
    """
    # Lock the answer only: FOR UPDATE on the joined thread would also lock it (see billing.ledger._close).
    answer = Message.objects.select_for_update(of=("self",)).select_related("thread").filter(pk=answer_id).first()
    if answer is None or answer.status not in Message.ACTIVE:
        return None
    organization = current_organization()
    estimated = input_tokens is None or output_tokens is None
    if estimated:
        produced = bool(text)
        input_tokens = answer.prompt_tokens_estimate if produced else 0
        output_tokens = tokens_estimate(text)
    served = served_model_id or answer.model_id
    reservation = CreditReservation.objects.filter(key=answer.billing_key).first()
    credits, price = _credits_for(served=served, input_tokens=input_tokens, output_tokens=output_tokens,
                                  reservation=reservation)
    if reservation is not None:
        if credits > 0:
            credit_settle(reservation=reservation, actual=credits)
        else:
            credit_release(reservation=reservation)
    if price is not None and (input_tokens or output_tokens):
        usage_record(organization=organization, kind=UsageEvent.Kind.MODEL, key=served,
                     request_id=answer.billing_key, credits=credits, price=price, user=answer.thread.user,
                     input_tokens=input_tokens, output_tokens=output_tokens)
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
    if answer.thread.title_is_auto and not answer.thread.title and status == Message.Status.COMPLETE:
        schema = connection.schema_name
        transaction.on_commit(lambda: _title_enqueue(answer.thread_id, schema))
    return answer


def _title_enqueue(thread_id: int, schema: str) -> None:
    from .tasks import thread_title

    thread_title.apply_async(args=[thread_id], headers={"_schema_name": schema})
