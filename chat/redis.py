"""Redis clients for chat: a sync one for views and tasks, async ones per event loop for streams.

redis-py's defaults bite on this path (PITFALLS.md "Streaming"): a 5 s socket timeout kills
blocking reads, a 100-connection async pool cuts stream 101, and each new connection spends
~0.65 ms on `importlib.metadata` unless the client's library name and version are left out.
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

# A blocking read waits at most this long; the socket timeout stays above it.
BLOCK_MS = 5_000
SOCKET_TIMEOUT = BLOCK_MS / 1000 + 10
_CLIENT_OPTIONS = {"driver_info": DriverInfo(name=None, lib_version=None), "decode_responses": True}

_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = weakref.WeakKeyDictionary()


@cache
def sync_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=SOCKET_TIMEOUT, **_CLIENT_OPTIONS)


def client_name() -> str:
    """Chat's connections name themselves after their process: CLIENT LIST tells whose they are."""
    return f"prumo-chat-{os.getpid()}"


def async_client() -> aioredis.Redis:
    """This event loop's client over a bounded pool: callers wait for a connection instead of failing."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=settings.CHAT_REDIS_MAX_CONNECTIONS, timeout=30,
            socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=5, client_name=client_name(), **_CLIENT_OPTIONS,
        )
        client = _async_clients[loop] = aioredis.Redis(connection_pool=pool)
    return client


def async_reader() -> aioredis.Redis:
    """A client with its own single connection, for a long blocking read outside the shared pool."""
    return aioredis.Redis.from_url(settings.REDIS_URL, single_connection_client=True, client_name=client_name(),
                                   socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=5, **_CLIENT_OPTIONS)


async def async_client_close() -> None:
    """Close what this loop opened: its Redis client and its shared provider adapters (for one-shot
    loops such as a Celery task's `asyncio.run`)."""
    from .providers import adapters_close

    await adapters_close()
    client = _async_clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()
