"""A span per provider call, in OpenTelemetry's GenAI semantic conventions (when tracing is on: core.tracing).

Named `chat {gen_ai.request.model}`, kind CLIENT, it lasts until the provider's stream ends (or the reader stops
reading it) and carries the provider (`gen_ai.system`, and `gen_ai.provider.name`, its newer name), the request's
model and limits, the token usage and the finish reasons. Prompt and answer text go in only when
OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true (`gen_ai.input.messages`, `gen_ai.output.messages`).
The span is current only while the adapter runs, so the HTTP client span of the call is its child.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from core import tracing

from .base import ChatRequest, Finish, ProviderError, TextDelta, ToolCallDelta, Usage

# Our provider names -> the conventions' gen_ai.provider.name values (Ollama and the demo have none of their own).
SYSTEMS = {"openai": "openai", "anthropic": "anthropic", "deepseek": "deepseek", "gemini": "gcp.gemini",
           "ollama": "ollama", "demo": "prumo.demo"}


def _request_attributes(system: str, request: ChatRequest) -> dict:
    attributes = {"gen_ai.operation.name": "chat", "gen_ai.system": system, "gen_ai.provider.name": system,
                  "gen_ai.request.model": request.model, "gen_ai.request.max_tokens": request.max_tokens}
    if request.temperature is not None:
        attributes["gen_ai.request.temperature"] = request.temperature
    if request.top_p is not None:
        attributes["gen_ai.request.top_p"] = request.top_p
    if request.stop:
        attributes["gen_ai.request.stop_sequences"] = list(request.stop)
    if tracing.content_captured():
        attributes["gen_ai.input.messages"] = json.dumps(
            [{"role": m.role, "parts": [{"type": "text", "content": m.content}]} for m in request.messages],
            ensure_ascii=False)
    return attributes


async def provider_call_traced(events: AsyncIterator, *, provider: str, request: ChatRequest) -> AsyncIterator:
    """`events` (an adapter's stream) with its span around it."""
    from opentelemetry import context, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    system = SYSTEMS.get(provider, provider)
    span = tracing.tracer.start_span(f"chat {request.model}", kind=SpanKind.CLIENT,
                                     attributes=_request_attributes(system, request))
    current = trace.set_span_in_context(span)
    parts: list[str] = []
    finish = None
    served = request.model
    try:
        while True:
            token = context.attach(current)
            try:
                event = await anext(events)
            except StopAsyncIteration:
                break
            finally:
                context.detach(token)
            if isinstance(event, Usage):
                span.set_attribute("gen_ai.usage.input_tokens", event.input_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", event.output_tokens)
                served = event.model or served
            elif isinstance(event, Finish):
                finish = event.reason
            elif isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, ToolCallDelta) and finish is None:
                finish = "tool_calls"
            yield event
        # The model the provider says answered (a dated snapshot of the one asked for), else the one asked for.
        span.set_attribute("gen_ai.response.model", served)
        span.set_attribute("gen_ai.response.finish_reasons", [finish or "stop"])
        if tracing.content_captured():
            span.set_attribute("gen_ai.output.messages", json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": "".join(parts)}],
                  "finish_reason": finish or "stop"}], ensure_ascii=False))
    except ProviderError as error:
        span.set_attribute("error.type", error.kind)
        span.set_status(Status(StatusCode.ERROR, error.message))
        raise
    except GeneratorExit:
        span.set_attribute("error.type", "cancelled")  # the reader stopped reading (a client gone, a stop)
        raise
    finally:
        span.end()
