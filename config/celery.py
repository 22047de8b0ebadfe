"""Celery app. tenant-schemas-celery's app makes every task run in its caller's schema."""

import os

from tenant_schemas_celery.app import CeleryApp

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

app = CeleryApp("prumo")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
