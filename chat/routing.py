"""Routing an answer: the requested model, then its fallbacks, past open circuit breakers.

Fallback happens only before the first streamed byte: once text has reached the reader,
an error ends the answer instead of splicing another model's words onto it. The model that
served is announced with `Served`, and billing uses it.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from functools import lru_cache

from django.conf import settings

from core import tracing
from core.redis_clients import redis_async_client

from .catalog.selectors import ModelOption
from .providers import ChatRequest, ProviderError, StreamError, adapter_shared
from .providers.telemetry import provider_call_traced


@dataclass(frozen=True)
class Served:
    """The model answering (announced before its first event)."""

    option: ModelOption


# Failures that say something about the provider's health (not about this request or our key). A
# request we could not even build (ProviderError.CONFIG) never reached the provider: it says nothing.
BREAKER_KINDS = frozenset({ProviderError.UNAVAILABLE, ProviderError.TIMEOUT, ProviderError.RATE_LIMITED,
                           ProviderError.INTERRUPTED, ProviderError.PROTOCOL})


@dataclass(frozen=True)
class BreakerState:
    open: bool
    failures: int


def breaker_name(provider: str, api_key: str | None = None) -> str:
    """Whose failures a breaker counts: the platform key's are shared by every organization, an
    organization's own key's only by whoever uses that key (named by a hash, never the key)."""
    if not api_key:
        return provider
    return f"{provider}:key:{_key_digest(api_key)}"


@lru_cache(maxsize=4096)
def _key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def breaker_cooldown(error: ProviderError) -> int:
    """How long a failure opens the breaker: the provider's Retry-After when longer than ours, capped
    (a hostile or buggy upstream must not pin a provider shut for hours)."""
    told = min(int(error.retry_after or 0), settings.CHAT_BREAKER_MAX_COOLDOWN)
    return max(settings.CHAT_BREAKER_COOLDOWN, told)


class CircuitBreaker:
    """Per credential (see `breaker_name`), shared by every process through Redis.

    `CHAT_BREAKER_FAILURES` failures within `CHAT_BREAKER_WINDOW` seconds open it for
    `CHAT_BREAKER_COOLDOWN` seconds (or the provider's Retry-After, if longer, up to
    `CHAT_BREAKER_MAX_COOLDOWN`); while open, the router skips that credential and goes straight
    to the fallbacks.
    """

    def __init__(self, name: str, known: BreakerState | None = None):
        self.name = name
        self.failures_key = f"chat:breaker:{name}:failures"
        self.open_key = f"chat:breaker:{name}:open"
        self.known = known  # read by the caller in a round trip it made anyway (the /v1 gateway)

    async def is_open(self) -> bool:
        if self.known is not None:
            return self.known.open
        return bool(await redis_async_client().exists(self.open_key))

    async def record_failure(self, error: ProviderError) -> None:
        client = redis_async_client()
        failures = await client.incr(self.failures_key)
        if failures == 1:  # the window starts with the first failure
            await client.expire(self.failures_key, settings.CHAT_BREAKER_WINDOW)
        told_to_wait = error.kind == ProviderError.RATE_LIMITED and error.retry_after
        if told_to_wait or failures >= settings.CHAT_BREAKER_FAILURES:
            await client.set(self.open_key, "1", ex=breaker_cooldown(error))

    async def record_success(self) -> None:
        if self.known is None or self.known.failures:  # nothing to forgive: spare the round trip
            await redis_async_client().delete(self.failures_key)


async def route_stream(candidates: list[ModelOption], request: ChatRequest, *, own_keys: dict[str, str],
                       breakers: dict[str, BreakerState] | None = None) -> AsyncIterator:
    """`Served`, then the serving model's events; a final `StreamError` if nobody could answer.

    `request.model` is ignored: each candidate is asked for its own provider model name.
    `breakers`: the providers' breaker states when the caller has just read them (else read here).
    """
    last_error: ProviderError | None = None
    for option in candidates:
        provider = option.model.provider
        breaker = CircuitBreaker(breaker_name(provider, own_keys.get(provider)), (breakers or {}).get(provider))
        if await breaker.is_open():
            last_error = ProviderError(ProviderError.UNAVAILABLE, "circuit open", provider=provider)
            continue
        started = False
        try:
            adapter = adapter_shared(provider, api_key=own_keys.get(provider))
            asked = replace(request, model=option.model.provider_model)
            events = adapter.stream(asked)
            if tracing.tracer is not None:
                events = provider_call_traced(events, provider=provider, request=asked)
            async for event in events:
                if not started:
                    started = True
                    yield Served(option)
                yield event
            await breaker.record_success()
            return
        except ProviderError as error:
            last_error = error
            if error.kind in BREAKER_KINDS:
                await breaker.record_failure(error)
            if started or error.kind == ProviderError.BAD_REQUEST:
                yield StreamError(error)  # too late (or pointless) to try another model
                return
    yield StreamError(last_error or ProviderError(ProviderError.UNAVAILABLE, "no model available", provider=""))

