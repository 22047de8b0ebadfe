"""The OpenAI-compatible endpoints: GET /v1/models and POST /v1/chat/completions (async, under ASGI).

Authentication is the tenant middleware's (a Bearer API key, resolved from the key cache);
everything else is chat.gateway. Every response carries `x-request-id` (middleware) and
`x-prumo-overhead-ms`: the time spent here outside the provider call (up to the first byte
for streams).
"""

from __future__ import annotations

import json
import time

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from billing.ratelimits import ip_limited
from tenants.audit.services import client_ip

from . import gateway
from .gateway import GatewayError
from .providers import Finish, StreamError, TextDelta, Usage
from .routing import Served, route_stream


def _auth(request: HttpRequest, scope: str):
    auth = getattr(request, "api_key", None)
    if auth is None:
        # Calls without a valid key are limited per address: guessing keys goes nowhere fast.
        wait = ip_limited(client_ip(request) or "unknown")
        if wait is not None:
            raise GatewayError(429, f"Too many unauthenticated requests. Try again in {wait} s.", type="requests",
                               code="rate_limit_exceeded", headers={"retry-after": str(wait)})
        raise GatewayError(401, "Invalid or missing API key. Send 'Authorization: Bearer prm_…'.",
                           code="invalid_api_key")
    if not auth.allows(scope):
        raise GatewayError(403, f"This API key lacks the '{scope}' scope.", type="permission_error",
                           code="insufficient_scope")
    return auth


def _overhead(response: HttpResponse, started: float, upstream: float = 0.0, prepared=None) -> HttpResponse:
    if prepared is not None:
        for name, value in prepared.limit.headers().items():
            response[name] = value
    response["x-prumo-overhead-ms"] = f"{(time.perf_counter() - started - upstream) * 1000:.2f}"
    return response


@csrf_exempt
async def models(request: HttpRequest) -> HttpResponse:
    started = time.perf_counter()
    try:
        if request.method != "GET":
            raise GatewayError(405, "Use GET.", code="method_not_allowed")
        auth = _auth(request, "chat")
        options = await sync_to_async(gateway.models_for)(auth)
    except GatewayError as error:
        return _overhead(error.response(), started)
    data = [{"id": o.id, "object": "model", "created": 0, "owned_by": o.model.provider} for o in options]
    return _overhead(JsonResponse({"object": "list", "data": data}), started)


def _usage(prepared, usage, text: str) -> dict:
    """OpenAI's usage object: the provider's counts, or our estimate when it never said."""
    prompt = usage.input_tokens if usage else prepared.prompt_tokens
    completion = usage.output_tokens if usage else gateway.tokens_estimate(text)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chunk(prepared, model: str, delta: dict, finish: str | None = None) -> bytes:
    body = {"id": prepared.completion_id, "object": "chat.completion.chunk", "created": prepared.created,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse:
    started = time.perf_counter()
    try:
        if request.method != "POST":
            raise GatewayError(405, "Use POST.", code="method_not_allowed")
        auth = _auth(request, "chat")
        params = gateway.params_parse(request.body)
        prepared = await sync_to_async(gateway.prepare)(auth, params)
    except GatewayError as error:
        return _overhead(error.response(), started)
    if params.stream:
        response = StreamingHttpResponse(_stream(prepared, auth, params), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return _overhead(response, started, prepared=prepared)
    return await _complete(prepared, auth, started)


async def _complete(prepared, auth, started: float) -> HttpResponse:
    parts, usage, finish, served, failure = [], None, "stop", prepared.candidates[0], None
    upstream_started = time.perf_counter()
    async for event in route_stream(prepared.candidates, prepared.request, own_keys=prepared.own_keys):
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, Served):
            served = event.option
        elif isinstance(event, Usage):
            usage = event
        elif isinstance(event, Finish):
            finish = event.reason
        elif isinstance(event, StreamError):
            failure = event.error
    upstream = time.perf_counter() - upstream_started
    text = "".join(parts)
    if failure is not None and not text:
        await sync_to_async(gateway.release)(prepared, auth=auth)
        return _overhead(gateway.upstream_error(failure).response(), started, upstream, prepared)
    await sync_to_async(gateway.settle)(
        prepared, auth=auth, served=served.id, text=text, input_tokens=usage.input_tokens if usage else None,
        output_tokens=usage.output_tokens if usage else None)
    body = {
        "id": prepared.completion_id, "object": "chat.completion", "created": prepared.created, "model": served.id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": gateway.finish_reason(finish) if failure is None else "length",
                     "logprobs": None}],
        "usage": _usage(prepared, usage, text),
    }
    return _overhead(JsonResponse(body), started, upstream, prepared)


async def _stream(prepared, auth, params):
    """OpenAI's chunks; the call is settled however it ends (finished, failed, client gone)."""
    parts, usage, finish, served, failure = [], None, None, prepared.candidates[0], None
    started_text = False
    settled = False
    try:
        async for event in route_stream(prepared.candidates, prepared.request, own_keys=prepared.own_keys):
            if isinstance(event, Served):
                served = event.option
                yield _chunk(prepared, served.id, {"role": "assistant", "content": ""})
            elif isinstance(event, TextDelta):
                started_text = True
                parts.append(event.text)
                yield _chunk(prepared, served.id, {"content": event.text})
            elif isinstance(event, Usage):
                usage = event
            elif isinstance(event, Finish):
                finish = event.reason
            elif isinstance(event, StreamError):
                failure = event.error
        if failure is not None and not started_text:
            await sync_to_async(gateway.release)(prepared, auth=auth)
            settled = True
            error = gateway.upstream_error(failure)
            yield f"data: {json.dumps(error.body())}\n\n".encode()
            yield b"data: [DONE]\n\n"
            return
        yield _chunk(prepared, served.id, {}, gateway.finish_reason(finish or "stop") if failure is None else "length")
        text = "".join(parts)
        await sync_to_async(gateway.settle)(
            prepared, auth=auth, served=served.id, text=text, input_tokens=usage.input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None)
        settled = True
        if params.include_usage:
            body = {"id": prepared.completion_id, "object": "chat.completion.chunk", "created": prepared.created,
                    "model": served.id, "choices": [],
                    "usage": _usage(prepared, usage, text)}
            yield f"data: {json.dumps(body)}\n\n".encode()
        yield b"data: [DONE]\n\n"
    finally:
        if not settled:  # the client went away mid-stream: bill what was produced
            await sync_to_async(gateway.settle)(prepared, auth=auth, served=served.id, text="".join(parts),
                                                input_tokens=None, output_tokens=None)
