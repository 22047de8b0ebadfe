"""Reading answers over SSE: one Redis reader per web process, fanned out to every open stream.

Each browser stream first catches up with `XRANGE` from its `Last-Event-ID`, then receives
new entries from the process's `StreamHub`, which keeps one blocking `XREAD` over all the
keys being watched (3 Redis connections for 1,000 streams instead of 1,001: PITFALLS.md).
A new key wakes the hub's read at once through a per-hub control stream.

Connections end by themselves after `CHAT_SSE_MAX_SECONDS` with a `retry:` line, so a
deploy never has to cut a stream: the browser reconnects with `Last-Event-ID` and resumes.

The page opens an answer's stream at a URL carrying a stream token (`stream_token`): a signed capability to
read that one answer, for its asker, in the session that asked, for CHAT_STREAM_TOKEN_SECONDS. With it the
stream is served without Django's request cycle (chat.stream_direct); without it, or once it expired, by
Django's view, which checks the session, the membership and the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import logging
import time
import uuid
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.utils.crypto import constant_time_compare
from django.utils.translation import gettext_lazy

from billing.ratelimits import Slot, slot_acquire_async
from core.metrics import chat_streams_open, ratelimit_rejected
from core.redis_clients import BLOCK_MS, redis_async_client, redis_async_reader

from .models import answer_stream_key
from .redis import async_client_close

logger = logging.getLogger(__name__)

RETRY_MS = 1000
STREAM_RETRY_SECONDS = 5  # Retry-After of a stream refused over CHAT_STREAMS_PER_USER
STREAMS_TOO_MANY = gettext_lazy("Too many answers are open in your tabs. Close some and reload.")


def _id_tuple(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


class StreamHub:
    """Per event loop: watches keys for subscribers with one blocking XREAD."""

    def __init__(self) -> None:
        self.subscribers: dict[str, set[asyncio.Queue]] = defaultdict(set)
        self.cursors: dict[str, str] = {}
        self.control = f"chat:hub:{uuid.uuid4().hex}"
        self.control_cursor = "0-0"
        self.task: asyncio.Task | None = None
        self.closed = False

    async def subscribe(self, key: str, after: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self.subscribers[key].add(queue)
        if key not in self.cursors or _id_tuple(after) < _id_tuple(self.cursors[key]):
            self.cursors[key] = after
        if self.task is None or self.task.done():
            # A fresh context: the reader outlives the request that started it.
            self.task = asyncio.create_task(self._read_forever(), context=contextvars.Context())
        else:
            await self.wake()  # the blocked read returns and watches the new key too
        return queue

    def unsubscribe(self, key: str, queue: asyncio.Queue) -> None:
        queues = self.subscribers.get(key)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self.subscribers[key]
                self.cursors.pop(key, None)

    async def _read_forever(self) -> None:
        client = redis_async_reader()  # its own connection: the blocking read never waits for the pool
        try:
            await self._read_loop(client)
        finally:
            await client.aclose()

    async def wake(self) -> None:
        async with redis_async_client().pipeline(transaction=False) as pipe:
            pipe.xadd(self.control, {"w": "1"}, maxlen=100, approximate=True)
            pipe.expire(self.control, 86_400)
            await pipe.execute()

    async def _read_loop(self, client) -> None:
        task = asyncio.current_task()
        while not self.closed:  # idles on the control stream alone; lives as long as the event loop
            if task.cancelling():
                # redis-py awaits asyncio.wait_for, which on Python 3.11 can swallow a cancellation
                # (CPython gh-86296): without this the loop outlives its event loop's shutdown.
                raise asyncio.CancelledError
            streams = {self.control: self.control_cursor, **self.cursors}
            try:
                replies = await client.xread(streams, block=BLOCK_MS, count=500)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis restarting: streams resume from their cursors
                if asyncio.current_task().cancelling():
                    raise asyncio.CancelledError from None  # redis-py turned our cancellation into an error
                logger.exception("chat stream hub read failed")
                await asyncio.sleep(0.5)
                continue
            for key, entries in replies or []:
                if key == self.control:
                    self.control_cursor = entries[-1][0]
                    continue
                if key in self.cursors:
                    self.cursors[key] = entries[-1][0]
                for queue in list(self.subscribers.get(key, ())):
                    for entry in entries:
                        queue.put_nowait(entry)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StreamHub] = weakref.WeakKeyDictionary()


def hub() -> StreamHub:
    loop = asyncio.get_running_loop()
    found = _hubs.get(loop)
    if found is None:
        found = _hubs[loop] = StreamHub()
    return found


async def streams_close() -> None:
    """Stop this loop's hub and close its Redis client (for loops that end: tests, scripts)."""
    found = _hubs.pop(asyncio.get_running_loop(), None)
    if found is not None and found.task is not None and not found.task.done():
        # Ask, rather than cancel: redis-py may hold a cancelled blocking read until it returns.
        found.closed = True
        await found.wake()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(found.task, BLOCK_MS / 1000 + 5)
    await async_client_close()


def sse(event: str, data: dict, entry_id: str | None = None) -> bytes:
    head = f"id: {entry_id}\n" if entry_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _encode(entry_id: str, fields: dict) -> bytes:
    kind = fields.get("t")
    if kind == "delta":
        return sse("delta", {"text": fields.get("d", "")}, entry_id)
    if kind == "start":
        return sse("start", {"model": fields.get("model", ""), "name": fields.get("name", "")}, entry_id)
    return sse("end", {"status": fields.get("status", "")}, entry_id)


async def answer_final(key: str, status: str, after: str = "0-0") -> AsyncIterator[bytes]:
    """The stream of an answer that is already final. While Redis keeps it (STREAM_TTL), its entries after `after`
    up to its end: a stream opened late, behind a busy server, still gets the text as it was streamed. Past
    that, its end alone (the page then shows the answer from the database)."""
    after = after if _valid_id(after) else "0-0"
    entries = await redis_async_client().xrange(key, min=f"({after}" if after != "0-0" else "-")
    if entries and entries[-1][1].get("t") == "end":
        yield f"retry: {RETRY_MS}\n\n".encode()
        for entry_id, fields in entries:
            yield _encode(entry_id, fields)
        return
    yield sse("end", {"status": status})


async def answer_events(key: str, after: str = "0-0") -> AsyncIterator[bytes]:
    """SSE bytes for the stream `key`, from just after `after`, until its end entry (or the time limit)."""
    after = after if _valid_id(after) else "0-0"
    deadline = time.monotonic() + settings.CHAT_SSE_MAX_SECONDS
    stream_hub = hub()
    queue = await stream_hub.subscribe(key, after)
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        last = _id_tuple(after)
        for entry_id, fields in await redis_async_client().xrange(key, min=f"({after}" if after != "0-0" else "-"):
            last = _id_tuple(entry_id)
            yield _encode(entry_id, fields)
            if fields.get("t") == "end":
                return
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                yield b": reconnect\n\n"  # the browser resumes from its Last-Event-ID
                return
            try:
                # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation (the client left)
                # that lands as an entry arrives, and the generator then streams to nobody.
                async with asyncio.timeout(min(remaining, settings.CHAT_SSE_KEEPALIVE_SECONDS)):
                    entry_id, fields = await queue.get()
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if _id_tuple(entry_id) <= last:
                continue  # already sent during the catch-up
            last = _id_tuple(entry_id)
            yield _encode(entry_id, fields)
            if fields.get("t") == "end":
                return
    finally:
        stream_hub.unsubscribe(key, queue)


async def stream_lease_take(user_id: int) -> Slot | None:
    """One of the person's CHAT_STREAMS_PER_USER open streams (shared by every web process), None when all are
    taken. The lease outlives a stream's longest connection (CHAT_SSE_MAX_SECONDS), so a vanished one frees
    itself even if its release never ran."""
    lease = await slot_acquire_async(redis_async_client(), kind="streams", owner_id=user_id,
                                     limit=settings.CHAT_STREAMS_PER_USER,
                                     lease_seconds=settings.CHAT_SSE_MAX_SECONDS + 5)
    if lease is None:
        ratelimit_rejected("streams")
    return lease


async def leased(events: AsyncIterator[bytes], lease: Slot) -> AsyncIterator[bytes]:
    """`events`, giving the stream's lease back when it ends (or the client leaves); counted in
    prumo_chat_streams_open meanwhile."""
    chat_streams_open.inc()
    try:
        async for chunk in events:
            yield chunk
    finally:
        chat_streams_open.dec()
        with contextlib.suppress(Exception):  # the lease expires by itself
            await redis_async_client().zrem(lease.key, lease.token)


STREAM_TOKEN_SALT = "chat.stream"


@dataclass(frozen=True)
class StreamGrant:
    """What a valid stream token allows: reading `message_id`'s stream in `schema`, as `user_id`."""

    user_id: int
    schema: str
    message_id: int

    @property
    def key(self) -> str:
        return answer_stream_key(self.schema, self.message_id)


def session_digest(session_key: str) -> str:
    """A digest of the session key for tokens bound to a session (the key itself is never put in a token)."""
    return hashlib.sha256(f"{STREAM_TOKEN_SALT}:{session_key}".encode()).hexdigest()[:32]


def stream_token(*, user_id: int, session_key: str, slug: str, schema: str, message_id: int) -> str:
    """A token for reading one answer's stream, in the session `session_key` (never itself in the token)."""
    return signing.dumps([user_id, slug, schema, message_id, session_digest(session_key)], salt=STREAM_TOKEN_SALT)


def stream_token_read(token: str, *, session_key: str, slug: str, message_id: int) -> StreamGrant | None:
    """The grant of `token` when it is genuine, not expired, for this answer and organization, and presented with
    the session it was made for; None otherwise (the caller then lets Django's view decide)."""
    try:
        user_id, token_slug, schema, token_message, digest = signing.loads(
            token, salt=STREAM_TOKEN_SALT, max_age=settings.CHAT_STREAM_TOKEN_SECONDS)
    except (signing.BadSignature, ValueError, TypeError):
        return None
    if (token_message != message_id or token_slug != slug or not session_key
            or not constant_time_compare(digest, session_digest(session_key))):
        return None
    return StreamGrant(user_id=int(user_id), schema=str(schema), message_id=message_id)


def _valid_id(entry_id: str) -> bool:
    try:
        _id_tuple(entry_id)
    except ValueError:
        return False
    return True
