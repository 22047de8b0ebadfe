"""One long-lived event loop per process for the provider calls of Celery's threads (answers, titles, the trial).

An answer used to stream inside its own `asyncio.run`: a new event loop, a new Redis connection pool and new
provider HTTP clients (a new TCP, and in production TLS, connection to the provider) for every answer. Here the
answers of a process all run on one loop, on a thread of its own, so the per-loop Redis client and provider
adapters (chat.redis, chat.providers) and their connections serve every answer. The coroutines run there only
await I/O; nothing on them may block (no ORM: the Celery thread does the database work before and after).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid = 0


def _start() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="answers-loop", daemon=True).start()
    return loop


def _answers_loop() -> asyncio.AbstractEventLoop:
    global _loop, _pid
    with _lock:
        if _loop is None or _pid != os.getpid():  # a forked child gets a loop of its own
            _loop, _pid = _start(), os.getpid()
        return _loop


def answers_run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on this process's answers loop; wait for its result (its exception is raised here)."""
    return asyncio.run_coroutine_threadsafe(coroutine, _answers_loop()).result()


def answers_start(coroutine: Coroutine[Any, Any, T], then: Callable[[Future], None]) -> None:
    """Start `coroutine` on this process's answers loop without waiting; `then(future)` runs when it ends (on the
    loop's thread: it must hand any blocking work to another thread)."""
    asyncio.run_coroutine_threadsafe(coroutine, _answers_loop()).add_done_callback(then)
