"""/v1: the OpenAI-compatible API (`GET /v1/models[/<id>]`, `POST /v1/chat/completions`) as a
small ASGI app that config.asgi routes to before Django's handler.

Why outside Django: under ASGI each of Django's synchronous middleware (18 here) and its
request signals cost a hop to a thread and back, ~25 ms a call in all, for a path that needs
none of them (no session, CSRF, locale, templates or tenant schema). This app does what those
would do for /v1 (request id, size limit, security headers, the key lookup) and leaves the
rest to chat.gateway. On the way to the provider a call costs two Redis round trips (key,
config version and last-used marker in one pipeline; the rate-limit script) and one SQL
statement (the credit hold); the settlement, usage event and token give-back run after the
client has its answer. A key not cached yet costs one statement on the async pool, and none
when the caller's address is over its unauthenticated limit (that limit comes before anything
else, the body included). A body over GATEWAY_MAX_BODY_BYTES is refused (413) unread when its
Content-Length says so, and as soon as it passes the limit otherwise; it is never parsed.

Every response carries `x-request-id` and `x-prumo-overhead-ms`: the time spent here outside
the provider call (up to the first byte for streams).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from django.conf import settings

from billing.ratelimits import ip_limited_async
from core.db_async import async_pool
from core.metrics import gateway_call_record
from core.observability import organization_var, request_context_set, user_var
from core.redis_clients import redis_async_client
from tenants.api_keys import (
    LAST_USED_EVERY,
    KeyAuth,
    auth_from_entry,
    cache_key,
    generation_key,
    key_entry_load_async,
    lookup_prefix,
    used_key,
)
from tenants.audit.records import DAY_MARK_SECONDS, api_key_day_mark, api_key_use_enqueue
from tenants.audit.services import client_ip_from

from . import gateway
from .gateway import GatewayError, Prepared
from .providers import Finish, StreamError, TextDelta, Usage
from .providers.base import ToolCallDelta, tool_calls_assemble
from .routing import Served, route_stream
from .snapshot import CONFIG_VERSION_KEY, OrgConfig, org_config

logger = logging.getLogger(__name__)

SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")]


def _json(body: dict) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


@dataclass
class Call:
    """One /v1 request: what came in, and what the response so far says about it."""

    scope: dict
    receive: object
    send: object
    started: float = field(default_factory=time.perf_counter)
    request_id: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    extra_headers: dict[str, str] = field(default_factory=dict)
    key_id: int | None = None
    touch_key: bool = False  # this call is the key's first in its minute: write last_used_at
    first_use_today: bool | None = None  # the key's first call of the UTC day (None: not known yet)
    upstream: float = 0.0  # seconds spent waiting for the provider (excluded from the overhead)
    responded: bool = False  # the status line went out: an error can no longer change it
    status: int = 0
    overhead: float | None = None  # seconds, when the headers went out
    ttft: float | None = None  # seconds from asking the provider to its first event
    answer: Answer | None = None  # a completion's, once prepared

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.responded = True
        self.status = status
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    def head(self, content_type: bytes, length: int | None = None) -> list[tuple[bytes, bytes]]:
        self.overhead = time.perf_counter() - self.started - self.upstream
        headers = [(b"content-type", content_type), (b"x-request-id", self.request_id.encode()),
                   (b"x-prumo-overhead-ms", f"{self.overhead * 1000:.2f}".encode()), *SECURITY_HEADERS]
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        headers += [(name.encode(), value.encode()) for name, value in self.extra_headers.items()]
        return headers

    async def respond(self, status: int, body: dict) -> None:
        payload = _json(body)
        await self.start(status, self.head(b"application/json", len(payload)))
        await self.send({"type": "http.response.body", "body": payload})

    async def fail(self, error: GatewayError) -> None:
        self.extra_headers.update(error.headers)
        await self.respond(error.status, error.body())

    async def body(self) -> bytes:
        """The request body, refused (413) as soon as it is known to exceed GATEWAY_MAX_BODY_BYTES: from
        its declared length before a byte is read, else while it arrives; never parsed."""
        limit = settings.GATEWAY_MAX_BODY_BYTES
        too_large = GatewayError(413, f"The request body is larger than {limit} bytes.", code="request_too_large")
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)


async def application(scope, receive, send) -> None:
    call = Call(scope=scope, receive=receive, send=send)
    call.headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
    call.request_id = request_context_set(incoming=call.headers.get("x-request-id", ""))
    try:
        await _route(call)
    except GatewayError as error:
        await call.fail(error)
    except ClientGone:
        pass
    except Exception:
        logger.exception("/v1 request failed")
        if not call.responded:
            await call.fail(GatewayError(500, "The server had an error while processing your request.",
                                         type="server_error", code="internal_error"))
    finally:
        if call.touch_key:
            await _touch(call)
        if call.key_id is not None:
            await _use_audit(call)
        if call.scope["path"] == "/v1/chat/completions":
            _record(call)


def _record(call: Call) -> None:
    """prumo_gateway_* and prumo_llm_tokens_total for a completion call (counters only: core.metrics)."""
    answer = call.answer
    served = answer.served.model if answer is not None else None
    usage = answer.usage if answer is not None else None
    gateway_call_record(provider=served.provider if served else "none", model=served.id if served else "none",
                        status=call.status, ttft=call.ttft, overhead=call.overhead,
                        input_tokens=usage.input_tokens if usage else None,
                        output_tokens=usage.output_tokens if usage else None)


async def _route(call: Call) -> None:
    path, method = call.scope["path"], call.scope["method"]
    if path == "/v1/chat/completions":
        if method != "POST":
            raise GatewayError(405, "Use POST.", code="method_not_allowed")
        auth, config = await _authenticate(call)
        await _completions(call, auth, config)
    elif path == "/v1/models" or path.startswith("/v1/models/"):
        if method != "GET":
            raise GatewayError(405, "Use GET.", code="method_not_allowed")
        auth, config = await _authenticate(call)
        gateway.api_access_check(config)
        listed = [_model(option) for option in config.options.values()]
        if path == "/v1/models":
            await call.respond(200, {"object": "list", "data": listed})
            return
        wanted = path.removeprefix("/v1/models/")
        model = config.names.get(wanted)
        found = next((entry for entry in listed if model is not None and entry["id"] == model.id), None)
        if found is None:
            raise GatewayError(404, f"The model '{wanted}' does not exist or is not available to you.",
                               param="model", code="model_not_found")
        await call.respond(200, found)
    else:
        raise GatewayError(404, f"Invalid URL ({method} {path}).", code="unknown_url")


def _model(option) -> dict:
    return {"id": option.id, "object": "model", "created": 0, "owned_by": option.model.provider}


async def _authenticate(call: Call) -> tuple[KeyAuth, OrgConfig]:
    """The key's grant and its organization's config snapshot: one Redis round trip when cached. A key
    not cached yet is read on the async pool (no connection of its own), unless the caller's address is
    over its unauthenticated limit: then nothing reaches the database."""
    scheme, _, token = call.headers.get("authorization", "").partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    prefix = lookup_prefix(token)
    redis = redis_async_client()
    client = call.scope.get("client") or ("unknown", 0)
    ip = client_ip_from(call.headers.get("x-forwarded-for", ""), client[0]) or "unknown"
    auth, version = None, None
    if prefix is not None:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.get(cache_key(prefix))
            pipe.get(generation_key(prefix))
            pipe.get(CONFIG_VERSION_KEY)
            pipe.set(used_key(prefix), 1, nx=True, ex=LAST_USED_EVERY)
            entry, generation, version, touched = await pipe.execute()
        if entry is None:
            entry = await key_entry_load_async(redis, prefix, generation, ip)
        else:
            entry = json.loads(entry)
        auth = auth_from_entry(token, entry)
        call.touch_key = bool(touched) and auth is not None
        call.key_id = auth.key_id if auth else None
    if auth is None:
        # Calls without a valid key are limited per address: guessing keys goes nowhere fast.
        wait = await ip_limited_async(redis, ip)
        if wait is not None:
            raise GatewayError(429, f"Too many unauthenticated requests. Try again in {wait} s.", type="requests",
                               code="rate_limit_exceeded", headers={"retry-after": str(wait)})
        raise GatewayError(401, "Invalid or missing API key. Send 'Authorization: Bearer prm_…'.",
                           code="invalid_api_key")
    organization_var.set(auth.slug)  # the log lines' context, as Django's middleware sets it
    user_var.set(str(auth.user_id) if auth.user_id else "-")
    if not auth.allows("chat"):
        raise GatewayError(403, "This API key lacks the 'chat' scope.", type="permission_error",
                           code="insufficient_scope")
    return auth, await org_config(auth.organization_id, version)


async def _touch(call: Call) -> None:
    """The key's last use, for a call that ended before its settlement could write it."""
    call.touch_key = False
    try:
        pool = await async_pool()
        async with pool.connection() as connection:
            await connection.execute(gateway.LAST_USED_SQL, {"key": call.key_id})
    except Exception:
        logger.exception("could not record an API key's last use")


async def _use_audit(call: Call) -> None:
    """After the answer: queue the audit event of the key's first use of the UTC day (tenants.audit.records).
    Completions learnt it in the rate-limit round trip; other calls mark the day here."""
    try:
        first = call.first_use_today
        if first is None:
            first = bool(await redis_async_client().set(api_key_day_mark(call.key_id), 1, nx=True, ex=DAY_MARK_SECONDS))
        if first:
            client = call.scope.get("client") or ("", 0)
            ip = client_ip_from(call.headers.get("x-forwarded-for", ""), client[0])
            await asyncio.to_thread(api_key_use_enqueue, key_id=call.key_id, ip_address=ip,
                                    user_agent=call.headers.get("user-agent", ""), request_id=call.request_id)
    except Exception:
        logger.exception("could not record an API key's first use of the day")


@dataclass
class Answer:
    """What the provider said, as it arrives."""

    served: object
    parts: list[str] = field(default_factory=list)
    tool_deltas: list[ToolCallDelta] = field(default_factory=list)
    usage: Usage | None = None
    finish: str | None = None
    failure: object = None

    @property
    def produced(self) -> bool:
        return bool(self.parts or self.tool_deltas)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def finish_reason(self) -> str:
        if self.failure is not None:
            return "length"  # cut short by the provider: what came is all there is
        return gateway.finish_reason(self.finish or ("tool_calls" if self.tool_deltas else "stop"))

    def take(self, event) -> None:
        if isinstance(event, TextDelta):
            self.parts.append(event.text)
        elif isinstance(event, ToolCallDelta):
            self.tool_deltas.append(event)
        elif isinstance(event, Served):
            self.served = event.option
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Finish):
            self.finish = event.reason
        elif isinstance(event, StreamError):
            self.failure = event.error

    def usage_body(self, prepared: Prepared) -> dict:
        """OpenAI's usage object: the provider's counts, or our estimate when it never said."""
        prompt = self.usage.input_tokens if self.usage else prepared.prompt_tokens
        completion = self.usage.output_tokens if self.usage else gateway.tokens_estimate(self.text)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _settle(call: Call, prepared: Prepared, answer: Answer) -> None:
    touch, call.touch_key = call.touch_key, False
    usage = answer.usage
    await gateway.settle(prepared, served=answer.served, produced=answer.produced, text=answer.text,
                         input_tokens=usage.input_tokens if usage else None,
                         output_tokens=usage.output_tokens if usage else None, touch_key=touch)


async def _completions(call: Call, auth: KeyAuth, config: OrgConfig) -> None:
    params = gateway.params_parse(await call.body())
    marks: dict = {}
    try:
        prepared = await gateway.prepare(auth, params, config, marks=marks)
    finally:
        call.first_use_today = marks.get("first_use_today")
    call.extra_headers.update(prepared.limit.headers())
    answer = call.answer = Answer(served=prepared.candidates[0])
    try:
        if params.stream:
            await _stream(call, prepared, params, answer)
        else:
            await _complete(call, prepared, answer)
    finally:  # finished, failed or the client went away: bill what was produced, exactly once
        await _settle(call, prepared, answer)


async def _complete(call: Call, prepared: Prepared, answer: Answer) -> None:
    upstream_started = time.perf_counter()
    async for event in route_stream(prepared.candidates, prepared.request, own_keys=prepared.own_keys,
                                    breakers=prepared.breakers):
        if call.ttft is None:
            call.ttft = time.perf_counter() - upstream_started
        answer.take(event)
    call.upstream = time.perf_counter() - upstream_started
    if answer.failure is not None and not answer.produced:
        await call.fail(gateway.upstream_error(answer.failure))
        return
    message = {"role": "assistant", "content": answer.text}
    calls = tool_calls_assemble(answer.tool_deltas)
    if calls:
        message["content"] = answer.text or None
        message["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
    await call.respond(200, {
        "id": prepared.completion_id, "object": "chat.completion", "created": prepared.created,
        "model": answer.served.id,
        "choices": [{"index": 0, "message": message, "finish_reason": answer.finish_reason(), "logprobs": None}],
        "usage": answer.usage_body(prepared),
    })


def _chunk(prepared: Prepared, model: str, delta: dict, finish: str | None = None) -> bytes:
    body = {"id": prepared.completion_id, "object": "chat.completion.chunk", "created": prepared.created,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + _json(body) + b"\n\n"


def _tool_delta(event: ToolCallDelta) -> dict:
    call = {"index": event.index, "function": {"arguments": event.arguments}}
    if event.id:
        call["id"], call["type"] = event.id, "function"
    if event.name:
        call["function"]["name"] = event.name
    return {"tool_calls": [call]}


async def _stream(call: Call, prepared: Prepared, params, answer: Answer) -> None:
    """OpenAI's chunks. Headers go out with the provider's first event, so a call that no provider
    could start gets a real error status (and the SDK raises), not a 200 with an error inside."""
    gone = asyncio.Event()

    async def watch() -> None:
        while (await call.receive())["type"] != "http.disconnect":
            pass
        gone.set()

    async def emit(data: bytes) -> bool:
        if gone.is_set():
            return False
        try:
            await call.send({"type": "http.response.body", "body": data, "more_body": True})
        except OSError:  # uvicorn's ClientDisconnected
            gone.set()
        return not gone.is_set()

    watcher = asyncio.create_task(watch())
    events = route_stream(prepared.candidates, prepared.request, own_keys=prepared.own_keys,
                          breakers=prepared.breakers)
    started = False
    try:
        waited = time.perf_counter()
        async for event in events:
            answer.take(event)
            if isinstance(event, StreamError) and not answer.produced:
                error = gateway.upstream_error(event.error)
                if not started:
                    await call.fail(error)
                elif await emit(b"data: " + _json(error.body()) + b"\n\n"):  # OpenAI's mid-stream error
                    await call.send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if isinstance(event, Served):
                started = True
                call.upstream = call.ttft = time.perf_counter() - waited
                await call.start(200, call.head(b"text/event-stream") + [(b"x-accel-buffering", b"no")])
                if not await emit(_chunk(prepared, answer.served.id, {"role": "assistant", "content": ""})):
                    return
            elif isinstance(event, TextDelta):
                if not await emit(_chunk(prepared, answer.served.id, {"content": event.text})):
                    return
            elif isinstance(event, ToolCallDelta):
                if not await emit(_chunk(prepared, answer.served.id, _tool_delta(event))):
                    return
        tail = _chunk(prepared, answer.served.id, {}, answer.finish_reason())
        if params.include_usage:
            tail += b"data: " + _json({"id": prepared.completion_id, "object": "chat.completion.chunk",
                                       "created": prepared.created, "model": answer.served.id, "choices": [],
                                       "usage": answer.usage_body(prepared)}) + b"\n\n"
        if await emit(tail + b"data: [DONE]\n\n"):
            await call.send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await events.aclose()
        watcher.cancel()
