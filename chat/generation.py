"""Running an answer, independently of any HTTP request.

A Celery task (queue `generation`) claims the pending answer, streams it from the provider
through the router and appends the text to a Redis stream in small batches; browsers read
that stream over SSE (chat.streams), so a refresh or a second tab resumes the same answer
and closing the tab changes nothing. While it runs, the generation

- heartbeats in the sorted set `chat:active`, so a reaper can close answers whose worker
  died (`interrupted`, billed for what they produced: never a silent half-answer);
- watches its cancel key, so Stop ends it within a second (`stopped`, also billed);
- holds one of its organization's slots (billing.ratelimits `slot_acquire`, the plan's
  `concurrent_answers`), its lease renewed with the heartbeat and released in `finally`, so a
  dead worker's slot frees itself within CHAT_HEARTBEAT_TIMEOUT. An answer that finds every slot
  taken stays pending and its task asks again in SLOT_RETRY_SECONDS (chat.tasks): it waits its
  turn, for at most CHAT_PENDING_TIMEOUT from when it was queued, then the reaper fails it with
  its hold released (a question never waits without bound). How many can wait is bounded by the
  plan's per-member sends a minute and one running answer per thread.

Reasons stored in `Message.error` are English msgids (gettext_noop) that the page translates
for its reader (`{% translate message.error %}`); the API returns them as written.

Redis stream entries: `{"t": "start", "model", "name"}`, `{"t": "delta", "d": text}`,
`{"t": "end", "status"}` (after the database has the final message).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection
from django.utils.translation import gettext_noop

from billing.ratelimits import Slot, slot_acquire, slot_release, slot_renew_async, slots_held

from .catalog.selectors import ModelOption
from .context import context_build
from .loop import answers_run
from .models import Message
from .providers import ChatRequest, Finish, ProviderError, StreamError, TextDelta, Usage
from .redis import async_client, sync_client
from .routing import Served, route_stream
from .services import (
    PENDING_SET,
    ChatError,
    answer_finish,
    cancel_key,
    candidates_for,
    current_organization_ref,
    option_get,
)
from .snapshot import org_config_now

logger = logging.getLogger(__name__)

ACTIVE_SET = "chat:active"
STREAM_TTL = 3600  # a finished answer's stream stays readable this long (late resumes)
STREAM_MAXLEN = 20_000
SLOT_KIND = "answers"
SLOT_RETRY_SECONDS = 1.0  # an answer waiting for a slot asks again this soon


@dataclass
class Outcome:
    text_parts: list[str] = field(default_factory=list)
    served: ModelOption | None = None
    usage: Usage | None = None
    finish_reason: str = ""
    error: ProviderError | None = None
    cancelled: bool = False

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def status(self) -> str:
        if self.cancelled:
            return Message.Status.STOPPED
        if self.error is not None:
            return Message.Status.INTERRUPTED if self.text_parts else Message.Status.FAILED
        return Message.Status.COMPLETE


async def generation_stream(*, key: str, candidates: list[ModelOption], request: ChatRequest,
                            own_keys: dict[str, str], slot: Slot | None = None) -> Outcome:
    """Stream the answer into the Redis stream `key`; returns what happened. Never raises ProviderError.
    The heartbeat also renews `slot`'s lease."""
    client = async_client()
    outcome = Outcome()
    pending: list[str] = []
    lock = asyncio.Lock()
    flush_every = settings.CHAT_FLUSH_SECONDS

    async def flush() -> None:
        async with lock:  # one writer at a time keeps the stream in order
            if pending:
                text = "".join(pending)
                pending.clear()
                await client.xadd(key, {"t": "delta", "d": text}, maxlen=STREAM_MAXLEN, approximate=True)

    async def consume() -> None:
        last_flush = time.monotonic()
        async for event in route_stream(candidates, request, own_keys=own_keys):
            if isinstance(event, TextDelta):
                first = not outcome.text_parts
                outcome.text_parts.append(event.text)
                pending.append(event.text)
                if first or time.monotonic() - last_flush >= flush_every:  # the first words go out at once
                    await flush()
                    last_flush = time.monotonic()
            elif isinstance(event, Served):
                outcome.served = event.option
                await client.xadd(key, {"t": "start", "model": event.option.id,
                                        "name": event.option.model.display_name})
            elif isinstance(event, Usage):
                outcome.usage = event
            elif isinstance(event, Finish):
                outcome.finish_reason = event.reason
            elif isinstance(event, StreamError):
                outcome.error = event.error
        await flush()

    task = asyncio.create_task(consume())
    cancel, member = cancel_key(key), key
    next_check = next_beat = 0.0
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=flush_every)
            await flush()  # text that arrived before a pause goes out now, not with the next token
            now = time.monotonic()
            if now >= next_beat:
                await client.zadd(ACTIVE_SET, {member: time.time()})
                if slot is not None:
                    await slot_renew_async(client, slot)
                next_beat = now + settings.CHAT_HEARTBEAT_SECONDS
            if now >= next_check and not task.done():
                next_check = now + 0.25
                if await client.exists(cancel):
                    outcome.cancelled = True
                    task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not outcome.cancelled:
                raise
        await flush()
    finally:
        if not task.done():
            task.cancel()
    return outcome


def stream_end(key: str, status: str) -> None:
    """Tell readers the answer is final (the database already has it) and let the stream expire."""
    client = sync_client()
    with client.pipeline(transaction=True) as pipe:
        pipe.xadd(key, {"t": "end", "status": status})
        pipe.expire(key, STREAM_TTL)
        pipe.zrem(ACTIVE_SET, key)
        pipe.zrem(PENDING_SET, key)
        pipe.delete(cancel_key(key))
        pipe.execute()


def stream_text(key: str) -> str:
    """The text a stream holds so far (what a dead worker had written)."""
    return "".join(fields.get("d", "") for _id, fields in sync_client().xrange(key) if fields.get("t") == "delta")


def _claim(answer_id: int) -> bool:
    return bool(Message.objects.filter(pk=answer_id, status=Message.Status.PENDING)
                .update(status=Message.Status.STREAMING))


def _heartbeat_alive(key: str) -> bool:
    score = sync_client().zscore(ACTIVE_SET, key)
    return score is not None and time.time() - score < settings.CHAT_HEARTBEAT_TIMEOUT


def _slot_take(organization) -> Slot | None:
    return slot_acquire(kind=SLOT_KIND, organization_id=organization.pk,
                        limit=org_config_now(organization.pk).entitlements.concurrent_answers,
                        lease_seconds=settings.CHAT_HEARTBEAT_TIMEOUT)


def answer_generate(answer_id: int) -> bool:
    """Generate the pending answer `answer_id` (in the current schema). Safe to call twice.

    False when its organization already generates as many answers as its plan allows: the answer
    stays pending (its place in the reaper's pending set kept), for the caller to run again soon."""
    answer = Message.objects.select_related("thread").filter(pk=answer_id).first()
    if answer is None:
        return True
    organization = current_organization_ref()
    slot = None
    # A stopped answer or a redelivered one needs no slot: it is closed at once.
    if answer.status == Message.Status.PENDING and not sync_client().exists(cancel_key(answer.stream_key)):
        slot = _slot_take(organization)
        if slot is None:
            # Waiting its turn keeps the time it was queued: the reaper bounds the wait (CHAT_PENDING_TIMEOUT).
            sync_client().zadd(PENDING_SET, {answer.stream_key: time.time()}, nx=True)
            return False
    try:
        _answer_run(answer, organization, slot)
    finally:
        if slot is not None:
            slot_release(slot)
    return True


def _answer_run(answer: Message, organization, slot: Slot | None) -> None:
    answer_id, key = answer.pk, answer.stream_key
    if not _claim(answer_id):
        # Redelivered after a worker died: close it as interrupted, never generate it twice.
        if answer.status == Message.Status.STREAMING and not _heartbeat_alive(key):
            answer_recover(answer)
        return
    with sync_client().pipeline(transaction=True) as pipe:
        pipe.zadd(ACTIVE_SET, {key: time.time()})
        pipe.zrem(PENDING_SET, key)
        pipe.execute()
    if sync_client().exists(cancel_key(key)):
        answer_finish(answer_id=answer_id, status=Message.Status.STOPPED, text="")
        stream_end(key, Message.Status.STOPPED)
        return
    try:
        option = option_get(organization, answer.model_id)
    except ChatError as error:  # the plan changed or the model went away since it was asked
        answer_finish(answer_id=answer_id, status=Message.Status.FAILED, text="", error=str(error))
        stream_end(key, Message.Status.FAILED)
        return
    messages, _estimate = context_build(thread=answer.thread, answer=answer, model=option.model)
    request = ChatRequest(model=option.model.provider_model, messages=messages, max_tokens=answer.max_tokens)
    candidates, own_keys = candidates_for(organization, option), org_config_now(organization.pk).own_keys
    # No database work while the answer streams: give the connection back instead of holding one
    # per running answer (Django reconnects, with the schema, for answer_finish). Not inside a
    # transaction (eager tasks in tests): closing would abort it.
    if not connection.in_atomic_block:
        connection.close()
    # On the process's long-lived loop: its Redis and provider connections serve every answer (chat.loop).
    outcome = answers_run(generation_stream(key=key, candidates=candidates, request=request, own_keys=own_keys,
                                            slot=slot))
    usage = outcome.usage
    final = answer_finish(
        answer_id=answer_id, status=outcome.status, text=outcome.text,
        served_model_id=outcome.served.id if outcome.served else "",
        input_tokens=usage.input_tokens if usage else None, output_tokens=usage.output_tokens if usage else None,
        finish_reason=outcome.finish_reason, error=_error_text(outcome.error),
    )
    logger.info("chat answer %s %s model=%s", answer_id, outcome.status,
                outcome.served.id if outcome.served else answer.model_id)
    stream_end(key, final.status if final else outcome.status)


def _error_text(error: ProviderError | None) -> str:
    if error is None:
        return ""
    return {
        ProviderError.AUTH: gettext_noop("The provider refused our credentials."),
        ProviderError.RATE_LIMITED: gettext_noop("The provider is busy (rate limited). Try again in a moment."),
        ProviderError.TIMEOUT: gettext_noop("The provider stopped answering (timeout)."),
        ProviderError.INTERRUPTED: gettext_noop("The provider cut the answer short."),
        ProviderError.BAD_REQUEST: gettext_noop("The provider refused this request."),
        ProviderError.CONFIG: gettext_noop(
            "Your organization's key for this provider cannot be used (it has characters an HTTP header cannot "
            "carry). An admin can replace it in Settings → AI providers."),
    }.get(error.kind, gettext_noop("The provider is unavailable. Try again in a moment."))


def answer_recover(answer: Message) -> None:
    """Close an answer whose worker died: keep the text it streamed, mark it interrupted, bill that."""
    key = answer.stream_key
    text = stream_text(key)
    final = answer_finish(answer_id=answer.pk, status=Message.Status.INTERRUPTED, text=text,
                          error=gettext_noop("The answer was interrupted (the worker stopped)."))
    if final is not None:
        logger.warning("chat answer %s interrupted: worker lost", answer.pk)
    stream_end(key, Message.Status.INTERRUPTED)


def answer_never_started(answer: Message) -> None:
    """No worker claimed it in time (its task was lost, or it waited too long behind its organization's cap of
    answers at once): close it as failed and give the hold back. A worker claiming it meanwhile wins. The reason
    names the cap only when the organization's answers at once are all taken."""
    organization = current_organization_ref()
    at_cap = (slots_held(kind=SLOT_KIND, organization_id=organization.pk)
              >= org_config_now(organization.pk).entitlements.concurrent_answers)
    reason = (gettext_noop("The answer could not start in time (too many answers at once). Ask again.") if at_cap
              else gettext_noop("The answer could not start in time. Ask again."))
    final = answer_finish(answer_id=answer.pk, status=Message.Status.FAILED, text="", only_from=Message.UNCLAIMED,
                          error=reason)
    if final is not None:
        logger.warning("chat answer %s never started", answer.pk)
        stream_end(answer.stream_key, Message.Status.FAILED)
