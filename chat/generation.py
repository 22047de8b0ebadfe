"""Running an answer, independently of any HTTP request.

A Celery task (queue `generation`) claims the pending answer and builds its context; the answer then streams
from the provider through the router on the process's event loop (chat.loop), holding no worker thread, and
appends the text to a Redis stream in small batches; a closer thread writes the final message. Browsers read
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
import contextlib
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection
from django.utils.translation import gettext_noop
from django_tenants.utils import schema_context
from psycopg import sql

from billing.ratelimits import Slot, slot_acquire, slot_release, slot_renew_async, slots_held
from core.redis_clients import redis_async_client, redis_client

from .catalog.selectors import ModelOption
from .context import HISTORY_SQL, context_fit, history_from_rows, history_params
from .loop import answers_run, answers_start
from .models import Attachment, Message, Thread, answer_stream_key
from .providers import ChatRequest, Finish, ProviderError, StreamError, TextDelta, Usage
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
    client = redis_async_client()
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
    client = redis_client()
    with client.pipeline(transaction=True) as pipe:
        pipe.xadd(key, {"t": "end", "status": status})
        pipe.expire(key, STREAM_TTL)
        pipe.zrem(ACTIVE_SET, key)
        pipe.zrem(PENDING_SET, key)
        pipe.delete(cancel_key(key))
        pipe.execute()


def stream_text(key: str) -> str:
    """The text a stream holds so far (what a dead worker had written)."""
    return "".join(fields.get("d", "") for _id, fields in redis_client().xrange(key) if fields.get("t") == "delta")


def _claim(answer_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {Message._meta.db_table} SET status = %s WHERE id = %s AND status = %s",
                       [Message.Status.STREAMING, answer_id, Message.Status.PENDING])
        return cursor.rowcount == 1


def _heartbeat_alive(key: str) -> bool:
    score = redis_client().zscore(ACTIVE_SET, key)
    return score is not None and time.time() - score < settings.CHAT_HEARTBEAT_TIMEOUT


def _slot_take(organization) -> Slot | None:
    return slot_acquire(kind=SLOT_KIND, organization_id=organization.pk,
                        limit=org_config_now(organization.pk).entitlements.concurrent_answers,
                        lease_seconds=settings.CHAT_HEARTBEAT_TIMEOUT)


def answer_generate(answer_id: int, *, wait: bool = True) -> bool:
    """Generate the pending answer `answer_id` (in the current schema). Safe to call twice.

    False when its organization already generates as many answers as its plan allows: the answer
    stays pending (its place in the reaper's pending set kept), for the caller to run again soon.

    With `wait=False` (the generation worker) the call returns once the answer streams: it streams on the
    process's answers loop and is closed by a closer thread (`answers_drain` waits for them at shutdown), so a
    worker thread is held for the claim and the context, not for the whole answer."""
    answer = _answer_read(answer_id)
    if answer is None:
        return True
    organization = current_organization_ref()
    if not wait:
        _streaming.enter()  # before the slot and the claim: waiting here holds neither
    slot, streams_on = None, False
    try:
        # A stopped answer or a redelivered one needs no slot: it is closed at once.
        if answer.status == Message.Status.PENDING and not redis_client().exists(cancel_key(answer.stream_key)):
            slot = _slot_take(organization)
            if slot is None:
                # Waiting its turn keeps the time it was queued: the reaper bounds the wait (CHAT_PENDING_TIMEOUT).
                redis_client().zadd(PENDING_SET, {answer.stream_key: time.time()}, nx=True)
                return False
        streams_on = _answer_run(answer, organization, slot, wait=wait)
    finally:
        if not streams_on:
            if slot is not None:
                slot_release(slot)
            if not wait:
                _streaming.leave()
    return True


@dataclass(frozen=True)
class Running:
    """An answer streaming: what closing it needs."""

    answer_id: int
    key: str
    schema: str
    model_id: str
    slot: Slot | None


@dataclass(frozen=True)
class Queued:
    """What a worker reads of an answer to run it (one query, no model instance to build)."""

    pk: int
    status: str
    model_id: str
    max_tokens: int
    thread_id: int
    system_prompt: str

    @property
    def stream_key(self) -> str:
        return answer_stream_key(connection.schema_name, self.pk)


ANSWER_SQL = f"""
SELECT m.status, m.model_id, m.max_tokens, m.thread_id, t.system_prompt
FROM {Message._meta.db_table} m JOIN {Thread._meta.db_table} t ON t.id = m.thread_id WHERE m.id = %s
"""
# The organization's own tables, as its search_path finds them (Django's connection is set to its schema).
HISTORY_HERE = HISTORY_SQL.format(messages=sql.Identifier(Message._meta.db_table),
                                  attachments=sql.Identifier(Attachment._meta.db_table)).as_string(None)


def _answer_read(answer_id: int) -> Queued | None:
    with connection.cursor() as cursor:
        cursor.execute(ANSWER_SQL, [answer_id])
        row = cursor.fetchone()
    return Queued(answer_id, *row) if row else None


def _history(answer: Queued) -> list:
    with connection.cursor() as cursor:
        cursor.execute(HISTORY_HERE, history_params(thread_id=answer.thread_id, before=answer.pk))
        return history_from_rows(cursor.fetchall())


def _answer_run(answer: Queued, organization, slot: Slot | None, *, wait: bool) -> bool:
    """Claim the answer and stream it; True when it streams on after this returns (`wait=False`: closed, and
    its slot released, by a closer thread)."""
    answer_id, key = answer.pk, answer.stream_key
    if not _claim(answer_id):
        # Redelivered after a worker died: close it as interrupted, never generate it twice.
        if answer.status == Message.Status.STREAMING and not _heartbeat_alive(key):
            answer_recover(Message.objects.get(pk=answer_id))
        return False
    with redis_client().pipeline(transaction=True) as pipe:
        pipe.zadd(ACTIVE_SET, {key: time.time()})
        pipe.zrem(PENDING_SET, key)
        pipe.execute()
    if redis_client().exists(cancel_key(key)):
        answer_finish(answer_id=answer_id, status=Message.Status.STOPPED, text="")
        stream_end(key, Message.Status.STOPPED)
        return False
    try:
        option = option_get(organization, answer.model_id)
    except ChatError as error:  # the plan changed or the model went away since it was asked
        answer_finish(answer_id=answer_id, status=Message.Status.FAILED, text="", error=str(error))
        stream_end(key, Message.Status.FAILED)
        return False
    messages, _estimate = context_fit(system_prompt=answer.system_prompt, history=_history(answer),
                                      model=option.model, max_tokens=answer.max_tokens)
    request = ChatRequest(model=option.model.provider_model, messages=messages, max_tokens=answer.max_tokens)
    candidates, own_keys = candidates_for(organization, option), org_config_now(organization.pk).own_keys
    running = Running(answer_id=answer_id, key=key, schema=connection.schema_name, model_id=answer.model_id,
                      slot=slot)
    # No database work while the answer streams: give the connection back instead of holding one
    # per running answer (Django reconnects, with the schema, for answer_finish). Not inside a
    # transaction (eager tasks in tests): closing would abort it.
    if not connection.in_atomic_block:
        connection.close()
    # On the process's long-lived loop: its Redis and provider connections serve every answer (chat.loop).
    stream = generation_stream(key=key, candidates=candidates, request=request, own_keys=own_keys, slot=slot)
    if wait:
        _answer_close(running, answers_run(stream))
        return False
    answers_start(stream, lambda done: _closer().submit(_answer_close_later, running, done))
    return True


def _answer_close(running: Running, outcome: Outcome) -> None:
    usage = outcome.usage
    final = answer_finish(
        answer_id=running.answer_id, status=outcome.status, text=outcome.text,
        served_model_id=outcome.served.id if outcome.served else "",
        input_tokens=usage.input_tokens if usage else None, output_tokens=usage.output_tokens if usage else None,
        finish_reason=outcome.finish_reason, error=_error_text(outcome.error),
    )
    logger.info("chat answer %s %s model=%s", running.answer_id, outcome.status,
                outcome.served.id if outcome.served else running.model_id)
    stream_end(running.key, final.status if final else outcome.status)


def _answer_close_later(running: Running, done: Future) -> None:
    """On a closer thread, once the answer's stream ended. An answer that cannot be closed (the stream failed,
    the database is away) keeps its place in the reaper's active set: its heartbeat has stopped, so the reaper
    closes it as interrupted, with the text it streamed."""
    try:
        outcome = done.result()
        with schema_context(running.schema):
            _answer_close(running, outcome)
    except Exception:
        logger.exception("chat answer %s could not be closed; the reaper will", running.answer_id)
    finally:
        connection.close()  # back to the pool: a closer thread holds no connection between answers
        if running.slot is not None:
            with contextlib.suppress(Exception):  # its lease runs out by itself
                slot_release(running.slot)
        _streaming.leave()


class _Streaming:
    """How many answers this process streams on its loop: at most GENERATION_MAX_STREAMS (the next claim waits
    for one to end), and none left when the worker stops (`answers_drain`)."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.count = 0

    def enter(self) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.count < settings.GENERATION_MAX_STREAMS)
            self.count += 1

    def leave(self) -> None:
        with self.changed:
            self.count -= 1
            self.changed.notify_all()

    def drain(self, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.count == 0, timeout)


_streaming = _Streaming()
_closers: list = [None, 0]  # this process's closer threads, and its pid (a forked child makes its own)


def _closer() -> ThreadPoolExecutor:
    if _closers[0] is None or _closers[1] != os.getpid():
        _closers[:] = [ThreadPoolExecutor(max_workers=settings.GENERATION_CLOSERS, thread_name_prefix="answers-close"),
                       os.getpid()]
    return _closers[0]


def answers_drain(timeout: float | None = None) -> bool:
    """Wait for the answers this process streams to be closed (a worker's warm shutdown); False on timeout."""
    return _streaming.drain(settings.GENERATION_DRAIN_SECONDS if timeout is None else timeout)


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
