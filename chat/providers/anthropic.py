"""Anthropic's Messages API through the official SDK.

The system prompt goes in `system=`, images are base64 `image` blocks. Input tokens come from
`message_start` (plus prompt-cache tokens, billed as input too); output tokens are cumulative in
each `message_delta`, so the last value counts. The SDK does not retry (`max_retries=0`), and
lets transport errors inside a stream through raw: both are mapped to `ProviderError` here.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import anyio
import httpx2

from .base import ChatRequest, Event, Finish, ProviderAdapter, ProviderError, TextDelta, Usage
from .http import describe, kind_for_status, retry_after, tls_context

STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter"}
# `error.type` of an error event sent inside a stream (HTTP status 200).
STREAM_ERROR_KINDS = {"rate_limit_error": ProviderError.RATE_LIMITED, "authentication_error": ProviderError.AUTH,
                      "permission_error": ProviderError.AUTH, "invalid_request_error": ProviderError.BAD_REQUEST,
                      "request_too_large": ProviderError.BAD_REQUEST, "not_found_error": ProviderError.BAD_REQUEST}
TRANSPORT_ERRORS = (httpx2.TransportError, anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError, OSError)


def content_param(text: str, images) -> str | list[dict[str, Any]]:
    if not images:
        return text
    blocks: list[dict[str, Any]] = [
        {"type": "image", "source": {"type": "base64", "media_type": image.media_type,
                                     "data": base64.b64encode(image.data).decode()}}
        for image in images
    ]
    if text:
        blocks.append({"type": "text", "text": text})
    return blocks


class AnthropicAdapter(ProviderAdapter):
    name = "anthropic"

    _client: anthropic.AsyncAnthropic | None = None

    def client(self) -> anthropic.AsyncAnthropic:
        # Made on first use, inside the event loop that will use its connections.
        if self._client is None:
            timeout = anthropic.Timeout(self.timeouts.read, connect=self.timeouts.connect)
            self._client = anthropic.AsyncAnthropic(
                api_key=self.api_key, base_url=self.base_url, max_retries=0, timeout=timeout,
                http_client=anthropic.DefaultAsyncHttpxClient(timeout=timeout, verify=tls_context()),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def params(self, request: ChatRequest) -> dict[str, Any]:
        system = "\n\n".join(message.content for message in request.messages if message.role == "system")
        params: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": message.role, "content": content_param(message.content, message.images)}
                         for message in request.messages if message.role != "system"],
            "stream": True,
        }
        if system:
            params["system"] = system
        if request.stop:
            params["stop_sequences"] = list(request.stop)
        # Not keyword arguments of this SDK version, but still fields of the API.
        body: dict[str, Any] = {}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        body.update(request.extra)
        if body:
            params["extra_body"] = body
        return params

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        if not self.api_key:
            raise self.error(ProviderError.AUTH, "No API key configured.")
        started = stopped = False
        input_tokens = output_tokens = 0
        finish = "other"
        try:
            events = await self.client().messages.create(**self.params(request))
            started = True
            try:
                async for event in events:
                    kind = getattr(event, "type", None)
                    if kind == "message_start":
                        input_tokens = _input_tokens(event.message.usage) or input_tokens
                        output_tokens = event.message.usage.output_tokens or output_tokens
                    elif kind == "content_block_delta":
                        text = getattr(event.delta, "text", None) if event.delta.type == "text_delta" else None
                        if text:
                            yield TextDelta(text)
                    elif kind == "message_delta":
                        if event.delta.stop_reason:
                            finish = STOP_REASONS.get(event.delta.stop_reason, "other")
                        if event.usage is not None:
                            output_tokens = event.usage.output_tokens or output_tokens
                            input_tokens = _input_tokens(event.usage) or input_tokens
                    elif kind == "message_stop":
                        stopped = True
            finally:
                await events.close()
        except anthropic.APIStatusError as error:
            raise self.status_error(error) from error
        except (anthropic.APITimeoutError, httpx2.TimeoutException) as error:
            raise self.error(ProviderError.TIMEOUT, "No answer within the read timeout.") from error
        except (anthropic.APIConnectionError, *TRANSPORT_ERRORS) as error:
            if started:
                raise self.error(ProviderError.INTERRUPTED, f"The stream broke off: {describe(error)}") from error
            raise self.error(ProviderError.UNAVAILABLE, f"Cannot connect: {describe(error)}") from error
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise self.error(ProviderError.PROTOCOL, f"Malformed event: {error}") from error
        except anthropic.AnthropicError as error:
            raise self.error(ProviderError.PROTOCOL, str(error)) from error
        if not stopped:
            raise self.error(ProviderError.INTERRUPTED, "The stream ended without message_stop.")
        yield Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        yield Finish(finish)

    def status_error(self, error: anthropic.APIStatusError) -> ProviderError:
        status = error.status_code
        message = error.api_message or error.message
        if status == 200:
            # An `event: error` inside the stream (overloaded, rate limited…), after the answer began.
            kind = STREAM_ERROR_KINDS.get(error.type or "", ProviderError.UNAVAILABLE)
            return self.error(kind, f"Error in the stream: {error.type}: {message}")
        return self.error(kind_for_status(status), f"{status} {error.type or ''}: {message}", status=status,
                          retry_after=retry_after(error.response.headers) if status == 429 else None)


def _input_tokens(usage) -> int:
    """Input tokens as billed: uncached, plus those written to and read from the prompt cache."""
    if getattr(usage, "input_tokens", None) is None:
        return 0
    return (usage.input_tokens + (getattr(usage, "cache_creation_input_tokens", None) or 0)
            + (getattr(usage, "cache_read_input_tokens", None) or 0))
