"""Provider adapters, one per wire protocol, and the registry that builds them from settings.

`settings.LLM_PROVIDERS` maps each provider to its base URL and platform key (read from
the environment in config/settings/base.py). An organization's own key, when it has one,
replaces the platform key (see chat.catalog).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

import httpx
from django.conf import settings
from django.utils.module_loading import import_string

from .base import (
    ChatMessage,
    ChatRequest,
    Event,
    Finish,
    ImagePart,
    ProviderAdapter,
    ProviderError,
    StreamError,
    TextDelta,
    Timeouts,
    ToolCall,
    ToolCallDelta,
    Usage,
    tool_calls_assemble,
)

__all__ = [
    "ADAPTERS", "ChatMessage", "ChatRequest", "Event", "Finish", "ImagePart", "ProviderAdapter", "ProviderError",
    "StreamError", "TextDelta", "Timeouts", "ToolCall", "ToolCallDelta", "Usage", "adapter_for", "adapter_shared",
    "adapters_close", "key_probe", "provider_configured", "tool_calls_assemble",
]

# Provider -> adapter class. DeepSeek (and any OpenAI-compatible API) speaks OpenAI's protocol.
ADAPTERS = {
    "openai": "chat.providers.openai.OpenAIAdapter",
    "deepseek": "chat.providers.openai.OpenAIAdapter",
    "anthropic": "chat.providers.anthropic.AnthropicAdapter",
    "gemini": "chat.providers.gemini.GeminiAdapter",
    "ollama": "chat.providers.ollama.OllamaAdapter",
    "demo": "chat.providers.demo.DemoAdapter",
}
# Ollama runs without a key; the demo model runs without anything.
KEYLESS = frozenset({"ollama", "demo"})


def provider_settings(provider: str) -> dict:
    return settings.LLM_PROVIDERS.get(provider, {})


def provider_configured(provider: str) -> bool:
    """Whether the platform can call this provider without an organization's own key."""
    if provider == "demo":
        return settings.CHAT_DEMO_MODEL_ENABLED
    config = provider_settings(provider)
    if provider in KEYLESS:
        return bool(config.get("base_url"))
    return bool(config.get("api_key"))


def adapter_for(provider: str, *, api_key: str | None = None) -> ProviderAdapter:
    """A new adapter for `provider`, with the platform key unless `api_key` is given."""
    config = provider_settings(provider)
    adapter_class = import_string(ADAPTERS[provider])
    timeouts = Timeouts(connect=settings.LLM_CONNECT_TIMEOUT, read=settings.LLM_READ_TIMEOUT)
    return adapter_class(api_key=api_key or config.get("api_key", ""), base_url=config.get("base_url", ""),
                         timeouts=timeouts, provider=provider)


_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str, str], ProviderAdapter]] = (
    weakref.WeakKeyDictionary())


def adapter_shared(provider: str, *, api_key: str | None = None) -> ProviderAdapter:
    """This event loop's adapter for `provider` and key: its HTTP client and connections are reused
    by every call on the loop (a new client per call cost ~10 ms). Callers must not close it."""
    loop = asyncio.get_running_loop()
    adapters = _shared.setdefault(loop, {})
    # The base URL too: a long-lived loop (chat.loop) outlives a change of the provider's settings.
    key = (provider, api_key or "", provider_settings(provider).get("base_url", ""))
    if key not in adapters:
        adapters[key] = adapter_for(provider, api_key=api_key)
    return adapters[key]


async def adapters_close() -> None:
    """Close this loop's shared adapters (for loops that end: a Celery task's `asyncio.run`, tests)."""
    for adapter in _shared.pop(asyncio.get_running_loop(), {}).values():
        await adapter.aclose()


# How to list a provider's models with a key: the cheapest call that proves the key works.
KEY_PROBES: dict[str, tuple[str, Callable[[str], dict[str, str]]]] = {
    "openai": ("/models", lambda key: {"Authorization": f"Bearer {key}"}),
    "deepseek": ("/models", lambda key: {"Authorization": f"Bearer {key}"}),
    "anthropic": ("/v1/models", lambda key: {"x-api-key": key, "anthropic-version": "2023-06-01"}),
    "gemini": ("/v1beta/models", lambda key: {"x-goog-api-key": key}),
}
KEY_PROBE_TIMEOUT = 5.0


def key_probe(provider: str, api_key: str) -> str:
    """Try `api_key` on the provider (list its models): "ok", "refused" (401/402/403) or "unreachable"."""
    path, headers = KEY_PROBES[provider]
    url = provider_settings(provider).get("base_url", "").rstrip("/") + path
    try:
        response = httpx.get(url, headers=headers(api_key), timeout=KEY_PROBE_TIMEOUT)
    except (httpx.HTTPError, UnicodeEncodeError):
        return "unreachable"
    if response.status_code in (401, 402, 403):
        return "refused"
    return "ok" if response.status_code == 200 else "unreachable"
