"""The process's plain Redis client for small shared state (key cache, rate-limit counters).

(Not `config/redis.py`: `config/embedded.py` runs as a script, and a sibling `redis.py` would shadow the
redis package.)

Values are strings (JSON where structured) so sync and async code read the same keys;
Django's cache pickles and prefixes its keys, which async code could not read without a
thread hop. The library name and version are left out of the connection handshake
(`importlib.metadata` costs ~0.65 ms per new connection).
"""

from __future__ import annotations

from functools import cache

import redis
from django.conf import settings
from redis.driver_info import DriverInfo


@cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, decode_responses=True,
                                driver_info=DriverInfo(name=None, lib_version=None))
