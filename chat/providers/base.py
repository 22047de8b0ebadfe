"""The one interface every provider adapter implements, and its normalized events.

An adapter turns a `ChatRequest` into an async stream of events: `TextDelta`s (and, when the
model calls tools, `ToolCallDelta`s) as the provider sends them, then exactly one `Usage` (the
provider's own token counts) and one `Finish`. Tools, `tool_choice` and `response_format` come
in OpenAI's shape in `ChatRequest.extra`; each adapter translates them to its provider's.
Anything that goes wrong raises `ProviderError` with a `kind` the router uses to decide what to
do (fall back, cool down, give up); adapters never retry themselves.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ImagePart:
    media_type: str  # image/png, image/jpeg, image/webp
    data: bytes


@dataclass(frozen=True)
class ToolCall:
    """A function call the model asked for: in an assistant turn of the history, or assembled from
    an answer's `ToolCallDelta`s (`tool_calls_assemble`)."""

    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it

    def arguments_object(self) -> dict[str, Any]:
        """The arguments as a JSON object (`{}` when empty); ValueError when they are not one."""
        if not self.arguments.strip():
            return {}
        value = json.loads(self.arguments)
        if not isinstance(value, dict):
            raise ValueError(f"the arguments of tool call {self.id!r} are not a JSON object")
        return value


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    images: tuple[ImagePart, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn that called tools
    tool_call_id: str | None = None  # a "tool" turn: the result of this call


def tool_names_by_id(messages: Iterable[ChatMessage]) -> dict[str, str]:
    """Tool call id -> function name, over the history's assistant turns (for providers whose tool
    results name the function instead of the call)."""
    return {call.id: call.name for message in messages for call in message.tool_calls}


def tool_call_id_new() -> str:
    """An id for a call from a provider that does not name its calls (Gemini, Ollama)."""
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class ChatRequest:
    model: str  # the provider's own model name, without our `provider/` prefix
    messages: list[ChatMessage]
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    # OpenAI's own fields (tools, tool_choice, response_format, user, …): sent as is to OpenAI's protocol,
    # translated (or dropped) by the other adapters; fields they do not know pass through untouched.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    read: float = 60.0  # the longest wait for the next byte of a stream


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A fragment of a tool call, as OpenAI streams them: the first fragment of call `index`
    carries its `id` and `name`, the next ones only append to its `arguments` (JSON text)."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int
    model: str = field(default="", compare=False)  # the model the provider says answered ("": it did not say)


@dataclass(frozen=True)
class Finish:
    reason: str  # "stop" | "length" | "content_filter" | "tool_calls" | "other"


@dataclass(frozen=True)
class StreamError:
    """Emitted by the router (never by adapters, which raise) when a stream cannot go on."""

    error: ProviderError


Event = TextDelta | ToolCallDelta | Usage | Finish | StreamError


def tool_calls_assemble(events: Iterable[Any]) -> tuple[ToolCall, ...]:
    """The complete tool calls that `ToolCallDelta`s among `events` add up to, by index."""
    calls: dict[int, dict[str, Any]] = {}
    for event in events:
        if not isinstance(event, ToolCallDelta):
            continue
        call = calls.setdefault(event.index, {"id": None, "name": None, "arguments": []})
        call["id"] = call["id"] or event.id
        call["name"] = call["name"] or event.name
        call["arguments"].append(event.arguments)
    return tuple(ToolCall(id=call["id"] or "", name=call["name"] or "", arguments="".join(call["arguments"]))
                 for _index, call in sorted(calls.items()))


def key_is_printable_ascii(key: str) -> bool:
    """Printable ASCII without spaces: what an API key is, and what an HTTP header can carry."""
    return all("!" <= character <= "~" for character in key)


class ProviderError(Exception):
    """A provider call that failed. `kind` is one of the KIND_* constants."""

    AUTH = "auth"  # 401/403: our key is wrong; do not retry with it
    RATE_LIMITED = "rate_limited"  # 429: `retry_after` seconds, when the provider said
    BAD_REQUEST = "bad_request"  # 400/404/422: this request will never work as sent
    UNAVAILABLE = "unavailable"  # 5xx, connection refused
    TIMEOUT = "timeout"  # no (more) bytes within the read timeout
    PROTOCOL = "protocol"  # a malformed chunk or an answer we cannot parse
    INTERRUPTED = "interrupted"  # the stream ended before the provider said it had finished
    CONFIG = "config"  # the request could not be built here (a key HTTP cannot carry): nothing was sent

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
        """Text and tool call deltas as they arrive, then one `Usage` and one `Finish`; raises ProviderError."""
        raise NotImplementedError

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> ProviderAdapter:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    def key_check(self) -> None:
        """Refuse, before anything is sent, a key that cannot go in an HTTP header (non-ASCII, spaces,
        control characters): the call would fail here, and the provider is not to blame."""
        if not key_is_printable_ascii(self.api_key):
            raise self.error(ProviderError.CONFIG, f"The API key for {self.provider} contains characters that "
                             "cannot be sent in an HTTP header (only printable ASCII, no spaces).")

    def error(self, kind: str, message: str, **kwargs) -> ProviderError:
        return ProviderError(kind, message, provider=self.provider, **kwargs)

    def tool_arguments(self, call: ToolCall) -> dict[str, Any]:
        """A history tool call's arguments as an object, for providers that want one (not JSON text)."""
        try:
            return call.arguments_object()
        except ValueError as error:
            raise self.error(ProviderError.BAD_REQUEST,
                             f"Tool call {call.id!r}: its arguments are not a JSON object.") from error
