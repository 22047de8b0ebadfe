"""`/metrics` (Prometheus text format) and what is measured at scrape time or by signals.

Who may scrape: with METRICS_TOKEN set, a request carrying `Authorization: Bearer <token>`; without it,
only a request from this machine (loopback, not forwarded by a proxy). Anyone else gets 404.

The families are defined in core.metrics. Here: the gauges read when scraped (open credit holds and the oldest's
age, Celery queue lengths, this process's connection pools), the Celery signal handlers (config.celery connects
them) and a Celery worker's own /metrics (METRICS_WORKER_PORT: a worker whose processes write elsewhere than the
web server's, e.g. in its own container).
"""

from __future__ import annotations

import hmac
import logging
import threading
from http.server import BaseHTTPRequestHandler

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from core import metrics

logger = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "::1"}


def scrape_allowed(request: HttpRequest) -> bool:
    return _allowed(authorization=request.headers.get("Authorization", ""), address=request.META.get("REMOTE_ADDR"),
                    forwarded="X-Forwarded-For" in request.headers)


def _allowed(*, authorization: str, address: str | None, forwarded: bool) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        return hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode())
    return address in LOOPBACK and not forwarded


@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not scrape_allowed(request):
        raise Http404
    return HttpResponse(generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST)


def scrape_registry() -> CollectorRegistry:
    """Every process's samples (multiprocess mode) or this one's, plus the gauges read now."""
    metrics.pools_record()
    registry = processes_registry()
    registry.register(ScrapeCollector())
    return registry


def processes_registry() -> CollectorRegistry:
    """Every process's samples (multiprocess mode) or this one's."""
    registry = CollectorRegistry()
    if metrics.MULTIPROCESS_DIR:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=metrics.MULTIPROCESS_DIR)
    else:
        registry.register(_ProcessRegistry())
    return registry


class _ProcessRegistry:
    """This process's default registry, as one collector of the scrape's registry."""

    def collect(self):
        yield from REGISTRY.collect()


class ScrapeCollector:
    """Gauges computed when scraped: one query and one Redis round trip per scrape, none per request."""

    def collect(self):
        count, oldest = _holds_open()
        holds = GaugeMetricFamily("prumo_credit_holds_open", "Credit holds not yet settled or released.")
        holds.add_metric([], count)
        yield holds
        age = GaugeMetricFamily("prumo_credit_holds_oldest_seconds", "Seconds the oldest open credit hold has been "
                                "open (0: none). Holds a dead process left go back after GATEWAY_HOLD_TIMEOUT_SECONDS.")
        age.add_metric([], oldest)
        yield age
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


def _holds_open() -> tuple[float, float]:
    """How many credit holds are open and how long the oldest has been, in one query."""
    from django.db.models import Count, Min
    from django.utils import timezone

    from billing.models import CreditReservation

    try:
        found = CreditReservation.objects.filter(status=CreditReservation.Status.OPEN).aggregate(
            count=Count("pk"), oldest=Min("created_at"))
    except Exception:  # a scrape answers even with the database down (the families then read NaN)
        logger.warning("metrics: open credit holds unreadable", exc_info=True)
        return float("nan"), float("nan")
    oldest = found["oldest"]
    return float(found["count"]), max((timezone.now() - oldest).total_seconds(), 0.0) if oldest else 0.0


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


def worker_metrics_serve(**kwargs) -> None:
    """The worker's processes' samples at http://<host>:METRICS_WORKER_PORT/metrics (worker_ready: its main
    process, in a thread). Not the scrape-time gauges: the web server's /metrics has those, once."""
    port = settings.METRICS_WORKER_PORT
    if not port:
        return
    from http.server import ThreadingHTTPServer

    try:
        server = ThreadingHTTPServer(("0.0.0.0", port), _WorkerMetricsHandler)  # noqa: S104 (a container's port)
    except OSError:
        logger.error("metrics: the worker's /metrics cannot listen on port %s", port, exc_info=True)
        return
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
    logger.info("metrics: the worker's /metrics listens on port %s", port)


class _WorkerMetricsHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        allowed = _allowed(authorization=self.headers.get("Authorization", ""), address=self.client_address[0],
                           forwarded="X-Forwarded-For" in self.headers)
        if self.path.partition("?")[0] != "/metrics" or not allowed:
            self._answer(404, b"Not Found", "text/plain")
            return
        self._answer(200, generate_latest(processes_registry()), CONTENT_TYPE_LATEST)

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # scrapes every few seconds: not worth a log line each
        pass
