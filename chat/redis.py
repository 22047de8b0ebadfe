"""Closing what an event loop opened for chat (its Redis client in core.redis_clients, and the shared
provider adapters), for one-shot loops such as a Celery task's `asyncio.run`."""

from __future__ import annotations

from core.redis_clients import redis_async_client_close


async def async_client_close() -> None:
    from .providers import adapters_close

    await adapters_close()
    await redis_async_client_close()
