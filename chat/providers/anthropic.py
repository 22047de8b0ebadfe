"""Anthropic's Messages API through the official SDK.

The system prompt goes in `system=`, images are base64 `image` blocks. OpenAI-shaped tools become
Anthropic tools; the history's tool calls `tool_use` blocks and tool results `tool_result` blocks in
a user turn; a streamed `tool_use` block becomes `ToolCallDelta`s. Input tokens come from
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
)
from .http import describe, kind_for_status, local_error, retry_after, tls_context

STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter"}
# `error.type` of an error event sent inside a stream (HTTP status 200).
STREAM_ERROR_KINDS = {"rate_limit_error": ProviderError.RATE_LIMITED, "authentication_error": ProviderError.AUTH,
                      "permission_error": ProviderError.AUTH, "invalid_request_error": ProviderError.BAD_REQUEST,
                      "request_too_large": ProviderError.BAD_REQUEST, "not_found_error": ProviderError.BAD_REQUEST}
TRANSPORT_ERRORS = (httpx2.TransportError, anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError, OSError)
# OpenAI fields Anthropic has no equivalent for; sent, they would be refused as unknown. `response_format`
# is one: Claude has no JSON mode that works on every model, so JSON must be asked for in the prompt.
DROPPED = ("response_format", "seed", "presence_penalty", "frequency_penalty")
TOOL_CHOICE_TYPES = frozenset({"auto", "any", "tool", "none"})


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


def tool_param(tool: Any) -> Any:
    """An OpenAI function tool as an Anthropic tool; any other tool (Anthropic's own) as is."""
    if not (isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict)):
        return tool
    function = tool["function"]
    result = {"name": function.get("name", ""),
              "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        result["description"] = function["description"]
    return result


def tool_choice_param(choice: Any, *, parallel: bool | None) -> dict[str, Any] | None:
    """OpenAI's `tool_choice` (and `parallel_tool_calls`) as Anthropic's; None leaves Anthropic's default."""
    result: dict[str, Any] | None = None
    if choice == "auto":
        result = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    elif choice == "none":
        result = {"type": "none"}
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        result = {"type": "tool", "name": choice["function"].get("name", "")}
    elif isinstance(choice, dict) and choice.get("type") in TOOL_CHOICE_TYPES:
        result = dict(choice)  # already Anthropic's
    if parallel is False and (result or {}).get("type", "auto") != "none":
        result = {"type": "auto", **(result or {}), "disable_parallel_tool_use": True}
    return result


def has_tool_turns(messages: list[ChatMessage]) -> bool:
    return any(message.tool_calls or message.role == "tool" for message in messages)


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
            "messages": self.messages_param(request.messages),
            "stream": True,
        }
        if system:
            params["system"] = system
        if request.stop:
            params["stop_sequences"] = list(request.stop)
        extra = {name: value for name, value in request.extra.items() if name not in DROPPED}
        tools = [tool_param(tool) for tool in extra.pop("tools", None) or ()]
        tool_choice = tool_choice_param(extra.pop("tool_choice", None), parallel=extra.pop("parallel_tool_calls", None))
        if tools and tool_choice == {"type": "none"} and not has_tool_turns(request.messages):
            tools, tool_choice = [], None  # "none" sends no tools, unless the history's tool_use blocks need them
        if tools:
            params["tools"] = tools
            if tool_choice:
                params["tool_choice"] = tool_choice
        user = extra.pop("user", None)
        if isinstance(user, str) and user and "metadata" not in extra:
            params["metadata"] = {"user_id": user}
        # Not keyword arguments of this SDK version, but still fields of the API.
        body: dict[str, Any] = {}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        body.update(extra)
        if body:
            params["extra_body"] = body
        return params

    def messages_param(self, messages: list[ChatMessage]) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = []
        for message in messages:
            if message.role == "system":
                continue
            if message.role == "tool":
                block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id or ""}
                if message.content:
                    block["content"] = message.content
                previous = result[-1] if result else None
                if previous and previous["role"] == "user" and isinstance(previous["content"], list) and all(
                        part.get("type") == "tool_result" for part in previous["content"]):
                    previous["content"].append(block)  # one user turn answers all of a turn's calls
                else:
                    result.append({"role": "user", "content": [block]})
            elif message.tool_calls:
                blocks: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
                blocks += [{"type": "tool_use", "id": call.id, "name": call.name, "input": self.tool_arguments(call)}
                           for call in message.tool_calls]
                result.append({"role": "assistant", "content": blocks})
            else:
                result.append({"role": message.role, "content": content_param(message.content, message.images)})
        return result

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        if not self.api_key:
            raise self.error(ProviderError.AUTH, "No API key configured.")
        self.key_check()
        started = stopped = False
        input_tokens = output_tokens = 0
        model = ""
        finish = "other"
        # Content block index -> tool call index: text blocks count in Anthropic's indexes, not in OpenAI's.
        tool_blocks: dict[int, int] = {}
        with_arguments: set[int] = set()
        try:
            events = await self.client().messages.create(**self.params(request))
            started = True
            try:
                async for event in events:
                    kind = getattr(event, "type", None)
                    if kind == "message_start":
                        model = str(getattr(event.message, "model", "") or "")
                        input_tokens = _input_tokens(event.message.usage) or input_tokens
                        output_tokens = event.message.usage.output_tokens or output_tokens
                    elif kind == "content_block_start" and getattr(event.content_block, "type", None) == "tool_use":
                        block = event.content_block
                        arguments = json.dumps(block.input, ensure_ascii=False) if getattr(block, "input", None) else ""
                        tool_blocks[event.index] = len(tool_blocks)
                        if arguments:
                            with_arguments.add(event.index)
                        yield ToolCallDelta(index=tool_blocks[event.index], id=block.id, name=block.name,
                                            arguments=arguments)
                    elif kind == "content_block_delta":
                        delta_type = getattr(event.delta, "type", None)
                        if delta_type == "text_delta" and event.delta.text:
                            yield TextDelta(event.delta.text)
                        elif delta_type == "input_json_delta" and event.index in tool_blocks:
                            if event.delta.partial_json:
                                with_arguments.add(event.index)
                                yield ToolCallDelta(index=tool_blocks[event.index], id=None, name=None,
                                                    arguments=event.delta.partial_json)
                    elif kind == "content_block_stop" and event.index in tool_blocks:
                        if event.index not in with_arguments:
                            # A call without arguments streams none; OpenAI's clients expect a JSON object.
                            yield ToolCallDelta(index=tool_blocks[event.index], id=None, name=None, arguments="{}")
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
            if not started and (local := local_error(error)) is not None:
                raise self.error(ProviderError.CONFIG, f"The request could not be built: {describe(local)}") from error
            if started:
                raise self.error(ProviderError.INTERRUPTED, f"The stream broke off: {describe(error)}") from error
            raise self.error(ProviderError.UNAVAILABLE, f"Cannot connect: {describe(error)}") from error
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise self.error(ProviderError.PROTOCOL, f"Malformed event: {error}") from error
        except anthropic.AnthropicError as error:
            raise self.error(ProviderError.PROTOCOL, str(error)) from error
        if not stopped:
            raise self.error(ProviderError.INTERRUPTED, "The stream ended without message_stop.")
        yield Usage(input_tokens=input_tokens, output_tokens=output_tokens, model=model)
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
