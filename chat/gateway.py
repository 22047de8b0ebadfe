"""The OpenAI-compatible gateway's logic: parse a chat completion request, price and hold it,
settle and meter it. The ASGI front (chat.v1) stays thin.

Built for overhead: nothing here touches Django's ORM on the way to the provider. The
catalog, prices, plan and provider keys of an organization come from a per-process snapshot
(chat.snapshot) that is rebuilt when a Redis version changes; the rate limit is one Redis
script; the credit hold and the settlement (with the usage event) are one SQL statement
each, on an async connection pool.

Errors are `GatewayError`s rendered in OpenAI's envelope
(`{"error": {"message", "type", "param", "code"}}`) with OpenAI's status codes.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import ROUND_UP, Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from redis.exceptions import NoScriptError

from billing.ledger import (
    CLOSE_SQL,
    RESERVE_SQL,
    InsufficientCredits,
    credit_overage_uncovered,
    credit_release,
    credit_reserve,
    credits_closed_count,
    credits_low_crossed,
    credits_low_settled,
    reserve_params,
)
from billing.models import CreditReservation, UsageEvent
from billing.ratelimits import (
    Limit,
    rate_limit_give_back_async,
    rate_limit_queue,
    rate_limit_result,
    rate_limit_scripts_load,
)
from billing.usage import CREDIT_QUANTUM, USAGE_INSERT_SQL, credits_for, usage_params
from config.db_async import async_pool
from core.metrics import credits_count
from tenants.api_keys import KeyAuth
from tenants.models import ApiKey, Organization

from .catalog.selectors import ModelOption
from .files import CHARS_PER_TOKEN, tokens_estimate
from .providers import ChatMessage, ChatRequest, ImagePart, ProviderError
from .providers.base import ToolCall
from .redis import async_client
from .routing import BreakerState, CircuitBreaker, breaker_name
from .snapshot import OrgConfig, orm_call

PASSTHROUGH = ("tools", "tool_choice", "response_format", "user", "seed", "presence_penalty", "frequency_penalty",
               "parallel_tool_calls")
IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp", "image/gif"}


class GatewayError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


@dataclass(frozen=True)
class CompletionParams:
    model: str
    messages: list[ChatMessage]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    extra_tokens: int = 0  # the estimate of `extra` (tools, response_format, …): sent, so held and limited


def _number(body: dict, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise invalid(f"'{name}' must be a number between {low:g} and {high:g}.", name)
    return float(value)


def _image(url: str, param: str) -> ImagePart:
    if not url.startswith("data:"):
        raise invalid("Only data: URLs are accepted for images (base64-encoded PNG, JPEG, WebP or GIF).", param,
                      "invalid_image_url")
    header, _, payload = url[5:].partition(",")
    media_type = header.split(";", 1)[0]
    if media_type not in IMAGE_TYPES or ";base64" not in header:
        raise invalid("Images must be base64 data URLs of PNG, JPEG, WebP or GIF.", param, "invalid_image_url")
    try:
        return ImagePart(media_type=media_type, data=base64.b64decode(payload, validate=True))
    except binascii.Error:
        raise invalid("The image's base64 data is not valid.", param, "invalid_image_url") from None


def _tool_calls(raw: Any, param: str) -> tuple[ToolCall, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise invalid(f"'{param}' must be a list of tool calls.", param)
    calls = []
    for j, call in enumerate(raw):
        function = call.get("function") if isinstance(call, dict) else None
        if (not isinstance(function, dict) or not isinstance(call.get("id"), str)
                or not isinstance(function.get("name"), str) or not isinstance(function.get("arguments", ""), str)):
            raise invalid(f"'{param}[{j}]' must be {{'id', 'type': 'function', 'function': {{'name', 'arguments'}}}}.",
                          f"{param}[{j}]")
        calls.append(ToolCall(id=call["id"], name=function["name"], arguments=function.get("arguments", "")))
    return tuple(calls)


def _message(raw: Any, index: int) -> ChatMessage:
    param = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise invalid(f"'{param}' must be an object with 'role' and 'content'.", param)
    role = raw.get("role")
    if role == "developer":
        role = "system"
    if role not in ("system", "user", "assistant", "tool"):
        raise invalid(f"'{param}.role' must be one of system, developer, user, assistant, tool.", f"{param}.role")
    tool_calls = _tool_calls(raw.get("tool_calls"), f"{param}.tool_calls") if role == "assistant" else ()
    tool_call_id = raw.get("tool_call_id")
    if role == "tool" and not isinstance(tool_call_id, str):
        raise invalid(f"'{param}.tool_call_id' is required in tool messages.", f"{param}.tool_call_id")
    content = raw.get("content")
    if content is None and role == "assistant":
        content = ""
    if isinstance(content, str):
        return ChatMessage(role=role, content=content, tool_calls=tool_calls, tool_call_id=tool_call_id)
    if not isinstance(content, list):
        raise invalid(f"'{param}.content' must be a string or a list of content parts.", f"{param}.content")
    texts, images = [], []
    for j, part in enumerate(content):
        part_param = f"{param}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and isinstance(part.get("image_url"), dict) and role == "user":
            images.append(_image(str(part["image_url"].get("url", "")), part_param))
        else:
            raise invalid(f"'{part_param}' is not a supported content part (text, or image_url in user messages).",
                          part_param)
    return ChatMessage(role=role, content="\n".join(texts), images=tuple(images), tool_calls=tool_calls,
                       tool_call_id=tool_call_id)


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _extra_parse(body: dict) -> tuple[dict[str, Any], int]:
    """The OpenAI fields passed through as they are, with their size capped where a body could hide a
    huge prompt in them, and their token estimate (their JSON, like the messages' text)."""
    extra = {name: body[name] for name in PASSTHROUGH if name in body}
    tools = extra.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
            raise invalid("'tools' must be a list of tool objects.", "tools")
        if len(tools) > settings.GATEWAY_TOOLS_MAX_COUNT:
            raise invalid(f"'tools' has {len(tools)} tools; at most {settings.GATEWAY_TOOLS_MAX_COUNT} are "
                          "allowed.", "tools", "too_many_tools")
    response_format = extra.get("response_format")
    if response_format is not None and not isinstance(response_format, dict):
        raise invalid("'response_format' must be an object.", "response_format")
    size = 0
    for name, value in extra.items():
        field_size = _json_size(value)
        limit = {"tools": settings.GATEWAY_TOOLS_MAX_BYTES,
                 "response_format": settings.GATEWAY_RESPONSE_FORMAT_MAX_BYTES}.get(name)
        if limit is not None and field_size > limit:
            raise invalid(f"'{name}' is {field_size} bytes as JSON; at most {limit} are allowed.", name,
                          "parameter_too_large")
        size += field_size
    return extra, -(-size // CHARS_PER_TOKEN)


def params_parse(raw_body: bytes) -> CompletionParams:
    try:
        body = json.loads(raw_body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise invalid("The request body is not valid JSON.", None) from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", None)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid("'model' is required: a model id such as 'openai/gpt-4.1-mini' (see GET /v1/models).", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty list.", "messages")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise invalid(f"'{param}' must be a positive integer.", param)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop)):
        raise invalid("'stop' must be a string or a list of up to 4 strings.", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("'stream' must be a boolean.", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise invalid("'stream_options' must be an object.", "stream_options")
    n = body.get("n", 1)
    if n != 1:
        raise invalid("Only n=1 is supported.", "n")
    extra, extra_tokens = _extra_parse(body)
    return CompletionParams(
        model=model.strip(), messages=[_message(m, i) for i, m in enumerate(messages)], stream=stream,
        include_usage=bool(options.get("include_usage")), max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0, 2), top_p=_number(body, "top_p", 0, 1), stop=stop,
        extra=extra, extra_tokens=extra_tokens,
    )


def prompt_tokens_estimate(messages: list[ChatMessage]) -> int:
    """What the messages are counted as before the provider says: text, images, tool calls and tool
    results. With `CompletionParams.extra_tokens` (tools, response_format, …), what the context check,
    the tokens-per-minute limit and the hold use."""
    return sum(tokens_estimate(m.content) + 4 + 1000 * len(m.images) + tokens_estimate(m.tool_call_id or "")
               + sum(tokens_estimate(c.id + c.name + c.arguments) for c in m.tool_calls) for m in messages)


def api_access_check(config: OrgConfig) -> None:
    if not config.entitlements.api_access:
        raise GatewayError(403, "Your plan does not include API access. Upgrade on the billing page to use "
                           "API keys.", type="permission_error", code="plan_without_api_access")


@dataclass
class Prepared:
    """A request that passed every check, with its worst case held."""

    auth: KeyAuth
    candidates: list[ModelOption]
    request: ChatRequest
    own_keys: dict[str, str]
    reservation_id: int | None
    held: Decimal  # the worst case held (0: nothing held)
    billing_key: str
    prompt_tokens: int
    completion_id: str
    created: int
    limit: Limit
    tokens_counted: int  # toward the tokens-per-minute limit, up front
    breakers: dict[str, BreakerState]


async def _hold(auth: KeyAuth, amount: Decimal, key: str, description: str) -> int:
    """Reserve `amount` in one statement; the ledger's general path explains a refusal (402)."""
    pool = await async_pool()
    async with pool.connection() as connection:
        cursor = await connection.execute(RESERVE_SQL, reserve_params(
            organization_id=auth.organization_id, amount=amount, key=key, description=description))
        row = await cursor.fetchone()
    if row is not None:
        credits_count("held", amount)
        return row[0]
    # Not covered, or the organization's first movement (no account row yet): the ledger decides.
    reservation = await orm_call(credit_reserve, organization=Organization(pk=auth.organization_id),
                                 amount=amount, key=key, description=description)
    return reservation.pk


async def _limit_and_breakers(auth: KeyAuth, config: OrgConfig, candidates: list[ModelOption],
                              tokens: int) -> tuple[Limit, dict[str, BreakerState]]:
    """Count the call against the plan's limits and read the circuit breakers of the credentials the
    candidates would use (the organization's own key's, else the platform's): one round trip."""
    entitlements = config.entitlements
    providers = list(dict.fromkeys(option.model.provider for option in candidates))
    limits = {"requests_per_minute": entitlements.requests_per_minute,
              "tokens_per_minute": entitlements.tokens_per_minute}
    redis = async_client()
    for first_try in (True, False):
        async with redis.pipeline(transaction=False) as pipe:
            rate_limit_queue(pipe, organization_id=auth.organization_id, key_id=auth.key_id, tokens=tokens, **limits)
            for provider in providers:
                breaker = CircuitBreaker(breaker_name(provider, config.own_keys.get(provider)))
                pipe.exists(breaker.open_key)
                pipe.get(breaker.failures_key)
            try:
                result, *states = await pipe.execute()
                break
            except NoScriptError:
                if not first_try:
                    raise
                await rate_limit_scripts_load(redis)  # a restarted Redis forgot the script
    breakers = {provider: BreakerState(open=bool(states[2 * i]), failures=int(states[2 * i + 1] or 0))
                for i, provider in enumerate(providers)}
    return rate_limit_result(result, **limits), breakers


async def prepare(auth: KeyAuth, params: CompletionParams, config: OrgConfig) -> Prepared:
    """Resolve the model, check the plan and the limits, hold the worst-case cost. Raises GatewayError."""
    api_access_check(config)
    model = config.names.get(params.model)
    if model is None:
        raise GatewayError(404, f"The model '{params.model}' does not exist. GET /v1/models lists yours.",
                           param="model", code="model_not_found")
    if not config.entitlements.allows_model_tier(model.tier):
        raise GatewayError(403, f"Your plan does not include '{model.id}'. Upgrade to use it.",
                           param="model", code="model_not_allowed")
    candidates = config.candidates(model)
    if not candidates or candidates[0].id != model.id:
        raise GatewayError(503, f"'{model.id}' is not available right now (its provider is not configured).",
                           type="server_error", param="model", code="model_unavailable")
    max_tokens = min(params.max_tokens or settings.CHAT_MAX_OUTPUT_TOKENS, model.max_output_tokens)
    prompt_tokens = prompt_tokens_estimate(params.messages) + params.extra_tokens
    if prompt_tokens + max_tokens > model.context_window:
        raise invalid(f"The prompt (about {prompt_tokens} tokens, tools included) and max_tokens ({max_tokens}) exceed "
                      f"the model's context window ({model.context_window}).", "messages", "context_length_exceeded")
    redis = async_client()
    limit, breakers = await _limit_and_breakers(auth, config, candidates, prompt_tokens + max_tokens)
    if not limit.allowed:
        raise GatewayError(429, f"Rate limit reached for {limit.exceeded} per minute on your plan. "
                           f"Try again in {limit.retry_after} s.", type=limit.exceeded, code="rate_limit_exceeded",
                           headers={**limit.headers(), "retry-after": str(limit.retry_after)})
    worst = max(o.cost_bound(input_tokens=prompt_tokens, output_tokens=max_tokens) for o in candidates)
    worst = worst.quantize(CREDIT_QUANTUM, rounding=ROUND_UP)
    completion_id = uuid.uuid4().hex
    billing_key = f"v1:{auth.organization_id}:{completion_id}"
    reservation_id = None
    if worst > 0:
        try:
            reservation_id = await _hold(auth, worst, billing_key, f"API {model.id}")
        except BaseException as error:
            await rate_limit_give_back_async(redis, organization_id=auth.organization_id, key_id=auth.key_id,
                                             tokens=prompt_tokens + max_tokens)
            if isinstance(error, InsufficientCredits):
                raise GatewayError(402, f"Not enough credits: this request may cost up to {worst.normalize()} and "
                                   f"the balance is {error.balance.normalize()}.", type="insufficient_quota",
                                   code="insufficient_credits", headers=limit.headers()) from None
            raise
    request = ChatRequest(model=model.provider_model, messages=params.messages, max_tokens=max_tokens,
                          temperature=params.temperature, top_p=params.top_p, stop=params.stop, extra=params.extra)
    return Prepared(auth=auth, candidates=candidates, request=request, own_keys=config.own_keys,
                    reservation_id=reservation_id, held=worst if reservation_id is not None else Decimal(0),
                    billing_key=billing_key, prompt_tokens=prompt_tokens,
                    completion_id=f"chatcmpl-{completion_id}",
                    created=int(time.time()), limit=limit, tokens_counted=prompt_tokens + max_tokens,
                    breakers=breakers)


LAST_USED_SQL = f"UPDATE {ApiKey._meta.db_table} SET last_used_at = now() WHERE id = %(key)s"


async def settle(prepared: Prepared, *, served: ModelOption, produced: bool, input_tokens: int | None,
                 output_tokens: int | None, text: str = "", touch_key: bool = False) -> Decimal:
    """Charge what the call used (the provider's counts, or an estimate of what was produced), meter it
    and give the unused tokens back: one database round trip, after the client has its answer.

    A call that cost more than its hold is charged the difference too (CLOSE_SQL debits it as far as
    the balance goes); what the balance could not cover is raised, never dropped."""
    if input_tokens is None or output_tokens is None:
        input_tokens = prepared.prompt_tokens if produced else 0
        output_tokens = tokens_estimate(text)
    credits = credits_for(input_per_million=served.input_per_million, output_per_million=served.output_per_million,
                          input_tokens=input_tokens, output_tokens=output_tokens)
    auth = prepared.auth
    closing = None
    pool = await async_pool()
    # One pipeline, one Sync: PostgreSQL runs the statements up to a Sync as one implicit transaction,
    # so the hold closes and the usage event is written together or not at all, in one round trip.
    async with pool.connection() as connection:
        async with connection.pipeline():
            if prepared.reservation_id is not None:
                closing = await connection.execute(CLOSE_SQL, {"reservation": prepared.reservation_id,
                                                               "actual": credits if credits > 0 else None})
            if input_tokens or output_tokens:
                await connection.execute(USAGE_INSERT_SQL, usage_params(
                    organization_id=auth.organization_id, kind=UsageEvent.Kind.MODEL, key=served.id,
                    request_id=prepared.billing_key, credits=credits, input_per_million=served.input_per_million,
                    output_per_million=served.output_per_million, api_key_id=auth.key_id,
                    input_tokens=input_tokens, output_tokens=output_tokens))
            if touch_key:
                await connection.execute(LAST_USED_SQL, {"key": auth.key_id})
        closed = await closing.fetchone() if closing is not None else None  # already here: the pipeline synced
    if closed is not None:
        credits_closed_count(held=prepared.held, actual=credits if credits > 0 else None)
    # credits.low: the crossing is seen in the settlement's own answer (no extra round trip); the event, rare,
    # is written after it, in a transaction of its own (the settlement's pipeline has committed by then).
    if closed is not None and credits_low_crossed(before=closed[0] + closed[4], after=closed[0], threshold=closed[3]):
        await orm_call(credits_low_settled, organization_id=auth.organization_id, before=closed[0] + closed[4],
                       after=closed[0], threshold=closed[3])
    if closed is not None and closed[2] > 0:
        await orm_call(credit_overage_uncovered, organization_id=auth.organization_id,
                       reservation_id=prepared.reservation_id, key=prepared.billing_key,
                       overage=closed[1] + closed[2], uncovered=closed[2])
    await rate_limit_give_back_async(async_client(), organization_id=auth.organization_id, key_id=auth.key_id,
                                     tokens=prepared.tokens_counted - input_tokens - output_tokens)
    return credits


async def release(prepared: Prepared, *, touch_key: bool = False) -> None:
    """The call failed before producing anything: the hold and the counted tokens come back."""
    await settle(prepared, served=prepared.candidates[0], produced=False, input_tokens=0, output_tokens=0,
                 touch_key=touch_key)


def holds_reap() -> int:
    """Release gateway holds left open by a process that died mid-call (the client never got an answer
    from it, or the settlement after it was lost); returns how many."""
    cutoff = timezone.now() - timedelta(seconds=settings.GATEWAY_HOLD_TIMEOUT_SECONDS)
    stale = CreditReservation.objects.filter(status=CreditReservation.Status.OPEN, key__startswith="v1:",
                                             created_at__lt=cutoff)
    count = 0
    for reservation in stale.iterator():
        with transaction.atomic():
            credit_release(reservation=reservation)
        count += 1
    return count


def upstream_error(error: ProviderError) -> GatewayError:
    if error.kind == ProviderError.CONFIG:
        # Not sent at all: the organization's own key for this provider cannot be used as stored.
        return GatewayError(400, f"{error.message} If it is your organization's own key, an owner or admin can "
                            "replace it in Settings → AI providers.", code="provider_key_invalid")
    if error.kind == ProviderError.TIMEOUT:
        return GatewayError(504, "The model provider did not answer in time.", type="server_error",
                            code="upstream_timeout")
    if error.kind == ProviderError.BAD_REQUEST:
        return GatewayError(400, f"The model provider refused the request: {error.message}", code="upstream_refused")
    if error.kind in (ProviderError.UNAVAILABLE, ProviderError.RATE_LIMITED, ProviderError.AUTH):
        wait = min(int(error.retry_after or 0), settings.CHAT_BREAKER_MAX_COOLDOWN)
        headers = {"retry-after": str(wait)} if wait else {}
        return GatewayError(503, "The model provider is unavailable. Try again shortly.", type="server_error",
                            code="upstream_unavailable", headers=headers)
    return GatewayError(502, "The model provider sent an invalid or incomplete answer.", type="server_error",
                        code="upstream_error")


FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter", "tool_calls": "tool_calls"}


def finish_reason(reason: str) -> str:
    return FINISH.get(reason, "stop")
