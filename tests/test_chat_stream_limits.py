"""What broke SSE in the measured prototype (PITFALLS.md "Streaming"), each pinned by a test."""

from __future__ import annotations

import asyncio
import importlib
import resource

import pytest
from django.conf import settings
from redis.asyncio import BlockingConnectionPool

from chat.streams import answer_events, streams_close
from core import redis_clients


def test_blocking_reads_end_before_the_socket_timeout():
    # redis-py's default socket timeout (5 s) killed `XREAD BLOCK 15000` mid-wait.
    assert redis_clients.BLOCK_MS / 1000 < redis_clients.BLOCKING_SOCKET_TIMEOUT


def test_streams_end_themselves_before_gunicorn_cuts_them():
    # On SIGTERM gunicorn cuts open streams at graceful_timeout; ours end (with retry:) first.
    conf = importlib.import_module("config.gunicorn")
    assert settings.CHAT_SSE_MAX_SECONDS < conf.graceful_timeout
    assert settings.CHAT_SSE_KEEPALIVE_SECONDS < settings.CHAT_SSE_MAX_SECONDS


def test_gunicorn_takes_the_hard_file_descriptor_limit():
    # Each open stream holds two descriptors: the soft limit (often 1,024) is not enough.
    importlib.reload(importlib.import_module("config.gunicorn"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == hard or hard == resource.RLIM_INFINITY


def test_event_streams_are_never_gzipped():
    # GZipMiddleware compresses each chunk as its own member: EventSource then sees nothing.
    assert "django.middleware.gzip.GZipMiddleware" not in settings.MIDDLEWARE


def test_many_streams_share_a_few_redis_connections(settings):
    """300 readers on one event loop with a 4-connection pool: all served, none cut.

    One blocking XREAD fans out to every reader; catch-up reads wait for a free connection
    instead of failing (redis-py's default pool cut stream 101 in the prototype).
    """
    settings.CHAT_SSE_MAX_SECONDS = 20
    settings.CHAT_REDIS_MAX_CONNECTIONS = 4
    streams = 300

    async def scenario() -> tuple[int, list[str]]:
        client = redis_clients.redis_async_client()
        keys = [f"chat:gen:test-limits:{i}" for i in range(streams)]
        await client.delete(*keys)
        readers = [answer_events(key) for key in keys]

        async def first_delta(reader) -> str:
            async for chunk in reader:
                if chunk.startswith(b"id:"):
                    await reader.aclose()
                    return chunk.decode()
            return ""

        tasks = [asyncio.create_task(first_delta(reader)) for reader in readers]
        await asyncio.sleep(0.5)  # every reader is waiting on the hub
        for key in keys:
            await client.xadd(key, {"t": "delta", "d": key})
        received = await asyncio.wait_for(asyncio.gather(*tasks), timeout=15)
        pool = client.connection_pool
        assert isinstance(pool, BlockingConnectionPool)
        created = len(pool._available_connections) + len(pool._in_use_connections)
        await client.delete(*keys)
        await streams_close()
        return created, received

    created, received = asyncio.run(scenario())
    assert all(f"chat:gen:test-limits:{i}" in text for i, text in enumerate(received))
    assert created <= 4, created


@pytest.mark.parametrize("after", ["garbage", "", "0-0"])
def test_a_bad_last_event_id_replays_from_the_start(after):
    async def scenario() -> list[bytes]:
        client = redis_clients.redis_async_client()
        key = "chat:gen:test-limits:replay"
        await client.delete(key)
        await client.xadd(key, {"t": "delta", "d": "hello"})
        await client.xadd(key, {"t": "end", "status": "complete"})
        chunks = [chunk async for chunk in answer_events(key, after)]
        await client.delete(key)
        await streams_close()
        return chunks

    chunks = asyncio.run(scenario())
    assert chunks[0].startswith(b"retry:")
    assert b'"text": "hello"' in chunks[1] and chunks[2].startswith(b"id:") and b"event: end" in chunks[2]
