"""The one interface every provider adapter implements, and its normalized events.

An adapter turns a `ChatRequest` into an async stream of events: `TextDelta`s as the
provider sends them, then exactly one `Usage` (the provider's own token counts) and one
`Finish`. Anything that goes wrong raises `ProviderError` with a `kind` the router uses to
decide what to do (fall back, cool down, give up); adapters never retry themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ImagePart:
    media_type: str  # image/png, image/jpeg, image/webp
    data: bytes


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str
    images: tuple[ImagePart, ...] = ()


@dataclass(frozen=True)
class ChatRequest:
    model: str  # the provider's own model name, without our `provider/` prefix
    messages: list[ChatMessage]
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    # Passed through untouched to providers that support them (tools, tool_choice, response_format).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    read: float = 60.0  # the longest wait for the next byte of a stream


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Finish:
    reason: str  # "stop" | "length" | "content_filter" | "tool_calls" | "other"


@dataclass(frozen=True)
class StreamError:
    """Emitted by the router (never by adapters, which raise) when a stream cannot go on."""

    error: ProviderError


Event = TextDelta | Usage | Finish | StreamError


class ProviderError(Exception):
    """A provider call that failed. `kind` is one of the KIND_* constants."""

    AUTH = "auth"  # 401/403: our key is wrong; do not retry with it
    RATE_LIMITED = "rate_limited"  # 429: `retry_after` seconds, when the provider said
    BAD_REQUEST = "bad_request"  # 400/404/422: this request will never work as sent
    UNAVAILABLE = "unavailable"  # 5xx, connection refused
    TIMEOUT = "timeout"  # no (more) bytes within the read timeout
    PROTOCOL = "protocol"  # a malformed chunk or an answer we cannot parse
    INTERRUPTED = "interrupted"  # the stream ended before the provider said it had finished

    RETRYABLE = frozenset({RATE_LIMITED, UNAVAILABLE, TIMEOUT, PROTOCOL, INTERRUPTED})

    def __init__(self, kind: str, message: str, *, provider: str, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.provider = provider
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Worth trying another provider (or this one later)."""
        return self.kind in self.RETRYABLE

    def __repr__(self) -> str:
        return f"ProviderError({self.kind!r}, {self.message!r}, provider={self.provider!r}, status={self.status})"


class ProviderAdapter:
    """Base class: one instance per call site; `async with` closes its HTTP client."""

    name: str = ""

    def __init__(self, *, api_key: str, base_url: str, timeouts: Timeouts, provider: str | None = None):
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts
        self.provider = provider or self.name  # "deepseek" reuses the OpenAI adapter

    def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Text deltas as they arrive, then one `Usage` and one `Finish`; raises ProviderError."""
        raise NotImplementedError

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> ProviderAdapter:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    def error(self, kind: str, message: str, **kwargs) -> ProviderError:
        return ProviderError(kind, message, provider=self.provider, **kwargs)
