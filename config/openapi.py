"""The OpenAPI document (drf-spectacular) and its docs page.

- `/api/v1/...` (DRF) is described by drf-spectacular from the views; `api_schema_postprocess`
  adds what it cannot see: the error bodies every operation may answer, the `X-Organization`
  header that a session must send, and the OpenAI-compatible `/v1/models` and
  `/v1/chat/completions`, which chat.v1 serves as its own ASGI app outside Django's handler.
- `/api/docs/` is Swagger UI from our own static files (drf-spectacular-sidecar), with no inline
  script or style: the init script comes from the view's `?script` URL and the page's styles
  from static/api/docs.css, so the site's strict CSP holds.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.views import SpectacularSwaggerSplitView

API_KEY_SCHEME = "apiKey"
SESSION_SCHEME = "cookieAuth"
ORGANIZATION_SCHEME = "organizationHeader"


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.api_base.ApiKeyAuthentication"
    name = API_KEY_SCHEME

    def get_security_definition(self, auto_schema) -> dict[str, Any]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "prm_…",
                "description": "An organization API key (`Authorization: Bearer prm_…`). Its scopes decide what it "
                               "may do: `read` reads everything, `chat` reads and writes threads and messages."}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


API_ERROR = {
    "type": "object",
    "description": "DRF's error body: `detail` for most errors, or one list of messages per invalid field.",
    "properties": {"detail": {"type": "string"}, "code": {"type": "string"}},
    "additionalProperties": True,
}
API_ERRORS = {
    "400": "Invalid input (field errors), or a session without the X-Organization header.",
    "401": "No valid API key and no session.",
    "403": "The key lacks the scope, or the member's role is too low (or a session call without its CSRF token, "
           "or, with `code: mfa_required`, a session user without two-factor authentication in an organization "
           "that requires it).",
    "404": "Not found: also when the organization does not exist or the caller is not a member of it.",
}

OPENAI_ERROR = {
    "type": "object",
    "description": "OpenAI's error envelope.",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type"],
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string", "example": "invalid_request_error"},
            "param": {"type": "string", "nullable": True},
            "code": {"type": "string", "nullable": True, "example": "model_not_found"},
        },
    }},
}
OPENAI_ERRORS = {
    "400": "Invalid request (`param` names the field), or the provider refused it.",
    "401": "Invalid or missing API key (`invalid_api_key`).",
    "402": "Not enough credits for the request's worst-case cost (`insufficient_credits`).",
    "403": "The key lacks the `chat` scope, or the plan does not include the model.",
    "404": "Unknown model (`model_not_found`).",
    "405": "Wrong method.",
    "429": "Rate limited (plan limits per key's organization, or per address without a valid key); see Retry-After.",
    "502": "The provider sent an invalid or incomplete answer.",
    "503": "The model's provider is not configured or is unavailable.",
    "504": "The provider did not answer in time.",
}

CONTENT_PART = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "enum": ["text", "image_url"]},
        "text": {"type": "string"},
        "image_url": {"type": "object", "properties": {"url": {
            "type": "string", "description": "A base64 `data:` URL (PNG, JPEG, WebP or GIF)."}}},
    },
}
V1_SCHEMAS: dict[str, dict[str, Any]] = {
    "OpenAIError": OPENAI_ERROR,
    "ToolCall": {
        "type": "object",
        "required": ["id", "type", "function"],
        "properties": {
            "id": {"type": "string"},
            "type": {"type": "string", "enum": ["function"]},
            "function": {"type": "object", "required": ["name", "arguments"], "properties": {
                "name": {"type": "string"}, "arguments": {"type": "string", "description": "JSON text."}}},
        },
    },
    "ChatCompletionMessage": {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
            "content": {"nullable": True,
                        "oneOf": [{"type": "string"}, {"type": "array", "items": CONTENT_PART}]},
            "tool_calls": {"type": "array", "items": _ref("ToolCall"),
                           "description": "An assistant turn that called tools."},
            "tool_call_id": {"type": "string", "description": "Required in `tool` messages: the call answered."},
        },
    },
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string", "description": "A model id or alias (GET /v1/models).",
                      "example": "openai/gpt-4.1-mini"},
            "messages": {"type": "array", "minItems": 1, "items": _ref("ChatCompletionMessage")},
            "stream": {"type": "boolean", "default": False},
            "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
            "max_tokens": {"type": "integer", "minimum": 1},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "stop": {"oneOf": [{"type": "string"}, {"type": "array", "maxItems": 4, "items": {"type": "string"}}]},
            "n": {"type": "integer", "enum": [1]},
            "tools": {"type": "array", "items": {"type": "object"}, "description": "Passed to the provider."},
            "tool_choice": {"description": "Passed to the provider."},
            "response_format": {"type": "object", "description": "Passed to the provider."},
            "user": {"type": "string"},
            "seed": {"type": "integer"},
            "presence_penalty": {"type": "number"},
            "frequency_penalty": {"type": "number"},
        },
    },
    "CompletionUsage": {
        "type": "object",
        "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
        "properties": {name: {"type": "integer"} for name in ("prompt_tokens", "completion_tokens", "total_tokens")},
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string", "example": "chatcmpl-…"},
            "object": {"type": "string", "enum": ["chat.completion"]},
            "created": {"type": "integer"},
            "model": {"type": "string", "description": "The model that answered (after any fallback)."},
            "choices": {"type": "array", "items": {
                "type": "object",
                "required": ["index", "message", "finish_reason"],
                "properties": {
                    "index": {"type": "integer"},
                    "message": {"type": "object", "properties": {
                        "role": {"type": "string", "enum": ["assistant"]},
                        "content": {"type": "string", "nullable": True},
                        "tool_calls": {"type": "array", "items": _ref("ToolCall")}}},
                    "finish_reason": {"type": "string", "enum": ["stop", "length", "content_filter", "tool_calls"]},
                    "logprobs": {"type": "object", "nullable": True},
                },
            }},
            "usage": _ref("CompletionUsage"),
        },
    },
    "ChatCompletionChunk": {
        "type": "object",
        "description": "One `data:` event of a streamed answer; the stream ends with `data: [DONE]`.",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["chat.completion.chunk"]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object", "properties": {
                "index": {"type": "integer"},
                "delta": {"type": "object", "properties": {
                    "role": {"type": "string"}, "content": {"type": "string"},
                    "tool_calls": {"type": "array", "description": "Fragments: the first of a call has `id`, "
                                   "`type` and `function.name`; the next ones append to `function.arguments`.",
                                   "items": {"type": "object"}}}},
                "finish_reason": {"type": "string", "nullable": True},
            }}},
            "usage": _ref("CompletionUsage"),
        },
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {"id": {"type": "string"}, "object": {"type": "string", "enum": ["model"]},
                       "created": {"type": "integer"}, "owned_by": {"type": "string"}},
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref("Model")},
        },
    },
}


def _openai_errors(*codes: str) -> dict[str, Any]:
    return {code: _json(_ref("OpenAIError"), OPENAI_ERRORS[code]) for code in codes}


V1_PATHS: dict[str, Any] = {
    "/v1/models": {"get": {
        "operationId": "v1_models_list",
        "summary": "Models this organization may use (OpenAI-compatible)",
        "tags": ["OpenAI-compatible"],
        "security": [{API_KEY_SCHEME: []}],
        "responses": {"200": _json(_ref("ModelList"), "The models the plan allows and a provider serves."),
                      **_openai_errors("401", "403", "405", "429")},
    }},
    "/v1/models/{model}": {"get": {
        "operationId": "v1_models_retrieve",
        "summary": "One model, by id or alias (OpenAI-compatible)",
        "tags": ["OpenAI-compatible"],
        "security": [{API_KEY_SCHEME: []}],
        "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"},
                        "description": "A model id (`provider/model`, the slash included) or an alias."}],
        "responses": {"200": _json(_ref("Model"), "The model, if the plan allows it and a provider serves it."),
                      **_openai_errors("401", "403", "404", "405", "429")},
    }},
    "/v1/chat/completions": {"post": {
        "operationId": "v1_chat_completions_create",
        "summary": "Create a chat completion (OpenAI-compatible; streams with `stream: true`)",
        "description": "Needs a key with the `chat` scope. The request's worst-case cost is held from the "
                       "credit balance and settled at the real usage. Responses carry `x-request-id` and "
                       "`x-prumo-overhead-ms` (time spent outside the provider call).",
        "tags": ["OpenAI-compatible"],
        "security": [{API_KEY_SCHEME: []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ChatCompletionRequest")}}},
        "responses": {
            "200": {"description": "The answer; with `stream: true`, server-sent events of ChatCompletionChunk.",
                    "content": {"application/json": {"schema": _ref("ChatCompletion")},
                                "text/event-stream": {"schema": {"type": "string", "description":
                                                                 "`data: <ChatCompletionChunk JSON>` events, then "
                                                                 "`data: [DONE]`."}}}},
            **_openai_errors("400", "401", "402", "403", "404", "405", "429", "502", "503", "504"),
        },
    }},
}


def api_schema_postprocess(result: dict[str, Any], generator, request, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook (SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"])."""
    components = result.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemes = components.setdefault("securitySchemes", {})
    schemes[ORGANIZATION_SCHEME] = {
        "type": "apiKey", "in": "header", "name": "X-Organization",
        "description": "With a session (cookie), the organization's slug. With an API key it is optional and must "
                       "name the key's organization.",
    }
    schemas["ApiError"] = API_ERROR
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/v1/"):
            continue
        for operation in operations.values():
            operation["security"] = [
                {API_KEY_SCHEME: []} if API_KEY_SCHEME in requirement else {**requirement, ORGANIZATION_SCHEME: []}
                for requirement in operation.get("security", [])
            ]
            responses = operation.setdefault("responses", {})
            for code, description in API_ERRORS.items():
                responses.setdefault(code, _json(_ref("ApiError"), description))
            if "402" in responses:
                responses["402"] = _json(_ref("ApiError"), responses["402"]["description"])
    schemas.update(V1_SCHEMAS)
    result["paths"] = {**result.get("paths", {}), **V1_PATHS}
    return result


class ApiDocsView(SpectacularSwaggerSplitView):
    """Swagger UI with no inline script or style (the site's CSP allows neither)."""

    template_name = "api/docs.html"
    url_name = "api_schema"
