"""ASGI entry point (gunicorn + uvicorn worker in production, uvicorn in development).

Django's ASGI handler runs each request's synchronous parts (middleware, sync views) on a thread of
its own, so N requests at once mean N threads and N database connections wanted. Two kinds of chat
request come by the thousand when many people ask at once, and both are bounded here:

- Answer streams (`.../events/`) hold their request open for as long as the answer takes. Those the page
  opens carry a stream token and are served without Django at all (chat.stream_direct). The others' short
  synchronous setup (middleware, the membership lookup) runs on one of CHAT_STREAM_SETUP_THREADS
  single-thread executors, taken in turn (a request's sync parts stay on one thread, as Django needs);
  the stream itself is async. 1,000 streams keep a handful of threads, not 1,000 (PITFALLS.md).
- Chat sends run at most CHAT_SEND_CONCURRENCY at once per process; the next wait for a turn up to
  CHAT_SEND_WAIT_SECONDS and are then refused with 503 and Retry-After before anything is read or
  written (the composer says so and sends again by itself). A thread's composer sends with a send grant,
  served without Django at all (chat.send_direct); the others on a thread each. Without the bound, a burst
  of 1,000 direct sends lagged the event loop past the keep-alive timeout and connections were reset.

`/v1/` (the OpenAI-compatible gateway) does not go through Django's handler at all: chat.v1
is its own small ASGI app, which spares each call the middleware's thread hops.
"""

import asyncio
import itertools
import os
import re
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from django.core.asgi import get_asgi_application

from core.tracing import asgi_traced, tracing_init  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
# Each gunicorn worker imports this module after the fork: the exporter's thread is its own. Before Django loads
# its middleware, which tracing adds to.
tracing_init(service="prumo-web")
django_application = get_asgi_application()

from django.conf import settings  # noqa: E402

from chat import v1  # noqa: E402  (needs the apps loaded by get_asgi_application)
from chat.send_direct import send_direct  # noqa: E402
from chat.stream_direct import stream_direct  # noqa: E402
from core.body_limit import body_limited  # noqa: E402
from core.overload import overloaded_asgi  # noqa: E402

STREAM_PATH = re.compile(r"^/o/[^/]+/chat/m/\d+/events/$|^/try/m/\d+/events/$")
SEND_PATH = re.compile(r"^/o/[^/]+/chat/(new|t/\d+/(send|regenerate|edit))/$")
stream_executors = itertools.cycle([ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"streams-{number}")
                                    for number in range(max(1, settings.CHAT_STREAM_SETUP_THREADS))])
_send_turns: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


def send_turns() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    if loop not in _send_turns:
        _send_turns[loop] = asyncio.Semaphore(settings.CHAT_SEND_CONCURRENCY)
    return _send_turns[loop]


@body_limited  # bodies are capped before Django's handler spools them (core.body_limit); /v1 caps its own
async def django_routed(scope, receive, send):
    path = scope.get("path", "")
    if scope["type"] == "http" and STREAM_PATH.match(path):
        if await stream_direct(scope, receive, send):  # the page's URL, with its stream token
            return None
        async with ThreadSensitiveContext(executor=next(stream_executors)):
            return await django_application(scope, receive, send)
    if scope["type"] == "http" and scope.get("method") == "POST" and SEND_PATH.match(path):
        turns = send_turns()
        try:
            await asyncio.wait_for(turns.acquire(), settings.CHAT_SEND_WAIT_SECONDS)
        except TimeoutError:
            return await overloaded_asgi(send)
        try:
            receive = await send_direct(scope, receive, send)  # the composer's send, with its send grant
            if receive is None:
                return None
            return await django_application(scope, receive, send)
        finally:
            turns.release()
    return await django_application(scope, receive, send)


async def routed(scope, receive, send):
    if scope["type"] == "http" and scope["path"].startswith("/v1/"):
        return await v1.application(scope, receive, send)
    return await django_routed(scope, receive, send)


# A server span for every request when tracing is on, /v1 and the direct chat paths included (core.tracing).
application = asgi_traced(routed)
