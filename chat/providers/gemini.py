"""Google's Gemini API (`streamGenerateContent?alt=sse`) over plain httpx.

No SDK: the REST stream is small, and httpx gives us the same timeout and error handling as
the other adapters. The stream has no end marker besides a candidate's `finishReason`, so a
stream that ends without one was cut. `usageMetadata` repeats in chunks; the last one counts.

OpenAI-shaped tools become `functionDeclarations`, the history's tool calls `functionCall` parts
and tool results `functionResponse` parts. Gemini sends each call whole, without an id: each
becomes one complete `ToolCallDelta` with an id of ours.
"""

from __future__ import annotations

import base64
import json
import re
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

FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter",
                  "RECITATION": "content_filter", "PROHIBITED_CONTENT": "content_filter",
                  "BLOCKLIST": "content_filter", "SPII": "content_filter", "IMAGE_SAFETY": "content_filter",
                  "MALFORMED_FUNCTION_CALL": "other"}
# Gemini answers a wrong API key with 400 INVALID_ARGUMENT; the reason tells it apart.
AUTH_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED", "API_KEY_HTTP_REFERRER_BLOCKED"})
# The JSON Schema keywords Gemini's `Schema` knows; it refuses the request over any other
# (`additionalProperties`, `$schema`, `$ref`, `const`, …).
SCHEMA_KEYS = frozenset({"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
                         "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
                         "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
                         "maximum"})
# Schemas that lose their meaning without these are not sent as a `responseSchema` (JSON mode only).
SCHEMA_REFERENCES = frozenset({"$ref", "$defs", "definitions", "allOf", "oneOf", "not"})
TOOL_CHOICE_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
# OpenAI fields Gemini has no equivalent for (penalties are refused by most Gemini models).
DROPPED = ("user", "presence_penalty", "frequency_penalty", "parallel_tool_calls")


def parts(text: str, images) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = [
        {"inline_data": {"mime_type": image.media_type, "data": base64.b64encode(image.data).decode()}}
        for image in images
    ]
    if text or not result:
        result.append({"text": text})
    return result


def schema_for_gemini(schema: Any) -> Any:
    """A JSON Schema reduced to the subset Gemini accepts (recursively; property names are kept)."""
    if not isinstance(schema, dict):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key not in SCHEMA_KEYS:
            continue
        if key == "properties" and isinstance(value, dict):
            value = {name: schema_for_gemini(item) for name, item in value.items()}
        elif key == "items":
            value = schema_for_gemini(value)
        elif key == "anyOf" and isinstance(value, list):
            value = [schema_for_gemini(item) for item in value]
        elif key == "enum" and isinstance(value, list):
            value = [item if isinstance(item, str) else json.dumps(item) for item in value]  # Gemini's are strings
        elif key == "type" and isinstance(value, list):
            # JSON Schema's `["string", "null"]`: Gemini has one type and `nullable`.
            types = [kind for kind in value if kind != "null"]
            if len(types) != len(value):
                result["nullable"] = True
            value = types[0] if types else "string"
        result[key] = value
    return result


def schema_has_references(schema: Any) -> bool:
    if isinstance(schema, list):
        return any(schema_has_references(item) for item in schema)
    if not isinstance(schema, dict):
        return False
    if SCHEMA_REFERENCES & schema.keys():
        return True
    return any(schema_has_references(list(value.values()) if key == "properties" and isinstance(value, dict)
                                     else value) for key, value in schema.items())


def function_declaration(function: dict) -> dict[str, Any]:
    declaration = {"name": function.get("name", "")}
    if function.get("description"):
        declaration["description"] = function["description"]
    parameters = function.get("parameters")
    # Gemini refuses an object schema without properties: a function without arguments has no `parameters`.
    if isinstance(parameters, dict) and parameters.get("properties"):
        declaration["parameters"] = schema_for_gemini(parameters)
    return declaration


def tools_param(tools: list) -> list[Any]:
    """OpenAI function tools as one `functionDeclarations` tool; other tools (Gemini's own) as they are."""
    functions, native = [], []
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
            functions.append(function_declaration(tool["function"]))
        else:
            native.append(tool)
    return ([{"functionDeclarations": functions}] if functions else []) + native


def tool_config(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, str) and choice in TOOL_CHOICE_MODES:
        return {"functionCallingConfig": {"mode": TOOL_CHOICE_MODES[choice]}}
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name")]}}
    return None


def response_config(response_format: Any) -> dict[str, Any]:
    """OpenAI's `response_format` as generationConfig fields."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict) and not schema_has_references(schema):
            return {"responseMimeType": "application/json", "responseSchema": schema_for_gemini(schema)}
        return {"responseMimeType": "application/json"}
    return {}


def tool_response(content: str) -> dict[str, Any]:
    """A tool's result as a `functionResponse.response` object: its JSON when it is JSON, else its text."""
    try:
        value = json.loads(content)
    except ValueError:
        value = content
    return {"content": value}


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
        body: dict[str, Any] = {"contents": self.contents(request.messages), "generationConfig": config}
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        extra = {name: value for name, value in request.extra.items() if name not in DROPPED}
        tools = tools_param(extra.pop("tools", None) or [])
        choice = tool_config(extra.pop("tool_choice", None))
        if tools:
            body["tools"] = tools
            if choice:
                body["toolConfig"] = choice
        config.update(response_config(extra.pop("response_format", None)))
        if "seed" in extra:
            config["seed"] = extra.pop("seed")
        if isinstance(extra.get("generationConfig"), dict):
            config.update(extra.pop("generationConfig"))
        body.update(extra)  # Gemini's own: toolConfig, safetySettings, cachedContent…
        return body

    def contents(self, messages: list[ChatMessage]) -> list[dict[str, Any]]:
        names = tool_names_by_id(messages)
        contents: list[dict[str, Any]] = []
        for message in messages:
            if message.role == "system":
                continue
            if message.role == "tool":
                # Gemini pairs a result with its call by function name, not by id.
                name = names.get(message.tool_call_id or "")
                if name is None:
                    raise self.error(ProviderError.BAD_REQUEST,
                                     f"Tool result for {message.tool_call_id!r} follows no call with that id.")
                part = {"functionResponse": {"name": name, "response": tool_response(message.content)}}
                previous = contents[-1] if contents else None
                if previous and previous["role"] == "user" and all("functionResponse" in item
                                                                   for item in previous["parts"]):
                    previous["parts"].append(part)  # one user turn answers all of a turn's calls
                else:
                    contents.append({"role": "user", "parts": [part]})
            elif message.tool_calls:
                items: list[dict[str, Any]] = [{"text": message.content}] if message.content else []
                items += [{"functionCall": {"name": call.name, "args": self.tool_arguments(call)}}
                          for call in message.tool_calls]
                contents.append({"role": "model", "parts": items})
            else:
                contents.append({"role": "model" if message.role == "assistant" else "user",
                                 "parts": parts(message.content, message.images)})
        return contents

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        if not self.api_key:
            raise self.error(ProviderError.AUTH, "No API key configured.")
        self.key_check()
        url = f"{self.base_url}/v1beta/models/{request.model}:streamGenerateContent"
        started = False
        finish: str | None = None
        usage: dict = {}
        model = ""
        calls = 0
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
                    model = chunk.get("modelVersion") or model
                    blocked = (chunk.get("promptFeedback") or {}).get("blockReason")
                    if blocked:
                        finish = "content_filter"
                    for candidate in (chunk.get("candidates") or [])[:1]:
                        for part in (candidate.get("content") or {}).get("parts") or ():
                            if part.get("text") and not part.get("thought"):
                                yield TextDelta(part["text"])
                            elif isinstance(part.get("functionCall"), dict):
                                call = part["functionCall"]
                                yield ToolCallDelta(index=calls, id=call.get("id") or tool_call_id_new(),
                                                    name=call.get("name", ""),
                                                    arguments=json.dumps(call.get("args") or {}, ensure_ascii=False))
                                calls += 1
                        if candidate.get("finishReason"):
                            finish = FINISH_REASONS.get(candidate["finishReason"], "other")
        except (httpx.HTTPError, ValueError, TypeError, AttributeError) as error:
            raise self.stream_error(error, started=started) from error
        if finish is None:
            raise self.error(ProviderError.INTERRUPTED, "The stream ended without a finish reason.")
        if calls and finish == "stop":
            finish = "tool_calls"  # Gemini says STOP: the answer is its calls
        yield Usage(input_tokens=usage.get("promptTokenCount") or 0,
                    output_tokens=(usage.get("candidatesTokenCount") or 0) + (usage.get("thoughtsTokenCount") or 0),
                    model=str(model or ""))
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
