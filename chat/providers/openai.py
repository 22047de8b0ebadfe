"""OpenAI's Chat Completions API through the official SDK; DeepSeek speaks the same protocol.

The SDK is told not to retry (`max_retries=0`): falling back or retrying is the router's
decision. Every SDK and transport exception is turned into a `ProviderError`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import openai

from .base import (
    ChatMessage,
    ChatRequest,
    Event,
    Finish,
    ProviderAdapter,
    ProviderError,
    TextDelta,
    ToolCallDelta,
    Usage,
    tool_call_id_new,
)
from .http import describe, kind_for_status, retry_after, tls_context

FINISH_REASONS = {"stop": "stop", "length": "length", "content_filter": "content_filter",
                  "tool_calls": "tool_calls", "function_call": "tool_calls"}
# A 429 with these codes is an exhausted account, not a burst: this key will not work later either.
QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})


def message_param(message: ChatMessage) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id or "", "content": message.content}
    if message.tool_calls:
        return {"role": message.role, "content": message.content or None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in message.tool_calls
        ]}
    if not message.images:
        return {"role": message.role, "content": message.content}
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
    for image in message.images:
        url = f"data:{image.media_type};base64,{base64.b64encode(image.data).decode()}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return {"role": message.role, "content": parts}


class OpenAIAdapter(ProviderAdapter):
    name = "openai"

    _client: openai.AsyncOpenAI | None = None

    def client(self) -> openai.AsyncOpenAI:
        # Made on first use, inside the event loop that will use its connections.
        if self._client is None:
            timeout = openai.Timeout(self.timeouts.read, connect=self.timeouts.connect)
            self._client = openai.AsyncOpenAI(
                api_key=self.api_key, base_url=self.base_url, max_retries=0, timeout=timeout,
                http_client=openai.DefaultAsyncHttpxClient(timeout=timeout, verify=tls_context()),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def max_tokens_param(self) -> str:
        return "max_completion_tokens" if self.provider == "openai" else "max_tokens"

    def params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model,
            "messages": [message_param(message) for message in request.messages],
            # OpenAI's reasoning models (gpt-5, o-series) refuse `max_tokens`; OpenAI-compatible
            # APIs (DeepSeek) only know `max_tokens`.
            self.max_tokens_param: request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.top_p is not None:
            params["top_p"] = request.top_p
        if request.stop:
            params["stop"] = list(request.stop)
        if request.extra:
            # Sent as JSON as given (tools, tool_choice, response_format, user, …).
            params["extra_body"] = dict(request.extra)
        return params

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        if not self.api_key:
            raise self.error(ProviderError.AUTH, "No API key configured.")
        started = False
        finish: str | None = None
        usage: Usage | None = None
        calls_seen: set[int] = set()
        try:
            chunks = await self.client().chat.completions.create(**self.params(request))
            started = True
            try:
                async for chunk in chunks:
                    if getattr(chunk, "usage", None) is not None:
                        usage = Usage(input_tokens=chunk.usage.prompt_tokens or 0,
                                      output_tokens=chunk.usage.completion_tokens or 0)
                    for choice in getattr(chunk, "choices", None) or ():
                        if getattr(choice, "index", 0):
                            continue
                        text = getattr(choice.delta, "content", None) if choice.delta is not None else None
                        if text:
                            yield TextDelta(text)
                        for call in getattr(choice.delta, "tool_calls", None) or ():
                            yield self.tool_call_delta(call, calls_seen)
                        if choice.finish_reason:
                            finish = FINISH_REASONS.get(choice.finish_reason, "other")
            finally:
                await chunks.close()
        except openai.APIStatusError as error:
            raise self.status_error(error) from error
        except openai.APITimeoutError as error:
            raise self.error(ProviderError.TIMEOUT, "No answer within the read timeout.") from error
        except openai.APIConnectionError as error:
            if started:
                raise self.error(ProviderError.INTERRUPTED, f"The stream broke off: {describe(error)}") from error
            raise self.error(ProviderError.UNAVAILABLE, f"Cannot connect: {describe(error)}") from error
        except openai.APIError as error:
            # An `{"error": …}` chunk in the middle of a stream: the provider gave up on this answer.
            raise self.error(ProviderError.UNAVAILABLE, f"Error in the stream: {error.message}") from error
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise self.error(ProviderError.PROTOCOL, f"Malformed chunk: {error}") from error
        except openai.OpenAIError as error:
            raise self.error(ProviderError.PROTOCOL, str(error)) from error
        if finish is None:
            raise self.error(ProviderError.INTERRUPTED, "The stream ended without a finish reason.")
        if usage is None:
            raise self.error(ProviderError.INTERRUPTED, "The stream ended without usage.")
        yield usage
        yield Finish(finish)

    @staticmethod
    def tool_call_delta(call, calls_seen: set[int]) -> ToolCallDelta:
        function = call.function
        call_id = call.id
        if call.index not in calls_seen:
            calls_seen.add(call.index)
            call_id = call_id or tool_call_id_new()  # some OpenAI-compatible servers leave it out
        return ToolCallDelta(index=call.index, id=call_id, name=function.name if function else None,
                             arguments=(function.arguments if function else None) or "")

    def status_error(self, error: openai.APIStatusError) -> ProviderError:
        status = error.status_code
        kind = kind_for_status(status)
        if error.code in QUOTA_CODES:
            kind = ProviderError.AUTH
        return self.error(kind, error.message, status=status,
                          retry_after=retry_after(error.response.headers) if status == 429 else None)

