"""A self-hosted Ollama server (`POST /api/chat`, newline-delimited JSON) over plain httpx.

Ollama needs no key; when one is configured (a server behind an authenticating proxy) it is
sent as a bearer token. The last line says `done: true` and carries the token counts; an
`{"error": …}` line can replace it mid-stream.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from .base import ChatRequest, Event, Finish, ProviderError, TextDelta, Usage
from .http import HttpxAdapter, kind_for_status, retry_after

DONE_REASONS = {"stop": "stop", "length": "length"}


class OllamaAdapter(HttpxAdapter):
    name = "ollama"

    def body(self, request: ChatRequest) -> dict[str, Any]:
        messages = []
        for message in request.messages:
            item: dict[str, Any] = {"role": message.role, "content": message.content}
            if message.images:
                item["images"] = [base64.b64encode(image.data).decode() for image in message.images]
            messages.append(item)
        options: dict[str, Any] = {"num_predict": request.max_tokens}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.top_p is not None:
            options["top_p"] = request.top_p
        if request.stop:
            options["stop"] = list(request.stop)
        extra = dict(request.extra)
        if isinstance(extra.get("options"), dict):
            options.update(extra.pop("options"))
        return {"model": request.model, "messages": messages, "stream": True, "options": options,
                **extra}  # tools, format, keep_alive, think…

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        if not self.base_url:
            raise self.error(ProviderError.UNAVAILABLE, "No Ollama URL configured.")
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        started = False
        done: dict | None = None
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
                    text = (chunk.get("message") or {}).get("content")
                    if text:
                        yield TextDelta(text)
                    if chunk.get("done"):
                        done = chunk
                        break
        except (httpx.HTTPError, ValueError, TypeError, AttributeError) as error:
            raise self.stream_error(error, started=started) from error
        if done is None:
            raise self.error(ProviderError.INTERRUPTED, "The stream ended before `done`.")
        yield Usage(input_tokens=done.get("prompt_eval_count") or 0, output_tokens=done.get("eval_count") or 0)
        yield Finish(DONE_REASONS.get(done.get("done_reason") or "stop", "other"))

    def status_error(self, response: httpx.Response, content: bytes) -> ProviderError:
        try:
            message = json.loads(content).get("error")
        except (ValueError, AttributeError):
            message = None
        message = message or content.decode(errors="replace")[:200]
        status = response.status_code
        return self.error(kind_for_status(status), f"{status}: {message}", status=status,
                          retry_after=retry_after(response.headers) if status == 429 else None)
