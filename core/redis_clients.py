"""Every Redis client a process uses, made here: one sync client for small shared state (API key cache,
rate-limit counters, chat's stream bookkeeping, the checks cache and registry limits), and per event loop
an async client over a bounded pool plus single-connection readers for long blocking reads (chat streams).

(Not `core/redis.py`: a module named like the package it imports reads as a shadowing mistake.)

Values are strings (JSON where structured) so sync and async code read the same keys; Django's cache
pickles and prefixes its keys, which async code could not read without a thread hop. The checks code
keeps the bytes it has always read (`decode=False`).

redis-py's defaults bite here (PITFALLS.md "Streaming"): a 5 s socket timeout kills blocking reads, a
100-connection async pool cuts stream 101, and each new connection spends ~0.65 ms on
`importlib.metadata` unless the client's library name and version are left out of the handshake.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from functools import cache

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.driver_info import DriverInfo

# A blocking read waits at most this long; the socket timeout of clients that make one stays above it.
BLOCK_MS = 5_000
BLOCKING_SOCKET_TIMEOUT = BLOCK_MS / 1000 + 10
SOCKET_TIMEOUT = 5
_DRIVER = DriverInfo(name=None, lib_version=None)

_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = weakref.WeakKeyDictionary()


def redis_client(*, decode: bool = True) -> redis.Redis:
    """The process's sync client (strings, or bytes with `decode=False`) for `REDIS_URL`."""
    return _sync_client(settings.REDIS_URL, decode)


@cache
def _sync_client(url: str, decode: bool) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=5,
                                decode_responses=decode, driver_info=_DRIVER)


def client_name() -> str:
    """Async connections name themselves after their process: CLIENT LIST tells whose they are."""
    return f"prumo-chat-{os.getpid()}"


def redis_async_client() -> aioredis.Redis:
    """This event loop's client over a bounded pool (CHAT_REDIS_MAX_CONNECTIONS): callers wait for a
    connection instead of failing."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=settings.CHAT_REDIS_MAX_CONNECTIONS, timeout=30,
            socket_timeout=BLOCKING_SOCKET_TIMEOUT, socket_connect_timeout=5, client_name=client_name(),
            decode_responses=True, driver_info=_DRIVER,
        )
        client = _async_clients[loop] = aioredis.Redis(connection_pool=pool)
    return client


def redis_async_reader() -> aioredis.Redis:
    """A client with its own single connection, for a long blocking read outside the shared pool."""
    return aioredis.Redis.from_url(settings.REDIS_URL, single_connection_client=True, client_name=client_name(),
                                   socket_timeout=BLOCKING_SOCKET_TIMEOUT, socket_connect_timeout=5,
                                   decode_responses=True, driver_info=_DRIVER)


async def redis_async_client_close() -> None:
    """Close the client this event loop opened (for one-shot loops such as a Celery task's `asyncio.run`)."""
    client = _async_clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()
