"""Celery app. tenant-schemas-celery's app makes every task run in its caller's schema, and
`config.celery_tasks.SchemaCheckedTask` makes sure it never runs anywhere else."""

import os

from tenant_schemas_celery.app import CeleryApp

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

app = CeleryApp("prumo", task_cls="config.celery_tasks:SchemaCheckedTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _observability_connect() -> None:
    """Metrics (prumo_celery_tasks_total, prumo_celery_task_duration_seconds, the worker's own /metrics with
    METRICS_WORKER_PORT: config.metrics), the request context carried into tasks (core.observability), and
    Django's LOGGING in the worker instead of Celery's own (so its lines carry `req=`/`org=`/`user=`, JSON in
    production)."""
    from celery import signals

    from core import metrics, observability

    from .metrics import worker_metrics_serve

    signals.task_prerun.connect(metrics.task_prerun, weak=False)
    signals.task_postrun.connect(metrics.task_postrun, weak=False)
    signals.worker_process_shutdown.connect(metrics.worker_process_shutdown, weak=False)
    signals.worker_init.connect(metrics.worker_init, weak=False)
    signals.worker_ready.connect(worker_metrics_serve, weak=False)
    signals.before_task_publish.connect(observability.task_context_publish, weak=False)
    signals.task_prerun.connect(observability.task_context_restore, weak=False)
    signals.setup_logging.connect(_logging_from_django, weak=False)
    signals.worker_init.connect(_tracing_worker_init, weak=False)
    signals.worker_process_init.connect(_tracing_process_init, weak=False)


def _tracing_worker_init(sender=None, **kwargs) -> None:
    """Tracing (core.tracing) in a worker whose tasks run in its own process (threads, solo); a prefork pool's
    children start theirs after the fork (worker_process_init), where the exporter's thread must live."""
    from celery import concurrency

    if not concurrency.get_implementation(sender.pool_cls).__module__.endswith(".prefork"):
        _tracing_process_init()


def _tracing_process_init(**kwargs) -> None:
    from core.tracing import tracing_init

    tracing_init(service="prumo-worker", django=False)


def _logging_from_django(**kwargs) -> None:
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)


_observability_connect()
