"""Celery app. tenant-schemas-celery's app makes every task run in its caller's schema, and
`config.celery_tasks.SchemaCheckedTask` makes sure it never runs anywhere else."""

import os

from tenant_schemas_celery.app import CeleryApp

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

app = CeleryApp("prumo", task_cls="config.celery_tasks:SchemaCheckedTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _metrics_connect() -> None:
    """prumo_celery_tasks_total and prumo_celery_task_duration_seconds (config.metrics)."""
    from celery import signals

    from config import metrics

    signals.task_prerun.connect(metrics.task_prerun, weak=False)
    signals.task_postrun.connect(metrics.task_postrun, weak=False)
    signals.worker_process_shutdown.connect(metrics.worker_process_shutdown, weak=False)


_metrics_connect()
