"""Celery app. tenant-schemas-celery's app makes every task run in its caller's schema, and
`config.celery_tasks.SchemaCheckedTask` makes sure it never runs anywhere else."""

import os

from tenant_schemas_celery.app import CeleryApp

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

app = CeleryApp("prumo", task_cls="config.celery_tasks:SchemaCheckedTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
