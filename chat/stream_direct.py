"""An answer's server-sent events without Django's request cycle, for the URL the page was given.

Under load most of a stream request's cost was Django's: a dozen middleware and four queries (session, user,
organization, membership) plus the message's, on one of a few setup threads, so streams opened up to a second
behind their answer. The page's stream URL carries a stream token (chat.streams.stream_token): signed, for one
answer of its asker, bound to the session that asked (its digest; the session cookie must come with it), valid for
CHAT_STREAM_TOKEN_SECONDS. A request that presents a valid one is served here with no database query: the
person's stream lease and the answer's Redis stream, as Django's view would (chat.views.message_stream).

Anything else (no token, a bad or expired one, another session, another method) is left to Django's view, which
checks everything again: this route only ever serves what that view would serve to the same session. What a token
cannot know is a change after it was made: a member removed from the organization, or a password changed, can still
read the rest of their own answer for at most CHAT_STREAM_TOKEN_SECONDS (a logout ends it: the browser no longer
has the session).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from urllib.parse import parse_qs

from django.conf import settings

from core.scope import scope_cookie, scope_header

from .streams import (
    STREAM_RETRY_SECONDS,
    STREAMS_TOO_MANY,
    answer_events,
    leased,
    stream_lease_take,
    stream_token_read,
)

PATH = re.compile(r"^/o/(?P<slug>[-a-zA-Z0-9_]+)/chat/m/(?P<message>\d+)/events/$")
HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache, no-transform"),
           (b"x-accel-buffering", b"no"), (b"x-content-type-options", b"nosniff")]


async def stream_direct(scope, receive, send) -> bool:
    """Serve the stream if the request carries a valid stream token for its session; False to leave it to Django."""
    match = PATH.match(scope.get("path", ""))
    if match is None or scope.get("method") != "GET":
        return False
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    token = query.get("s", [""])[0]
    if not token:
        return False
    grant = stream_token_read(token, session_key=scope_cookie(scope, settings.SESSION_COOKIE_NAME), slug=match["slug"],
                              message_id=int(match["message"]))
    if grant is None:
        return False
    lease = await stream_lease_take(grant.user_id)
    if lease is None:
        body = str(STREAMS_TOO_MANY).encode()  # in the default language: EventSource never shows it
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", str(STREAM_RETRY_SECONDS).encode()),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return True
    # A stream not there yet is an answer not started yet, never one that ended and expired: a token lives
    # shorter than an ended answer's stream (CHAT_STREAM_TOKEN_SECONDS < chat.generation.STREAM_TTL).
    after = scope_header(scope, b"last-event-id") or query.get("after", ["0-0"])[0]
    await _respond(leased(answer_events(grant.key, after), lease), receive, send)
    return True


async def _respond(events, receive, send) -> None:
    """Send `events` as the response body until they end or the client leaves (then they are closed, which gives
    the lease back and unsubscribes from the hub)."""

    async def body() -> None:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        async for chunk in events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    streaming, watching = asyncio.create_task(body()), asyncio.create_task(gone())
    try:
        await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (streaming, watching):
            task.cancel()
        try:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await streaming
        finally:
            await events.aclose()
