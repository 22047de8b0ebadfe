"""Plan rate limits: requests and tokens per minute, per API key and per organization.

One Lua script checks all four counters and counts the request only if every one has
room, so the limit is exact across any number of processes and machines. A window starts
with its first request and lasts a minute (no wall-clock boundary lets a burst through
twice). Tokens are counted up front (the prompt estimate plus max_tokens) and the unused
part is given back when the call ends.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from functools import cache

from django.conf import settings
from redis.exceptions import NoScriptError

from core.metrics import ratelimit_rejected
from core.redis_clients import redis_client

WINDOW_SECONDS = 60

_CHECK = """
local function count(key) return tonumber(redis.call('GET', key) or '0') end
local function left_ms(key)
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then return tonumber(ARGV[4]) * 1000 end
  return ttl
end
local req_limit, tok_limit, tokens, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local rk, ro, tk, to = count(KEYS[1]), count(KEYS[2]), count(KEYS[3]), count(KEYS[4])
local req_used, tok_used = math.max(rk, ro), math.max(tk, to)
local req_key = KEYS[1]
if ro > rk then req_key = KEYS[2] end
local tok_key = KEYS[3]
if to > tk then tok_key = KEYS[4] end
if req_used >= req_limit then
  return {0, 1, req_used, left_ms(req_key), tok_used, left_ms(tok_key)}
end
if tok_used + tokens > tok_limit then
  return {0, 2, req_used, left_ms(req_key), tok_used, left_ms(tok_key)}
end
for i = 1, 2 do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], window) end
end
for i = 3, 4 do
  if redis.call('INCRBY', KEYS[i], tokens) == tokens then redis.call('EXPIRE', KEYS[i], window) end
end
return {1, 0, req_used + 1, left_ms(req_key), tok_used + tokens, left_ms(tok_key)}
"""

_GIVE_BACK = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local left = redis.call('DECRBY', KEYS[i], ARGV[1])
    if left < 0 then redis.call('SET', KEYS[i], 0, 'KEEPTTL') end
  end
end
return 0
"""

# A fixed window: count one; the milliseconds left when over ARGV[1] in ARGV[2] seconds, else -1.
_WINDOW_COUNT = """
local used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if used > tonumber(ARGV[1]) then return redis.call('PTTL', KEYS[1]) end
return -1
"""


@cache
def _script(source: str):
    return redis_client().register_script(source)


_SHA = {source: hashlib.sha1(source.encode()).hexdigest() for source in (_CHECK, _GIVE_BACK, _WINDOW_COUNT)}


async def _run_async(client, source: str, keys: list[str], args: list) -> list | int:
    """EVALSHA on an async client, loading the script the first time a server has not seen it."""
    try:
        return await client.evalsha(_SHA[source], len(keys), *keys, *args)
    except NoScriptError:
        return await client.eval(source, len(keys), *keys, *args)


def _reset(ms: int) -> str:
    """OpenAI's reset format: `1s`, `6m0s`, `59.1s`."""
    seconds = max(ms, 0) / 1000
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60)}s"
    return f"{seconds:.3g}s" if seconds < 10 else f"{int(round(seconds))}s"


@dataclass(frozen=True)
class Limit:
    allowed: bool
    exceeded: str  # "", "requests" or "tokens"
    requests_limit: int
    requests_used: int
    requests_reset_ms: int
    tokens_limit: int
    tokens_used: int
    tokens_reset_ms: int

    @property
    def retry_after(self) -> int:
        ms = self.requests_reset_ms if self.exceeded == "requests" else self.tokens_reset_ms
        return max(1, -(-ms // 1000))

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.requests_limit),
            "x-ratelimit-remaining-requests": str(max(self.requests_limit - self.requests_used, 0)),
            "x-ratelimit-reset-requests": _reset(self.requests_reset_ms),
            "x-ratelimit-limit-tokens": str(self.tokens_limit),
            "x-ratelimit-remaining-tokens": str(max(self.tokens_limit - self.tokens_used, 0)),
            "x-ratelimit-reset-tokens": _reset(self.tokens_reset_ms),
        }


def rate_limit_keys(organization_id: int, key_id: int) -> list[str]:
    """The counters of a key and its organization: requests, then tokens."""
    return [f"rl:req:key:{key_id}", f"rl:req:org:{organization_id}", f"rl:tok:key:{key_id}",
            f"rl:tok:org:{organization_id}"]


def _limit(result: list, requests_per_minute: int, tokens_per_minute: int) -> Limit:
    allowed, reason, req_used, req_reset, tok_used, tok_reset = (int(value) for value in result)
    if not allowed:
        ratelimit_rejected("key")
    return Limit(allowed=bool(allowed), exceeded={0: "", 1: "requests", 2: "tokens"}[reason],
                 requests_limit=requests_per_minute, requests_used=req_used, requests_reset_ms=req_reset,
                 tokens_limit=tokens_per_minute, tokens_used=tok_used, tokens_reset_ms=tok_reset)


def rate_limit_take(*, organization_id: int, key_id: int, requests_per_minute: int, tokens_per_minute: int,
                    tokens: int) -> Limit:
    """Count one request of `tokens` tokens if the key and the organization both have room."""
    result = _script(_CHECK)(keys=rate_limit_keys(organization_id, key_id),
                             args=[requests_per_minute, tokens_per_minute, tokens, WINDOW_SECONDS])
    return _limit(result, requests_per_minute, tokens_per_minute)


def rate_limit_queue(pipe, *, organization_id: int, key_id: int, requests_per_minute: int, tokens_per_minute: int,
                     tokens: int) -> None:
    """Queue `rate_limit_take`'s script on an async pipeline (the /v1 gateway sends it with other reads);
    `rate_limit_result` reads its reply. A server that lost its scripts answers NoScriptError:
    `rate_limit_scripts_load` and send again."""
    keys = rate_limit_keys(organization_id, key_id)
    pipe.evalsha(_SHA[_CHECK], 4, *keys, requests_per_minute, tokens_per_minute, tokens, WINDOW_SECONDS)


def rate_limit_result(result: list, *, requests_per_minute: int, tokens_per_minute: int) -> Limit:
    return _limit(result, requests_per_minute, tokens_per_minute)


async def rate_limit_scripts_load(client) -> None:
    for source in _SHA:
        await client.script_load(source)


def rate_limit_give_back(*, organization_id: int, key_id: int, tokens: int) -> None:
    """Return tokens counted up front but not used (the answer was shorter than max_tokens)."""
    if tokens > 0:
        _script(_GIVE_BACK)(keys=rate_limit_keys(organization_id, key_id)[2:], args=[tokens])


async def rate_limit_give_back_async(client, *, organization_id: int, key_id: int, tokens: int) -> None:
    """`rate_limit_give_back` on an async client; a negative `tokens` (the provider counted more than
    was counted up front) takes the difference from the window instead."""
    if tokens:
        await _run_async(client, _GIVE_BACK, rate_limit_keys(organization_id, key_id)[2:], [tokens])


def ip_limited(ip: str) -> int | None:
    """Count an unauthenticated call from `ip`; the seconds to wait when over the limit, else None."""
    ttl = int(_script(_WINDOW_COUNT)(keys=[f"rl:ip:{ip}"],
                                     args=[settings.API_UNAUTHENTICATED_PER_MINUTE, WINDOW_SECONDS]))
    return _ip_wait(ttl)


async def ip_limited_async(client, ip: str) -> int | None:
    """`ip_limited` on an async Redis client."""
    ttl = int(await client.eval(_WINDOW_COUNT, 1, f"rl:ip:{ip}", settings.API_UNAUTHENTICATED_PER_MINUTE,
                                WINDOW_SECONDS))
    return _ip_wait(ttl)


def _ip_wait(ttl: int) -> int | None:
    if ttl < 0:
        return None
    ratelimit_rejected("ip")
    return max(1, -(-ttl // 1000))


def _over(used: str | None, ttl: int) -> int | None:
    if used is None or int(used) < settings.API_UNAUTHENTICATED_PER_MINUTE or ttl < 0:
        return None
    ratelimit_rejected("ip")
    return max(1, -(-ttl // 1000))


def ip_over_limit(ip: str) -> int | None:
    """The seconds `ip` must wait if it already used up its unauthenticated calls, without counting one:
    a key look-up that would reach the database asks first."""
    pipe = redis_client().pipeline(transaction=False)
    pipe.get(f"rl:ip:{ip}")
    pipe.pttl(f"rl:ip:{ip}")
    return _over(*pipe.execute())


async def ip_over_limit_async(client, ip: str) -> int | None:
    """`ip_over_limit` on an async Redis client."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.get(f"rl:ip:{ip}")
        pipe.pttl(f"rl:ip:{ip}")
        return _over(*await pipe.execute())


# Fair sharing between organizations: per-organization slots (a counting semaphore with leases)
# and per-member send counters. A slot is one member of a sorted set scored by its lease's end:
# a worker that dies stops renewing, and its slot frees itself when the lease runs out.

_SLOT_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[4] == '0' and redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return 1
"""


@dataclass(frozen=True)
class Slot:
    """One of an organization's slots for `kind` ("answers", "checks"), held until released or its lease ends."""

    key: str
    token: str
    lease_ms: int


def slot_key(kind: str, organization_id: int) -> str:
    return f"fair:slots:{kind}:{organization_id}"


def slot_acquire(*, kind: str, organization_id: int, limit: int, lease_seconds: float) -> Slot | None:
    """Take one of the organization's `limit` slots for `kind`; None when all are held."""
    import secrets

    slot = Slot(slot_key(kind, organization_id), secrets.token_hex(8), max(1, int(lease_seconds * 1000)))
    taken = _script(_SLOT_TAKE)(keys=[slot.key], args=[max(limit, 1), slot.lease_ms, slot.token, 0])
    return slot if int(taken) else None


async def slot_acquire_async(client, *, kind: str, owner_id: int, limit: int, lease_seconds: float) -> Slot | None:
    """`slot_acquire` on an async Redis client, for any owner (an organization, or a person for per-person kinds)."""
    import secrets

    slot = Slot(slot_key(kind, owner_id), secrets.token_hex(8), max(1, int(lease_seconds * 1000)))
    taken = await client.eval(_SLOT_TAKE, 1, slot.key, max(limit, 1), slot.lease_ms, slot.token, 0)
    return slot if int(taken) else None


async def slot_renew_async(client, slot: Slot) -> None:
    """Extend the lease of a slot still in use (a running answer's heartbeat); re-taken if it had lapsed."""
    await client.eval(_SLOT_TAKE, 1, slot.key, 0, slot.lease_ms, slot.token, 1)


def slot_release(slot: Slot) -> None:
    redis_client().zrem(slot.key, slot.token)


def slots_held(*, kind: str, organization_id: int) -> int:
    """How many of the organization's slots for `kind` are held now (leases not yet run out; this machine's clock
    against Redis's, which scores them: close enough for saying why, never for granting a slot)."""
    return redis_client().zcount(slot_key(kind, organization_id), int(time.time() * 1000), "+inf")


def send_limited(*, organization_id: int, user_id: int, per_minute: int) -> int | None:
    """Count one chat send by a member; the seconds to wait when over the plan's per-minute limit, else None."""
    ttl = int(_script(_WINDOW_COUNT)(keys=[_send_window(organization_id, user_id)], args=[per_minute, WINDOW_SECONDS]))
    return _wait_seconds(ttl)


async def send_limited_async(client, *, organization_id: int, user_id: int, per_minute: int) -> int | None:
    """`send_limited` on an async Redis client (chat.send_direct)."""
    ttl = int(await _run_async(client, _WINDOW_COUNT, [_send_window(organization_id, user_id)],
                               [per_minute, WINDOW_SECONDS]))
    return _wait_seconds(ttl)


async def send_limit_give_back(client, *, organization_id: int, user_id: int) -> None:
    """Uncount a send counted by `send_limited_async` that was then handed on to be counted again (chat.send_direct)."""
    await _run_async(client, _GIVE_BACK, [_send_window(organization_id, user_id)], [1])


def _send_window(organization_id: int, user_id: int) -> str:
    return f"rl:send:{organization_id}:{user_id}"


def _wait_seconds(ttl_ms: int) -> int | None:
    if ttl_ms < 0:
        return None
    ratelimit_rejected("send")
    return max(1, -(-ttl_ms // 1000))
