"""A self-hosted Ollama server (`POST /api/chat`, newline-delimited JSON) over plain httpx.

Ollama needs no key; when one is configured (a server behind an authenticating proxy) it is
sent as a bearer token. The last line says `done: true` and carries the token counts; an
`{"error": …}` line can replace it mid-stream.

Ollama takes OpenAI's tool definitions as they are, but a call's arguments are an object, not
JSON text, both in the history and in `message.tool_calls` (whole calls, usually without an id).
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
    tool_names_by_id,
)
from .http import HttpxAdapter, kind_for_status, retry_after

DONE_REASONS = {"stop": "stop", "length": "length"}
# OpenAI fields that are Ollama options.
OPTIONS = ("seed", "presence_penalty", "frequency_penalty")
# OpenAI fields not sent as they are: `response_format` becomes `format`; Ollama has no `tool_choice`,
# so only "none" (no tools) is honoured; the others have no equivalent.
DROPPED = ("user", "parallel_tool_calls", "tool_choice", "response_format")


def response_format_param(response_format: Any) -> str | dict | None:
    """OpenAI's `response_format` as Ollama's `format`: "json", or the JSON schema itself."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else "json"
    return None


class OllamaAdapter(HttpxAdapter):
    name = "ollama"

    def body(self, request: ChatRequest) -> dict[str, Any]:
        names = tool_names_by_id(request.messages)
        messages = [self.message_param(message, names) for message in request.messages]
        options: dict[str, Any] = {"num_predict": request.max_tokens}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.top_p is not None:
            options["top_p"] = request.top_p
        if request.stop:
            options["stop"] = list(request.stop)
        extra = {name: value for name, value in request.extra.items() if name not in DROPPED}
        options.update({name: extra.pop(name) for name in OPTIONS if name in extra})
        if isinstance(extra.get("options"), dict):
            options.update(extra.pop("options"))
        if request.extra.get("tool_choice") == "none":
            extra.pop("tools", None)
        response_format = response_format_param(request.extra.get("response_format"))
        if response_format is not None:
            extra.setdefault("format", response_format)
        return {"model": request.model, "messages": messages, "stream": True, "options": options,
                **extra}  # tools, format, keep_alive, think…

    def message_param(self, message: ChatMessage, tool_names: dict[str, str]) -> dict[str, Any]:
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.images:
            item["images"] = [base64.b64encode(image.data).decode() for image in message.images]
        if message.tool_calls:
            item["tool_calls"] = [{"function": {"name": call.name, "arguments": self.tool_arguments(call)}}
                                  for call in message.tool_calls]
        if message.role == "tool":
            name = tool_names.get(message.tool_call_id or "")
            if name:
                item["tool_name"] = name  # which function answered (older Ollamas ignore unknown fields)
        return item

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        if not self.base_url:
            raise self.error(ProviderError.UNAVAILABLE, "No Ollama URL configured.")
        self.key_check()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        started = False
        done: dict | None = None
        calls = 0
        try:
            async with self.client().stream("POST", f"{self.base_url}/api/chat", json=self.body(request),
                                            headers=headers) as response:
                if response.status_code != 200:
                    raise self.status_error(response, await response.aread())
                started = True
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    chunk = json.loads(line)
                    if not isinstance(chunk, dict):
                        raise ValueError(f"a line that is not an object: {line[:80]!r}")
                    if chunk.get("error"):
                        raise self.error(ProviderError.UNAVAILABLE, f"Error in the stream: {chunk['error']}")
                    message = chunk.get("message") or {}
                    if message.get("content"):
                        yield TextDelta(message["content"])
                    for call in message.get("tool_calls") or ():
                        function = call.get("function") or {}
                        arguments = function.get("arguments")
                        if not isinstance(arguments, str):
                            arguments = json.dumps(arguments or {}, ensure_ascii=False)
                        yield ToolCallDelta(index=calls, id=call.get("id") or tool_call_id_new(),
                                            name=function.get("name", ""), arguments=arguments)
                        calls += 1
                    if chunk.get("done"):
                        done = chunk  # read on to the body's end: a response left unread closes its connection
        except (httpx.HTTPError, ValueError, TypeError, AttributeError) as error:
            raise self.stream_error(error, started=started) from error
        if done is None:
            raise self.error(ProviderError.INTERRUPTED, "The stream ended before `done`.")
        finish = DONE_REASONS.get(done.get("done_reason") or "stop", "other")
        if calls and finish == "stop":
            finish = "tool_calls"  # Ollama says stop: the answer is its calls
        yield Usage(input_tokens=done.get("prompt_eval_count") or 0, output_tokens=done.get("eval_count") or 0,
                    model=str(done.get("model") or ""))
        yield Finish(finish)

    def status_error(self, response: httpx.Response, content: bytes) -> ProviderError:
        try:
            message = json.loads(content).get("error")
        except (ValueError, AttributeError):
            message = None
        message = message or content.decode(errors="replace")[:200]
        status = response.status_code
        return self.error(kind_for_status(status), f"{status}: {message}", status=status,
                          retry_after=retry_after(response.headers) if status == 429 else None)
