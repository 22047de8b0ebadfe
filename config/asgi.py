"""ASGI entry point (gunicorn + uvicorn worker in production, uvicorn in development).

Answer streams (`.../events/`) hold their request open for as long as the answer takes.
Django's ASGI handler gives each request its own thread-sensitive executor, so every open
stream would keep an idle OS thread (1,000 streams = 1,001 threads, PITFALLS.md). Stream
requests instead share one executor: their short synchronous parts (middleware, the
membership lookup) run one at a time on a single thread, and the stream itself is async.

`/v1/` (the OpenAI-compatible gateway) does not go through Django's handler at all: chat.v1
is its own small ASGI app, which spares each call the middleware's thread hops.
"""

import os
import re
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
django_application = get_asgi_application()

from chat import v1  # noqa: E402  (needs the apps loaded by get_asgi_application)
from config.body_limit import body_limited  # noqa: E402

STREAM_PATH = re.compile(r"^/o/[^/]+/chat/m/\d+/events/$|^/try/m/\d+/events/$")
stream_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streams")


@body_limited  # bodies are capped before Django's handler spools them (config.body_limit); /v1 caps its own
async def django_routed(scope, receive, send):
    if scope["type"] == "http" and STREAM_PATH.match(scope.get("path", "")):
        async with ThreadSensitiveContext(executor=stream_executor):
            return await django_application(scope, receive, send)
    return await django_application(scope, receive, send)


async def application(scope, receive, send):
    if scope["type"] == "http" and scope["path"].startswith("/v1/"):
        return await v1.application(scope, receive, send)
    return await django_routed(scope, receive, send)
