"""The shared cache of registry answers: CNPJ data is public, so one lookup serves every organization.

A found company is kept CHECKS_CACHE_TTL seconds and a confirmed not-found CHECKS_NEGATIVE_TTL;
throttled or failed lookups are never cached. One lookup per CNPJ runs at a time: a per-CNPJ
lock in Redis makes concurrent requests (from any organization or worker) wait for the first
one's answer instead of asking the registries again. `refresh` skips reading the cache, never
the registries' rate limits (those are inside `registry_lookup`).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from functools import cache

from django.conf import settings
from django.utils import timezone

from core.metrics import checks_cache_count
from core.redis_clients import redis_client

from .registries import LOOKUP_FOUND, LOOKUP_NOT_FOUND, LookupResult, registry_lookup

CACHED_OUTCOMES = (LOOKUP_FOUND, LOOKUP_NOT_FOUND)

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _key(*parts: str) -> str:
    return ":".join([settings.CHECKS_REDIS_PREFIX, "cache", "v1", *parts])


@dataclass(frozen=True)
class CachedLookup:
    result: LookupResult
    hit: bool  # answered from the cache (no registry asked for this request)
    cached_at: str | None = None  # when the answer was fetched from the registry (ISO)


def _read(cnpj: str) -> CachedLookup | None:
    raw = redis_client(decode=False).get(_key(cnpj))
    return None if raw is None else _entry(cnpj, raw)


def _entry(cnpj: str, raw: bytes) -> CachedLookup:
    entry = json.loads(raw)
    result = LookupResult(cnpj, entry["outcome"], record=entry["record"], provider=entry["provider"])
    return CachedLookup(result=result, hit=True, cached_at=entry["cached_at"])


def _counted(lookup: CachedLookup) -> CachedLookup:
    """Each answer counts once: a hit when the cache gave it, a miss when the registries did."""
    redis_client(decode=False).incr(_key("hits" if lookup.hit else "misses"))
    checks_cache_count(hit=lookup.hit)
    return lookup


# A peek reads the answer and counts the hit in one round trip.
_PEEK = """
local entry = redis.call('GET', KEYS[1])
if entry then redis.call('INCR', KEYS[2]) end
return entry
"""


@cache
def _peek_script(url: str):
    return redis_client(decode=False).register_script(_PEEK)


def cache_peek(cnpj: str) -> CachedLookup | None:
    """The cached answer for `cnpj`, if any, without asking anyone (counted as a hit when there is one)."""
    raw = _peek_script(settings.REDIS_URL)(keys=[_key(cnpj), _key("hits")])
    if raw is None:
        return None
    checks_cache_count(hit=True)
    return _entry(cnpj, raw)


def _store(result: LookupResult) -> None:
    ttl = settings.CHECKS_CACHE_TTL if result.outcome == LOOKUP_FOUND else settings.CHECKS_NEGATIVE_TTL
    entry = {"outcome": result.outcome, "record": result.record, "provider": result.provider,
             "cached_at": timezone.now().isoformat()}
    redis_client(decode=False).set(_key(result.cnpj), json.dumps(entry), ex=ttl)


def cached_lookup(cnpj: str, *, refresh: bool = False, background: bool = False, waiter: str = "") -> CachedLookup:
    """The cached answer, or one registry lookup shared by everyone asking for `cnpj` meanwhile
    (`background` and `waiter`: see `registry_lookup`)."""
    if not refresh and (cached := _read(cnpj)) is not None:
        return _counted(cached)
    lock = _key("lock", cnpj)
    token = secrets.token_hex(8)
    deadline = time.monotonic() + settings.CHECKS_LOCK_SECONDS
    while not redis_client(decode=False).set(lock, token, nx=True, ex=settings.CHECKS_LOCK_SECONDS):
        # Someone is asking the registries for this CNPJ right now: their answer is ours.
        time.sleep(0.05)
        if not redis_client(decode=False).exists(lock):
            shared = _read(cnpj)
            if shared is not None:
                return _counted(shared)
        if time.monotonic() > deadline:
            break  # the holder died without releasing: its lock expires, ask ourselves
    try:
        if not refresh and (cached := _read(cnpj)) is not None:
            return _counted(cached)  # answered while we waited for the lock
        result = registry_lookup(cnpj, background=background, waiter=waiter)
        if result.outcome in CACHED_OUTCOMES:
            _store(result)
        return _counted(CachedLookup(result=result, hit=False))
    finally:
        redis_client(decode=False).eval(_RELEASE, 1, lock, token)


def cache_stats() -> dict[str, int]:
    hits, misses = redis_client(decode=False).mget(_key("hits"), _key("misses"))
    return {"hits": int(hits or 0), "misses": int(misses or 0)}

