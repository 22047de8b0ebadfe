"""`/metrics` (Prometheus text format) and what is measured at scrape time or by signals.

Who may scrape: with METRICS_TOKEN set, a request carrying `Authorization: Bearer <token>`; without it,
only a request from this machine (loopback, not forwarded by a proxy). Anyone else gets 404.

The families are defined in core.metrics. Here: the gauges read when scraped (open credit holds, Celery queue
lengths, this process's connection pools) and the Celery signal handlers (config.celery connects them).
"""

from __future__ import annotations

import hmac
import logging

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from core import metrics

logger = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "::1"}


def scrape_allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())
    return request.META.get("REMOTE_ADDR") in LOOPBACK and "X-Forwarded-For" not in request.headers


@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not scrape_allowed(request):
        raise Http404
    return HttpResponse(generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST)


def scrape_registry() -> CollectorRegistry:
    """Every process's samples (multiprocess mode) or this one's, plus the gauges read now."""
    metrics.pools_record()
    registry = CollectorRegistry()
    if metrics.MULTIPROCESS_DIR:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=metrics.MULTIPROCESS_DIR)
    else:
        registry.register(_ProcessRegistry())
    registry.register(ScrapeCollector())
    return registry


class _ProcessRegistry:
    """This process's default registry, as one collector of the scrape's registry."""

    def collect(self):
        yield from REGISTRY.collect()


class ScrapeCollector:
    """Gauges computed when scraped: one query and one Redis round trip per scrape, none per request."""

    def collect(self):
        holds = GaugeMetricFamily("prumo_credit_holds_open", "Credit holds not yet settled or released.")
        holds.add_metric([], _holds_open())
        yield holds
        queues = GaugeMetricFamily("prumo_celery_queue_length", "Tasks waiting in a Celery queue (broker).",
                                   labels=["queue"])
        for queue, length in _queue_lengths().items():
            queues.add_metric([queue], length)
        yield queues
        breakers = GaugeMetricFamily("prumo_circuit_open", "1 while a provider's circuit breaker is open: the AI "
                                     "providers' platform keys (organizations' own keys aside) and the CNPJ "
                                     "registries.", labels=["provider"])
        for provider, state in _breakers_open().items():
            breakers.add_metric([provider], state)
        yield breakers


def _holds_open() -> float:
    from billing.models import CreditReservation

    try:
        return CreditReservation.objects.filter(status=CreditReservation.Status.OPEN).count()
    except Exception:  # a scrape answers even with the database down (the family then reads NaN)
        logger.warning("metrics: open credit holds unreadable", exc_info=True)
        return float("nan")


def celery_queues() -> list[str]:
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values() if "queue" in route}
    return sorted({settings.CELERY_TASK_DEFAULT_QUEUE, *routed, *settings.METRICS_CELERY_QUEUES})


def _queue_lengths() -> dict[str, float]:
    from config.celery import app

    queues = celery_queues()
    try:
        with app.connection_for_read() as connection:
            client = connection.default_channel.client
            pipe = client.pipeline(transaction=False)
            for queue in queues:
                pipe.llen(queue)
            return dict(zip(queues, (float(length) for length in pipe.execute()), strict=True))
    except Exception:
        logger.warning("metrics: Celery queue lengths unreadable", exc_info=True)
        return {queue: float("nan") for queue in queues}


def _breakers_open() -> dict[str, float]:
    from chat.catalog.models import Provider
    from chat.routing import CircuitBreaker
    from checks.registries import FALLBACK_ORDER
    from checks.registries.limits import CircuitBreaker as RegistryBreaker
    from core.redis_clients import redis_client

    keys = {provider: CircuitBreaker(provider).open_key for provider in Provider.values if provider != "demo"}
    keys |= {registry: RegistryBreaker(registry).open_key for registry in FALLBACK_ORDER}
    try:
        pipe = redis_client().pipeline(transaction=False)
        for key in keys.values():
            pipe.exists(key)
        return {provider: float(bool(found)) for provider, found in zip(keys, pipe.execute(), strict=True)}
    except Exception:
        logger.warning("metrics: circuit breakers unreadable", exc_info=True)
        return dict.fromkeys(keys, float("nan"))
