"""The OpenAI-compatible gateway's logic: parse a chat completion request, price and hold it,
answer it through the router, settle and meter it. Views (chat.views_v1) stay thin.

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
from decimal import ROUND_UP, Decimal
from typing import Any

from django.conf import settings
from django.http import JsonResponse

from billing.ledger import InsufficientCredits, credit_release, credit_reserve, credit_settle
from billing.models import CreditReservation, UsageEvent
from billing.ratelimits import Limit, rate_limit_give_back, rate_limit_take
from billing.selectors import entitlements_for
from billing.usage import CREDIT_QUANTUM, UnknownPrice, usage_cost, usage_record
from tenants.api_keys import KeyAuth
from tenants.models import Organization

from .catalog.selectors import ModelOption, model_options, model_resolve, provider_keys_for
from .files import tokens_estimate
from .providers import ChatMessage, ChatRequest, ImagePart, ProviderError

PASSTHROUGH = ("tools", "tool_choice", "response_format", "user", "seed", "presence_penalty", "frequency_penalty")
IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp", "image/gif"}


class GatewayError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JsonResponse:
        response = JsonResponse(self.body(), status=self.status)
        for name, value in self.headers.items():
            response[name] = value
        return response


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


def _message(raw: Any, index: int) -> ChatMessage:
    param = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise invalid(f"'{param}' must be an object with 'role' and 'content'.", param)
    role = raw.get("role")
    if role == "developer":
        role = "system"
    if role not in ("system", "user", "assistant"):
        raise invalid(f"'{param}.role' must be one of system, developer, user, assistant.", f"{param}.role")
    content = raw.get("content")
    if content is None and role == "assistant":
        content = ""
    if isinstance(content, str):
        return ChatMessage(role=role, content=content)
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
    return ChatMessage(role=role, content="\n".join(texts), images=tuple(images))


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
    return CompletionParams(
        model=model.strip(), messages=[_message(m, i) for i, m in enumerate(messages)], stream=stream,
        include_usage=bool(options.get("include_usage")), max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0, 2), top_p=_number(body, "top_p", 0, 1), stop=stop,
        extra={name: body[name] for name in PASSTHROUGH if name in body},
    )


def prompt_tokens_estimate(messages: list[ChatMessage]) -> int:
    """What the prompt is counted as before the provider says (holds and token limits use it)."""
    return sum(tokens_estimate(m.content) + 4 + 1000 * len(m.images) for m in messages)


@dataclass
class Prepared:
    """A request that passed every check, with its worst case held."""

    organization: Organization
    candidates: list[ModelOption]
    request: ChatRequest
    own_keys: dict[str, str]
    reservation: CreditReservation | None
    billing_key: str
    prompt_tokens: int
    completion_id: str
    created: int
    limit: Limit
    tokens_counted: int  # toward the tokens-per-minute limit, up front


def _api_entitlements(organization: Organization):
    entitlements = entitlements_for(organization)
    if not entitlements.api_access:
        raise GatewayError(403, "Your plan does not include API access. Upgrade on the billing page to use "
                           "API keys.", type="permission_error", code="plan_without_api_access")
    return entitlements


def models_for(auth: KeyAuth) -> list[ModelOption]:
    organization = Organization(pk=auth.organization_id, schema_name=auth.schema_name, slug=auth.slug)
    return model_options(entitlements=_api_entitlements(organization), own_keys=provider_keys_for(organization))


def prepare(auth: KeyAuth, params: CompletionParams) -> Prepared:
    """Resolve the model, check the plan, hold the worst-case cost. Raises GatewayError."""
    organization = Organization(pk=auth.organization_id, schema_name=auth.schema_name, slug=auth.slug)
    model = model_resolve(params.model)
    if model is None:
        raise GatewayError(404, f"The model '{params.model}' does not exist. GET /v1/models lists yours.",
                           param="model", code="model_not_found")
    entitlements = _api_entitlements(organization)
    own_keys = provider_keys_for(organization)
    if not entitlements.allows_model_tier(model.tier):
        raise GatewayError(403, f"Your plan does not include '{model.id}'. Upgrade to use it.",
                           param="model", code="model_not_allowed")
    options = model_options(entitlements=entitlements, own_keys=own_keys, ids=[model.id, *model.fallbacks])
    if not options or options[0].id != model.id:
        raise GatewayError(503, f"'{model.id}' is not available right now (its provider is not configured).",
                           type="server_error", param="model", code="model_unavailable")
    max_tokens = min(params.max_tokens or settings.CHAT_MAX_OUTPUT_TOKENS, model.max_output_tokens)
    prompt_tokens = prompt_tokens_estimate(params.messages)
    if prompt_tokens + max_tokens > model.context_window:
        raise invalid(f"The messages (about {prompt_tokens} tokens) and max_tokens ({max_tokens}) exceed "
                      f"the model's context window ({model.context_window}).", "messages", "context_length_exceeded")
    limit = rate_limit_take(organization_id=organization.pk, key_id=auth.key_id,
                            requests_per_minute=entitlements.requests_per_minute,
                            tokens_per_minute=entitlements.tokens_per_minute, tokens=prompt_tokens + max_tokens)
    if not limit.allowed:
        raise GatewayError(429, f"Rate limit reached for {limit.exceeded} per minute on your plan. "
                           f"Try again in {limit.retry_after} s.", type=limit.exceeded, code="rate_limit_exceeded",
                           headers={**limit.headers(), "retry-after": str(limit.retry_after)})
    worst = max(o.cost_bound(input_tokens=prompt_tokens, output_tokens=max_tokens) for o in options)
    worst = worst.quantize(CREDIT_QUANTUM, rounding=ROUND_UP)
    completion_id = uuid.uuid4().hex
    billing_key = f"v1:{organization.pk}:{completion_id}"
    reservation = None
    if worst > 0:
        try:
            reservation = credit_reserve(organization=organization, amount=worst, key=billing_key,
                                         description=f"API {model.id}")
        except InsufficientCredits as error:
            raise GatewayError(402, f"Not enough credits: this request may cost up to {worst.normalize()} and the "
                               f"balance is {error.balance.normalize()}.", type="insufficient_quota",
                               code="insufficient_credits") from None
    request = ChatRequest(model=model.provider_model, messages=params.messages, max_tokens=max_tokens,
                          temperature=params.temperature, top_p=params.top_p, stop=params.stop, extra=params.extra)
    return Prepared(organization=organization, candidates=options, request=request, own_keys=own_keys,
                    reservation=reservation, billing_key=billing_key, prompt_tokens=prompt_tokens,
                    completion_id=f"chatcmpl-{completion_id}", created=int(time.time()), limit=limit,
                    tokens_counted=prompt_tokens + max_tokens)


def settle(prepared: Prepared, *, auth: KeyAuth, served: str, text: str, input_tokens: int | None,
           output_tokens: int | None) -> Decimal:
    """Charge what the call used (the provider's counts, or an estimate of what was produced) and meter it."""
    if input_tokens is None or output_tokens is None:
        input_tokens = prepared.prompt_tokens if text else 0
        output_tokens = tokens_estimate(text)
    credits, price = Decimal(0), None
    try:
        cost = usage_cost(kind=UsageEvent.Kind.MODEL, key=served, input_tokens=input_tokens,
                          output_tokens=output_tokens)
        credits, price = cost.credits, cost.price
    except UnknownPrice:
        pass
    reservation = prepared.reservation
    if reservation is not None:
        credits = min(credits, reservation.amount)
        if credits > 0:
            credit_settle(reservation=reservation, actual=credits)
        else:
            credit_release(reservation=reservation)
    if price is not None and (input_tokens or output_tokens):
        usage_record(organization=prepared.organization, kind=UsageEvent.Kind.MODEL, key=served,
                     request_id=prepared.billing_key, credits=credits, price=price, api_key_id=auth.key_id,
                     input_tokens=input_tokens, output_tokens=output_tokens)
    rate_limit_give_back(organization_id=prepared.organization.pk, key_id=auth.key_id,
                         tokens=prepared.tokens_counted - input_tokens - output_tokens)
    return credits


def release(prepared: Prepared, *, auth: KeyAuth) -> None:
    """The call failed before producing anything: the hold and the counted tokens come back."""
    if prepared.reservation is not None:
        credit_release(reservation=prepared.reservation)
    rate_limit_give_back(organization_id=prepared.organization.pk, key_id=auth.key_id, tokens=prepared.tokens_counted)


def upstream_error(error: ProviderError) -> GatewayError:
    if error.kind == ProviderError.TIMEOUT:
        return GatewayError(504, "The model provider did not answer in time.", type="server_error",
                            code="upstream_timeout")
    if error.kind == ProviderError.BAD_REQUEST:
        return GatewayError(400, f"The model provider refused the request: {error.message}", code="upstream_refused")
    if error.kind in (ProviderError.UNAVAILABLE, ProviderError.RATE_LIMITED, ProviderError.AUTH):
        headers = {"retry-after": str(int(error.retry_after))} if error.retry_after else {}
        return GatewayError(503, "The model provider is unavailable. Try again shortly.", type="server_error",
                            code="upstream_unavailable", headers=headers)
    return GatewayError(502, "The model provider sent an invalid or incomplete answer.", type="server_error",
                        code="upstream_error")


FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter", "tool_calls": "tool_calls"}


def finish_reason(reason: str) -> str:
    return FINISH.get(reason, "stop")
