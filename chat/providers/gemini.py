"""Google's Gemini API (`streamGenerateContent?alt=sse`) over plain httpx.

No SDK: the REST stream is small, and httpx gives us the same timeout and error handling as
the other adapters. The stream has no end marker besides a candidate's `finishReason`, so a
stream that ends without one was cut. `usageMetadata` repeats in chunks; the last one counts.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx

from .base import ChatRequest, Event, Finish, ProviderError, TextDelta, Usage
from .http import HttpxAdapter, kind_for_status, retry_after

FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter",
                  "RECITATION": "content_filter", "PROHIBITED_CONTENT": "content_filter",
                  "BLOCKLIST": "content_filter", "SPII": "content_filter", "IMAGE_SAFETY": "content_filter",
                  "MALFORMED_FUNCTION_CALL": "other"}
# Gemini answers a wrong API key with 400 INVALID_ARGUMENT; the reason tells it apart.
AUTH_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED", "API_KEY_HTTP_REFERRER_BLOCKED"})


def parts(text: str, images) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = [
        {"inline_data": {"mime_type": image.media_type, "data": base64.b64encode(image.data).decode()}}
        for image in images
    ]
    if text or not result:
        result.append({"text": text})
    return result


def retry_delay(error: dict) -> float | None:
    """Seconds from a `google.rpc.RetryInfo` detail (`"retryDelay": "31s"`)."""
    for detail in error.get("details") or ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = re.fullmatch(r"(\d+(?:\.\d+)?)s", str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


class GeminiAdapter(HttpxAdapter):
    name = "gemini"

    def body(self, request: ChatRequest) -> dict[str, Any]:
        system = "\n\n".join(message.content for message in request.messages if message.role == "system")
        config: dict[str, Any] = {"maxOutputTokens": request.max_tokens}
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.top_p is not None:
            config["topP"] = request.top_p
        if request.stop:
            config["stopSequences"] = list(request.stop)
        body: dict[str, Any] = {
            "contents": [{"role": "model" if message.role == "assistant" else "user",
                          "parts": parts(message.content, message.images)}
                         for message in request.messages if message.role != "system"],
            "generationConfig": config,
        }
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        extra = dict(request.extra)
        if isinstance(extra.get("generationConfig"), dict):
            config.update(extra.pop("generationConfig"))
        body.update(extra)  # tools, toolConfig, safetySettings, cachedContent…
        return body

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        if not self.api_key:
            raise self.error(ProviderError.AUTH, "No API key configured.")
        url = f"{self.base_url}/v1beta/models/{request.model}:streamGenerateContent"
        started = False
        finish: str | None = None
        usage: dict = {}
        try:
            async with self.client().stream(
                "POST", url, params={"alt": "sse"}, json=self.body(request),
                headers={"x-goog-api-key": self.api_key},
            ) as response:
                if response.status_code != 200:
                    raise self.status_error(response, await response.aread())
                started = True
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, `event:` lines
                    chunk = json.loads(line[5:].strip())
                    if not isinstance(chunk, dict):
                        raise ValueError(f"a chunk that is not an object: {line[:80]!r}")
                    if "error" in chunk:
                        raise self.error_from_body(chunk, status=None)
                    usage = chunk.get("usageMetadata") or usage
                    blocked = (chunk.get("promptFeedback") or {}).get("blockReason")
                    if blocked:
                        finish = "content_filter"
                    for candidate in (chunk.get("candidates") or [])[:1]:
                        for part in (candidate.get("content") or {}).get("parts") or ():
                            if part.get("text") and not part.get("thought"):
                                yield TextDelta(part["text"])
                        if candidate.get("finishReason"):
                            finish = FINISH_REASONS.get(candidate["finishReason"], "other")
        except (httpx.HTTPError, ValueError, TypeError, AttributeError) as error:
            raise self.stream_error(error, started=started) from error
        if finish is None:
            raise self.error(ProviderError.INTERRUPTED, "The stream ended without a finish reason.")
        yield Usage(input_tokens=usage.get("promptTokenCount") or 0,
                    output_tokens=(usage.get("candidatesTokenCount") or 0) + (usage.get("thoughtsTokenCount") or 0))
        yield Finish(finish)

    def status_error(self, response: httpx.Response, content: bytes) -> ProviderError:
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            text = content.decode(errors="replace")[:200]
            return self.error(kind_for_status(response.status_code), f"{response.status_code}: {text}",
                              status=response.status_code,
                              retry_after=retry_after(response.headers) if response.status_code == 429 else None)
        return self.error_from_body(body, status=response.status_code, headers=response.headers)

    def error_from_body(self, body: dict, *, status: int | None, headers=None) -> ProviderError:
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        code = status or error.get("code") or 500
        kind = kind_for_status(code)
        reasons = {detail.get("reason") for detail in error.get("details") or () if isinstance(detail, dict)}
        if reasons & AUTH_REASONS:
            kind = ProviderError.AUTH
        wait = None
        if kind == ProviderError.RATE_LIMITED:
            wait = retry_after(headers or {})
            wait = retry_delay(error) if wait is None else wait
        message = f"{code} {error.get('status', '')}: {error.get('message', '')}"
        if status is None:
            message = f"Error in the stream: {message}"
        return self.error(kind, message, status=status, retry_after=wait)
