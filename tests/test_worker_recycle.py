"""Worker recycling drops nothing (issue 12, item 5).

gunicorn restarts a worker after `max_requests`; uvicorn's shutdown then reset idle keep-alive
connections that a client had just reused (1-3 `ReadError`s in 2,000 `/v1` calls at concurrency 32).
config/web_worker.py drains instead. This drives 2,000 keep-alive calls at concurrency 32 (`/healthz`:
what is served does not matter, the connections do) through two workers recycled every 150 requests
and counts 0 client errors.

The client's idle keep-alive expiry (2 s) is below the server's `keepalive` (5 s), as every HTTP client
and load balancer in front of gunicorn must be configured: otherwise the server's own idle close races
the client with or without recycling, and that is what would be measured.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import httpx
import pytest

from .servers import start_live_server

CALLS = 2_000
CONCURRENCY = 32
MAX_REQUESTS = 150


async def drive(base: str) -> Counter:
    outcomes: Counter = Counter()
    queue: asyncio.Queue = asyncio.Queue()
    for _ in range(CALLS):
        queue.put_nowait(None)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY, keepalive_expiry=2)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def caller() -> None:
            while not queue.empty():
                queue.get_nowait()
                try:
                    response = await client.get("/healthz")
                    outcomes[response.status_code] += 1
                except httpx.HTTPError as error:
                    outcomes[type(error).__name__] += 1

        await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    return outcomes


@pytest.mark.slow
def test_recycled_workers_drop_no_request(test_database_url, redis_url, tmp_path):
    server = start_live_server(database_url=test_database_url, redis_url=redis_url, workdir=tmp_path, env_extra={
        "WEB_CONCURRENCY": "2", "GUNICORN_CMD_ARGS": f"--max-requests {MAX_REQUESTS} --max-requests-jitter 0"})
    try:
        outcomes = asyncio.run(drive(server.url))
        log = server.process.log()
    finally:
        server.process.stop()
    recycles = len(re.findall(r"Maximum request limit of \d+ exceeded", log))
    assert recycles >= 5, log[-3000:]
    assert outcomes == Counter({200: CALLS}), outcomes
