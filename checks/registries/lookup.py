"""`registry_lookup`: ask the registries in turn, past rate limits, cooldowns and open breakers (§2.7).

Order: publica.cnpj.ws → BrasilAPI → minha-receita → ReceitaWS. minha-receita is BrasilAPI's
origin, so it is asked only when BrasilAPI itself could not answer (rate-limited, down,
throttled by us, breaker open), never to second-guess BrasilAPI's "not found".

Final outcomes:

    found      a provider returned the company: `record` (normalized, masked) and `provider`.
    not_found  no data, and two independent sources said not found (BrasilAPI and minha-receita
               are one source): a negative answer worth caching.
    invalid    the CNPJ failed local validation (`error` = "format" | "length" | "checksum");
               no provider was asked.
    throttled  nobody could be asked now only because of rate limits / cooldowns (and open
               breakers): retry after `retry_after` seconds (a Celery countdown), not a failure.
    failed     providers failed (5xx, timeouts, unconfirmed not-found, unsupported CNPJ):
               retry with backoff; `retry_after` is the earliest known wait, if any.

Only the CNPJ and outcomes are logged, never a payload.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.conf import settings

from core.metrics import registry_requests

from .. import cnpj as cnpj_id
from .base import (
    CIRCUIT_OPEN,
    ERROR,
    FOUND,
    NOT_FOUND,
    RATE_LIMITED,
    THROTTLED,
    UNAVAILABLE,
    UNSUPPORTED,
    Attempt,
    RegistryClient,
)
from .brasilapi import BrasilApiClient, MinhaReceitaClient
from .cnpjws import CnpjWsClient
from .limits import CircuitBreaker, cooldown_remaining, cooldown_set, rate_limit_acquire, waiting_clear
from .receitaws import ReceitaWsClient

logger = logging.getLogger("checks.registries")

LOOKUP_FOUND = "found"
LOOKUP_NOT_FOUND = "not_found"
LOOKUP_INVALID = "invalid"
LOOKUP_THROTTLED = "throttled"
LOOKUP_FAILED = "failed"
LOOKUP_OUTCOMES = (LOOKUP_FOUND, LOOKUP_NOT_FOUND, LOOKUP_INVALID, LOOKUP_THROTTLED, LOOKUP_FAILED)

CLIENTS: dict[str, type[RegistryClient]] = {
    "cnpjws": CnpjWsClient,
    "brasilapi": BrasilApiClient,
    "minhareceita": MinhaReceitaClient,
    "receitaws": ReceitaWsClient,
}
FALLBACK_ORDER = ("cnpjws", "brasilapi", "minhareceita", "receitaws")
# Independent sources of data: BrasilAPI serves minha-receita's answers.
SOURCES = {"cnpjws": "cnpjws", "brasilapi": "minhareceita", "minhareceita": "minhareceita",
           "receitaws": "receitaws"}
NOT_FOUND_CONFIRMATIONS = 2
# Providers whose records lack fields others have (ReceitaWS: partners without documents or dates).
PARTIAL_PROVIDERS = frozenset({"receitaws"})
_WAITING = frozenset({THROTTLED, RATE_LIMITED, CIRCUIT_OPEN})
_RATE = frozenset({THROTTLED, RATE_LIMITED})


@dataclass(frozen=True)
class LookupResult:
    cnpj: str
    outcome: str
    record: dict | None = None
    provider: str | None = None
    attempts: tuple[Attempt, ...] = field(default_factory=tuple)
    retry_after: int | None = None
    error: str | None = None

    @property
    def partial(self) -> bool:
        """Found, but by a provider whose records miss fields (SUCCEEDED_PARTIAL in §2.7)."""
        return self.outcome == LOOKUP_FOUND and self.provider in PARTIAL_PROVIDERS

    def as_dict(self) -> dict:
        return {"cnpj": self.cnpj, "outcome": self.outcome, "provider": self.provider, "record": self.record,
                "attempts": [attempt.as_dict() for attempt in self.attempts], "retry_after": self.retry_after,
                "error": self.error, "partial": self.partial}


def _ceil(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def provider_attempt(provider: str, cnpj: str, *, background: bool = False,
                     waiter: str = "") -> tuple[Attempt, dict | None]:
    """Ask one provider, unless it is cooling down, its breaker is open or our rate limit is used up
    (for a `background` lookup: or an interactive one waits for it; see registries.limits)."""
    cooling = cooldown_remaining(provider)
    if cooling > 0:
        return Attempt(provider, THROTTLED, retry_after=_ceil(cooling)), None
    breaker = CircuitBreaker(provider)
    permit = breaker.allow()
    if not permit.allowed:
        return Attempt(provider, CIRCUIT_OPEN, retry_after=_ceil(permit.wait)), None
    wait = rate_limit_acquire(provider, background=background, waiter=waiter)
    if wait > 0:
        if permit.probing:
            breaker.release_probe()
        return Attempt(provider, THROTTLED, retry_after=_ceil(wait)), None
    answer = CLIENTS[provider]().fetch(cnpj)
    retry_after = answer.retry_after
    if answer.outcome == RATE_LIMITED:
        retry_after = retry_after or settings.CHECKS_COOLDOWN_DEFAULT
        cooldown_set(provider, retry_after)
        breaker.record_success()  # it answered: alive, only busy
    elif answer.outcome in (UNAVAILABLE, ERROR):
        breaker.record_failure(retry_after=retry_after)
    else:
        breaker.record_success()
    logger.info("registry attempt cnpj=%s provider=%s outcome=%s http_status=%s latency_ms=%s detail=%s",
                cnpj, provider, answer.outcome, answer.http_status, answer.latency_ms, answer.detail)
    registry_requests.labels(provider, answer.outcome).inc()
    attempt = Attempt(provider, answer.outcome, answer.http_status, answer.latency_ms, retry_after)
    return attempt, answer.record


def registry_lookup(cnpj: str, *, refresh: bool = False, providers: Sequence[str] | None = None,
                    background: bool = False, waiter: str = "") -> LookupResult:
    """Look `cnpj` up in the registries (fallback order of §2.7) and return the first company found.

    `refresh` is accepted for callers that cache around this function; nothing is cached here,
    so every call asks the providers (still within the global rate limits). `providers` narrows
    or reorders the chain (names of CLIENTS). `background` lookups (batches, monitoring) yield the
    rate limits to interactive ones; `waiter` names an interactive lookup across its retries (a
    check's billing key), so that it keeps its place while it is throttled.
    """
    providers, waiter = providers or FALLBACK_ORDER, waiter or uuid.uuid4().hex
    result = _lookup(cnpj, providers=providers, background=background, waiter=waiter)
    if not background and result.outcome != LOOKUP_THROTTLED:
        waiting_clear(waiter, providers)  # answered: nobody waits for the registries on its behalf
    return result


def _lookup(cnpj: str, *, providers: Sequence[str], background: bool, waiter: str) -> LookupResult:
    validation = cnpj_id.validate(cnpj)
    if not validation.is_valid:
        # Not a CNPJ: whatever was typed stays out of the logs.
        logger.info("registry lookup outcome=%s error=%s", LOOKUP_INVALID, validation.error)
        return LookupResult(validation.normalized, LOOKUP_INVALID, error=str(validation.error))
    cnpj = validation.normalized
    attempts: list[Attempt] = []
    answered: set[str] = set()  # sources that gave a definitive answer (not found / unsupported)
    not_found: set[str] = set()
    for provider in providers:
        source = SOURCES[provider]
        if source in answered:
            continue
        attempt, record = provider_attempt(provider, cnpj, background=background, waiter=waiter)
        attempts.append(attempt)
        if attempt.outcome == FOUND:
            record["provenance"]["attempts"] = [a.as_dict() for a in attempts]
            return _finish(LookupResult(cnpj, LOOKUP_FOUND, record, provider, tuple(attempts)))
        if attempt.outcome in (NOT_FOUND, UNSUPPORTED):
            answered.add(source)
        if attempt.outcome == NOT_FOUND:
            not_found.add(source)
            if len(not_found) >= NOT_FOUND_CONFIRMATIONS:
                return _finish(LookupResult(cnpj, LOOKUP_NOT_FOUND, attempts=tuple(attempts)))
    waits = [a.retry_after for a in attempts if a.outcome in _WAITING and a.retry_after]
    retry_after = min(waits) if waits else None
    undecided = [a for a in attempts if SOURCES[a.provider] not in answered]
    if undecided and all(a.outcome in _WAITING for a in undecided) and any(a.outcome in _RATE for a in undecided):
        return _finish(LookupResult(cnpj, LOOKUP_THROTTLED, attempts=tuple(attempts), retry_after=retry_after))
    return _finish(LookupResult(cnpj, LOOKUP_FAILED, attempts=tuple(attempts), retry_after=retry_after))


def _finish(result: LookupResult) -> LookupResult:
    logger.info("registry lookup cnpj=%s outcome=%s provider=%s retry_after=%s", result.cnpj, result.outcome,
                result.provider, result.retry_after)
    return result
