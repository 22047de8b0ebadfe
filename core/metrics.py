"""Prometheus metrics: the families Prumo exports at /metrics (config.metrics serves them).

Names and labels are an interface (dashboards and alerts read them). Labels are bounded: a route's
pattern name, a method, a status, a provider, a task's name, never an organization, a person, a key or
a CNPJ (tests/test_metrics.py fails when one appears or when a label's values grow with organizations).

Several processes, one scrape: with PROMETHEUS_MULTIPROC_DIR set (before this module is imported), every
process (gunicorn's workers, Celery workers on the same node) writes its samples to files there and the
scrape adds them up (prometheus-client's multiprocess mode). Without it, one process's registry is served.

Hot paths (chat.send_direct, chat.stream_direct, chat.gateway, chat.v1) only increment: a child per label
set is made once (`labels()` costs a dict lookup under a lock), never a database or Redis call.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if MULTIPROCESS_DIR:  # prometheus-client writes there as soon as a metric is defined (below)
    os.makedirs(MULTIPROCESS_DIR, exist_ok=True)

from prometheus_client import Counter, Gauge, Histogram  # noqa: E402

# Request durations: from a health check to a long upload; streams are not requests here (they stay open).
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900)

http_requests = Counter("prumo_http_requests_total", "HTTP requests Django answered, by URL pattern name.",
                        ["route", "method", "status"])
http_request_duration = Histogram("prumo_http_request_duration_seconds",
                                  "Seconds Django took to answer, by URL pattern name.", ["route", "method"],
                                  buckets=HTTP_BUCKETS)

chat_streams_open = Gauge("prumo_chat_streams_open", "Answer streams (SSE) open now.", multiprocess_mode="livesum")
chat_answers = Counter("prumo_chat_answers_total", "Chat answers closed, by final status.", ["status"])

credits = Counter("prumo_credits_total", "Credits moved, by kind (held, settled, released, granted, purchased).",
                  ["kind"])
CREDIT_KINDS = ("held", "settled", "released", "granted", "purchased")
_credits = {kind: credits.labels(kind) for kind in CREDIT_KINDS}

ratelimit_rejections = Counter("prumo_ratelimit_rejections_total", "Requests refused by a rate limit, by layer.",
                               ["layer"])
RATELIMIT_LAYERS = ("key", "ip", "send", "streams", "view")
_ratelimit_rejections = {layer: ratelimit_rejections.labels(layer) for layer in RATELIMIT_LAYERS}

celery_tasks = Counter("prumo_celery_tasks_total", "Celery tasks, by task name and outcome "
                       "(started, succeeded, failed, retried).", ["task", "state"])
celery_task_duration = Histogram("prumo_celery_task_duration_seconds", "Seconds a Celery task ran.", ["task"],
                                 buckets=TASK_BUCKETS)

db_pool_connections = Gauge("prumo_db_pool_connections", "PostgreSQL pool connections per process kind of pool "
                            "(django: the threads' pool; async: the gateway's), by state (busy, idle, max).",
                            ["pool", "state"], multiprocess_mode="livesum")


def credits_count(kind: str, amount) -> None:
    """`amount` credits moved as `kind` (one of CREDIT_KINDS)."""
    if amount:
        _credits[kind].inc(float(amount))


def ratelimit_rejected(layer: str) -> None:
    """One request refused by the `layer` limit (one of RATELIMIT_LAYERS)."""
    _ratelimit_rejections[layer].inc()


def pool_stats_record(pool: str, stats: dict[str, int]) -> None:
    """A psycopg_pool's `get_stats()` as this process's share of `prumo_db_pool_connections`."""
    size, available = stats.get("pool_size", 0), stats.get("pool_available", 0)
    db_pool_connections.labels(pool, "busy").set(size - available)
    db_pool_connections.labels(pool, "idle").set(available)
    db_pool_connections.labels(pool, "max").set(stats.get("pool_max", 0))


_SAMPLE_FILE = re.compile(r"_(\d+)\.db$")


def multiprocess_dir_clean(directory: str = MULTIPROCESS_DIR) -> None:
    """Remove the sample files of processes that are gone (a previous run's), keeping live ones': a server starting
    after a Celery worker on the same node must not erase the worker's samples."""
    if not directory:
        return
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for file in path.glob("*.db"):
        match = _SAMPLE_FILE.search(file.name)
        if match is None or not _alive(int(match[1])):
            file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_dead(pid: int) -> None:
    """A process that wrote samples ended: its live gauges stop counting (gunicorn's child_exit, Celery's
    worker_process_shutdown)."""
    if MULTIPROCESS_DIR:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, MULTIPROCESS_DIR)


# ---------------------------------------------------------------- the /v1 gateway and provider calls

gateway_requests = Counter("prumo_gateway_requests_total", "/v1/chat/completions calls, by the provider and catalog "
                           "model that served them (\"none\" before one was chosen) and HTTP status (499: the client "
                           "left before any answer).", ["provider", "model", "status"])
gateway_ttft = Histogram("prumo_gateway_ttft_seconds", "Seconds from asking the provider to its first event.",
                         ["provider"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 30, 60))
gateway_overhead = Histogram("prumo_gateway_overhead_seconds", "Seconds a /v1 call spent in Prumo before its "
                             "response headers, the provider's wait excluded (the x-prumo-overhead-ms header).",
                             buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
llm_tokens = Counter("prumo_llm_tokens_total", "Tokens providers counted (chat answers and /v1), by direction "
                     "(input, output).", ["provider", "direction"])

_children: dict[tuple, object] = {}


def _child(metric, *labels: str):
    """`metric.labels(*labels)`, made once per label set (a dict lookup, no lock, afterwards)."""
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def gateway_call_record(*, provider: str, model: str, status: int, ttft: float | None, overhead: float | None,
                        input_tokens: int | None, output_tokens: int | None) -> None:
    """One /v1/chat/completions call, as it ended."""
    _child(gateway_requests, provider, model, str(status or 499)).inc()
    if ttft is not None:
        _child(gateway_ttft, provider).observe(ttft)
    if overhead is not None:
        gateway_overhead.observe(overhead)
    llm_tokens_count(provider, input_tokens, output_tokens)


def llm_tokens_count(provider: str, input_tokens: int | None, output_tokens: int | None) -> None:
    if input_tokens:
        _child(llm_tokens, provider, "input").inc(input_tokens)
    if output_tokens:
        _child(llm_tokens, provider, "output").inc(output_tokens)


# ---------------------------------------------------------------- CNPJ registries and their cache

registry_requests = Counter("prumo_registry_requests_total", "Requests to a CNPJ registry, by registry and outcome.",
                            ["registry", "outcome"])
checks_cache = Counter("prumo_checks_cache_total", "Company lookups answered from the shared cache (hit) or by the "
                       "registries (miss).", ["result"])
_checks_cache = {result: checks_cache.labels(result) for result in ("hit", "miss")}


def checks_cache_count(*, hit: bool) -> None:
    _checks_cache["hit" if hit else "miss"].inc()


# ---------------------------------------------------------------- outbound webhooks

webhook_deliveries = Counter("prumo_webhook_deliveries_total", "Webhook delivery tries, by outcome (success: a 2xx; "
                             "failure: another HTTP status; gone: a 410; timeout; connection: no answer; refused: "
                             "the address is not allowed; interrupted: the worker died while sending).", ["outcome"])
WEBHOOK_OUTCOMES = ("success", "failure", "gone", "timeout", "connection", "refused", "interrupted")
_webhook_deliveries = {outcome: webhook_deliveries.labels(outcome) for outcome in WEBHOOK_OUTCOMES}


def webhook_delivery_count(outcome: str) -> None:
    """One delivery try ended with `outcome` (one of WEBHOOK_OUTCOMES)."""
    _webhook_deliveries[outcome].inc()


_pools_recorded_at = 0.0


def pools_record(*, every: float = 0.0) -> None:
    """This process's connection pools into `prumo_db_pool_connections` (at most once per `every` seconds)."""
    global _pools_recorded_at
    now = time.monotonic()
    if every and now - _pools_recorded_at < every:
        return
    _pools_recorded_at = now
    from django.db.backends.postgresql.base import DatabaseWrapper

    from core.db_async import _pools

    pool = DatabaseWrapper._connection_pools.get("default")  # never opens one that does not exist
    pool_stats_record("django", pool.get_stats() if pool is not None else {})  # zeros: no pool (yet)
    async_stats: dict[str, int] = {}
    for async_pool in list(_pools.values()):
        for name, value in async_pool.get_stats().items():
            async_stats[name] = async_stats.get(name, 0) + value
    pool_stats_record("async", async_stats)


# ---------------------------------------------------------------- Celery (connected in config.celery)

_task_started: dict[str, float] = {}


def task_prerun(task_id=None, task=None, **kwargs) -> None:
    _task_started[task_id] = time.monotonic()
    celery_tasks.labels(task.name, "started").inc()


def task_postrun(task_id=None, task=None, state=None, **kwargs) -> None:
    started = _task_started.pop(task_id, None)
    if started is not None:
        celery_task_duration.labels(task.name).observe(time.monotonic() - started)
    outcome = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried"}.get(state or "", "other")
    celery_tasks.labels(task.name, outcome).inc()


def worker_process_shutdown(pid=None, **kwargs) -> None:
    process_dead(pid or os.getpid())


def worker_init(**kwargs) -> None:
    """A worker starting removes the sample files of processes that are gone (as gunicorn's on_starting does)."""
    multiprocess_dir_clean()
