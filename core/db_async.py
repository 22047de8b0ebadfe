"""An async PostgreSQL pool (psycopg_pool) per event loop, for the few hot paths that run
their own SQL without Django's thread hop (the /v1 gateway's hold and settlement).

Connections are autocommit, on Django's default database and its credentials; a statement
holds a connection only while it runs, so a handful serve a whole process.
"""

from __future__ import annotations

import asyncio
import weakref

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, connections
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

# psycopg's connection class for new pools (tests count statements with a subclass).
CONNECTION_CLASS: type[AsyncConnection] = AsyncConnection

_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncConnectionPool] = weakref.WeakKeyDictionary()


def _conninfo() -> str:
    """Django's own connection parameters for the default database (OPTIONS included: the embedded
    PostgreSQL is reached through `?host=<socket dir>`), minus its Python-only ones."""
    params = connections["default"].get_connection_params()
    params = {key: value for key, value in params.items() if isinstance(value, str | int) and value != ""}
    params.pop("prepare_threshold", None)
    name = params.pop("application_name", "prumo")
    return make_conninfo(**params, application_name=f"{name}-async")


async def async_pool() -> AsyncConnectionPool:
    """This event loop's pool, opened on first use."""
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = AsyncConnectionPool(_conninfo(), connection_class=CONNECTION_CLASS, min_size=1,
                                   max_size=settings.ASYNC_DB_POOL_SIZE, open=False, kwargs={"autocommit": True},
                                   name="prumo-async")
        _pools[loop] = pool
        await pool.open()
    return pool


async def async_pool_close() -> None:
    pool = _pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.close()


def insert_values(instance) -> tuple[list[str], list]:
    """The columns and values Django would insert for `instance` (its field defaults and conversions, its primary
    key too when set), for an INSERT written by hand on this pool. Reads no database."""
    connection = connections["default"]
    fields = [field for field in instance._meta.concrete_fields if not (field.primary_key and instance.pk is None)]
    return [field.column for field in fields], [field.get_db_prep_save(field.pre_save(instance, True), connection)
                                                for field in fields]


async def orm_call(function, *args, **kwargs):
    """`function` on Django's ORM, in a thread, for the event loop's rare slow paths (a snapshot to build, a
    key not cached yet, a refused hold to explain). Outside Django's request cycle nobody would close
    that thread's connection, so the call closes it when done. Each call stands alone, so they run on the
    loop's thread pool side by side (not thread-sensitive: a fresh process's first sends for 100 organizations
    built their 100 snapshots one after another)."""

    def call():
        try:
            return function(*args, **kwargs)
        finally:
            connection.close()

    return await sync_to_async(call, thread_sensitive=False)()
