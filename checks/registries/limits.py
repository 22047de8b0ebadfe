"""Shared by every worker and organization, in Redis: per-provider rate limit, 429 cooldown, circuit breaker.

The registries limit us per source IP, i.e. per deployment, so the counters are global
(never tenant-prefixed). Each decision is one Lua script, atomic across processes, and reads
the clock from Redis (`TIME`) so workers with skewed clocks agree. Scripts use only commands
Redis 6.2 has (the embedded server): no `EXPIRE … NX`.

Interactive lookups go first. A lookup someone is waiting for (a check asked from a page or
the API) that finds a provider's windows full writes itself into that provider's `waiting` set
(until its wait ends, plus WAITING_GRACE_MS to come back); background lookups (bulk batches,
monitoring) take no request from a provider while its set is not empty. So the next request a
window frees goes to an interactive lookup, and one organization's 10,000-row batch delays
another's interactive check by one window at most. An interactive lookup leaves the set when
it gets its request or when its lookup ends (`waiting_clear`); an abandoned entry expires.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import cache

from django.conf import settings

from core.redis_clients import redis_client

# Sliding-window log per window. KEYS = the waiting set, then one sorted set per window; ARGV = background
# ("1"/"0"), grace ms, waiter, member, then limit, window_ms for each window. Counts the request in every
# window only if each has room (and, for a background lookup, nobody interactive waits); else returns the
# ms until one frees. An interactive lookup that must wait is recorded in the waiting set meanwhile.
_RATE_LIMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local background, grace, waiter, member = ARGV[1] == '1', tonumber(ARGV[2]), ARGV[3], ARGV[4]
local waiting = KEYS[1]
redis.call('ZREMRANGEBYSCORE', waiting, '-inf', now)
if background then
  local first = redis.call('ZRANGE', waiting, 0, 0, 'WITHSCORES')
  if first[2] then return math.max(tonumber(first[2]) - now, 1) end
end
local wait = 0
for i = 2, #KEYS do
  local limit, window = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local used = redis.call('ZCARD', KEYS[i])
  if used >= limit then
    local oldest = redis.call('ZRANGE', KEYS[i], used - limit, used - limit, 'WITHSCORES')
    local frees = tonumber(oldest[2]) + window - now
    if frees > wait then wait = frees end
  end
end
if wait > 0 then
  if not background then
    redis.call('ZADD', waiting, now + wait + grace, waiter)
    if redis.call('PTTL', waiting) < wait + grace then redis.call('PEXPIRE', waiting, wait + grace) end
  end
  return wait
end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], now, member)
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2 * i + 2]))
end
if not background then redis.call('ZREM', waiting, waiter) end
return 0
"""

# Extend (never shorten) a cooldown: KEYS[1], ARGV[1] = ms.
_COOLDOWN = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then redis.call('SET', KEYS[1], '1', 'PX', ms) end
return redis.call('PTTL', KEYS[1])
"""

# KEYS = open, tripped, probe; ARGV[1] = probe ms. Returns {allowed, wait_ms, probing}.
_BREAKER_ALLOW = """
local open_ttl = redis.call('PTTL', KEYS[1])
if open_ttl > 0 then return {0, open_ttl, 0} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {1, 0, 0} end
if redis.call('SET', KEYS[3], '1', 'NX', 'PX', tonumber(ARGV[1])) then return {1, 0, 1} end
return {0, math.max(redis.call('PTTL', KEYS[3]), 1), 0}
"""

# KEYS = failures, open, tripped, probe; ARGV = threshold, window s, cooldown ms, tripped ttl s, retry-after ms.
_BREAKER_FAILURE = """
local threshold, window, cooldown = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tripped_ttl, retry_after = tonumber(ARGV[4]), tonumber(ARGV[5])
local function trip(ms)
  redis.call('SET', KEYS[2], '1', 'PX', ms)
  redis.call('SET', KEYS[3], '1', 'EX', tripped_ttl)
  redis.call('DEL', KEYS[1], KEYS[4])
  return 1
end
if redis.call('EXISTS', KEYS[3]) == 1 then return trip(math.max(cooldown, retry_after)) end
local failures = redis.call('INCR', KEYS[1])
if failures == 1 then redis.call('EXPIRE', KEYS[1], window) end
if retry_after > 0 then return trip(math.max(cooldown, retry_after)) end
if failures >= threshold then return trip(cooldown) end
return 0
"""


@cache
def _script(url: str, source: str):
    return redis_client(decode=False).register_script(source)


def _run(source: str, *, keys: list[str], args: list):
    return _script(settings.REDIS_URL, source)(keys=keys, args=args)


def redis_key(provider: str, *parts: str) -> str:
    return ":".join([settings.CHECKS_REDIS_PREFIX, provider, *parts])


def _seconds(ms: int | float) -> float:
    return max(float(ms), 0.0) / 1000


# ---------------------------------------------------------------- rate limit


def parse_limits(spec: str | None) -> list[tuple[int, float]]:
    """ "3/60" → [(3, 60.0)]; "1/1,60/60" → two windows; "" → no limit."""
    limits = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        count, _, window = part.partition("/")
        limits.append((int(count), float(window or 60)))
    return limits


WAITING_GRACE_MS = 2000  # an interactive lookup's place in the waiting set outlasts its wait by this much


def rate_limit_acquire(provider: str, *, background: bool = False, waiter: str = "") -> float:
    """Count one request to `provider` if every window has room: 0.0, else the seconds until one has.

    `background` lookups also wait while an interactive one waits for this provider; an interactive
    lookup that must wait is recorded as `waiter` (see the module docstring)."""
    limits = parse_limits(settings.CHECKS_RATE_LIMITS.get(provider, ""))
    if not limits:
        return 0.0
    keys = [redis_key(provider, "rl", "waiting")]
    keys += [redis_key(provider, "rl", f"{count}-{int(window * 1000)}") for count, window in limits]
    args: list = ["1" if background else "0", WAITING_GRACE_MS, waiter or uuid.uuid4().hex, uuid.uuid4().hex]
    for count, window in limits:
        args += [count, int(window * 1000)]
    return _seconds(_run(_RATE_LIMIT, keys=keys, args=args))


def waiting_clear(waiter: str, providers) -> None:
    """The interactive lookup `waiter` no longer waits for any of `providers`."""
    with redis_client(decode=False).pipeline(transaction=False) as pipe:
        for provider in providers:
            pipe.zrem(redis_key(provider, "rl", "waiting"), waiter)
        pipe.execute()


# ---------------------------------------------------------------- 429 cooldown


def cooldown_set(provider: str, seconds: float) -> None:
    """Pause `provider` for every worker for `seconds` (a longer pause already set is kept)."""
    _run(_COOLDOWN, keys=[redis_key(provider, "cooldown")], args=[max(1, int(seconds * 1000))])


def cooldown_remaining(provider: str) -> float:
    return _seconds(redis_client(decode=False).pttl(redis_key(provider, "cooldown")))


# ---------------------------------------------------------------- circuit breaker


@dataclass(frozen=True)
class BreakerPermit:
    allowed: bool
    wait: float = 0.0  # seconds until it may be asked again, when not allowed
    probing: bool = False  # half-open: this caller's request decides whether the breaker closes


class CircuitBreaker:
    """Per provider, in Redis, with a half-open state.

    Closed: calls go through; CHECKS_BREAKER_FAILURES failures within CHECKS_BREAKER_WINDOW
    seconds (or one failure carrying a Retry-After) open it. Open: every caller skips the
    provider for CHECKS_BREAKER_COOLDOWN seconds (or the Retry-After, if longer). Half-open
    (after the cooldown): one caller, across all workers, gets a probe; a success closes the
    breaker, a failure opens it for another cooldown; the others keep skipping meanwhile.

    (chat.routing.CircuitBreaker is async and has no half-open probe, hence this small one.)
    """

    def __init__(self, provider: str):
        self.provider = provider
        self.failures_key = redis_key(provider, "breaker", "failures")
        self.open_key = redis_key(provider, "breaker", "open")
        self.tripped_key = redis_key(provider, "breaker", "tripped")  # set while open or half-open
        self.probe_key = redis_key(provider, "breaker", "probe")

    @staticmethod
    def probe_ms() -> int:
        """A probe holds the half-open slot at most as long as a request can last."""
        return int((settings.CHECKS_CONNECT_TIMEOUT + settings.CHECKS_READ_TIMEOUT + 5) * 1000)

    def allow(self) -> BreakerPermit:
        allowed, wait_ms, probing = _run(_BREAKER_ALLOW, keys=[self.open_key, self.tripped_key, self.probe_key],
                                         args=[self.probe_ms()])
        return BreakerPermit(bool(allowed), _seconds(wait_ms), bool(probing))

    def record_failure(self, *, retry_after: float | None = None) -> bool:
        """Count a failure; True when this opened (or re-opened) the breaker."""
        tripped_ttl = max(settings.CHECKS_BREAKER_COOLDOWN * 10, 3600)
        opened = _run(_BREAKER_FAILURE, keys=[self.failures_key, self.open_key, self.tripped_key, self.probe_key],
                      args=[settings.CHECKS_BREAKER_FAILURES, settings.CHECKS_BREAKER_WINDOW,
                            int(settings.CHECKS_BREAKER_COOLDOWN * 1000), tripped_ttl,
                            int((retry_after or 0) * 1000)])
        return bool(opened)

    def record_success(self) -> None:
        redis_client(decode=False).delete(self.failures_key, self.tripped_key, self.probe_key, self.open_key)

    def release_probe(self) -> None:
        """Give the half-open probe back unused (the request was not sent)."""
        redis_client(decode=False).delete(self.probe_key)

    def state(self) -> str:
        """"closed", "open" or "half_open" (for status pages and tests)."""
        client = redis_client(decode=False)
        if client.exists(self.open_key):
            return "open"
        return "half_open" if client.exists(self.tripped_key) else "closed"
