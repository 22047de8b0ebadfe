"""OpenAI's Chat Completions API over httpx; DeepSeek (and any OpenAI-compatible API) speaks the same.

Not through the official SDK: on the /v1 gateway's hot path the SDK's request transforms and
per-chunk model construction cost ~2.5 ms of CPU a call, more than everything else Prumo does
(measured with py-spy under bench/gateway.py; bench/RESULTS.md). The protocol is plain JSON
over server-sent events, read here the way the Gemini and Ollama adapters read theirs. Nothing
is retried: falling back or retrying is the router's decision.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from .base import (
    ChatMessage,
    ChatRequest,
    Event,
    Finish,
    ProviderError,
    TextDelta,
    ToolCallDelta,
    Usage,
    tool_call_id_new,
)
from .http import HttpxAdapter, kind_for_status, retry_after

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


class OpenAIAdapter(HttpxAdapter):
    name = "openai"

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
        # Sent as given (tools, tool_choice, response_format, user, …); ours win over a clash.
        return {**request.extra, **params}

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        if not self.api_key:
            raise self.error(ProviderError.AUTH, "No API key configured.")
        self.key_check()
        started = False
        finish: str | None = None
        usage: Usage | None = None
        calls_seen: set[int] = set()
        try:
            async with self.client().stream(
                "POST", f"{self.base_url.rstrip('/')}/chat/completions", json=self.params(request),
                headers={"Authorization": f"Bearer {self.api_key}"},
            ) as response:
                if response.status_code != 200:
                    raise self.status_error(response, await response.aread())
                started = True
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, `event:` lines
                    data = line[5:].strip()
                    if data == "[DONE]":
                        continue  # read on to the body's end: a response left unread closes its connection
                    chunk = json.loads(data)
                    if not isinstance(chunk, dict):
                        raise ValueError(f"a chunk that is not an object: {data[:80]!r}")
                    if chunk.get("error"):
                        # An error in the middle of a stream: the provider gave up on this answer.
                        raise self.error(ProviderError.UNAVAILABLE,
                                         f"Error in the stream: {error_message(chunk['error'])}")
                    if chunk.get("usage"):
                        usage = Usage(input_tokens=chunk["usage"].get("prompt_tokens") or 0,
                                      output_tokens=chunk["usage"].get("completion_tokens") or 0,
                                      model=str(chunk.get("model") or ""))
                    for choice in chunk.get("choices") or ():
                        if choice.get("index", 0):
                            continue
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            yield TextDelta(delta["content"])
                        for call in delta.get("tool_calls") or ():
                            yield self.tool_call_delta(call, calls_seen)
                        if choice.get("finish_reason"):
                            finish = FINISH_REASONS.get(choice["finish_reason"], "other")
        except (httpx.HTTPError, ValueError, TypeError, AttributeError) as error:
            raise self.stream_error(error, started=started) from error
        if finish is None:
            raise self.error(ProviderError.INTERRUPTED, "The stream ended without a finish reason.")
        if usage is None:
            raise self.error(ProviderError.INTERRUPTED, "The stream ended without usage.")
        yield usage
        yield Finish(finish)

    @staticmethod
    def tool_call_delta(call: dict, calls_seen: set[int]) -> ToolCallDelta:
        function = call.get("function") or {}
        index = call.get("index", 0)
        call_id = call.get("id")
        if index not in calls_seen:
            calls_seen.add(index)
            call_id = call_id or tool_call_id_new()  # some OpenAI-compatible servers leave it out
        return ToolCallDelta(index=index, id=call_id, name=function.get("name"),
                             arguments=function.get("arguments") or "")

    def status_error(self, response: httpx.Response, content: bytes) -> ProviderError:
        status = response.status_code
        try:
            error = json.loads(content).get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, dict):
            message, code = error_message(error), error.get("code")
        else:
            message, code = f"{status}: {content.decode(errors='replace')[:200]}", None
        kind = ProviderError.AUTH if code in QUOTA_CODES else kind_for_status(status)
        return self.error(kind, message, status=status,
                          retry_after=retry_after(response.headers) if status == 429 else None)


def error_message(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or error)
    return str(error)
