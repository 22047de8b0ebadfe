"""Audit retention: a daily beat task fans out one purge per organization, each in its schema."""

from __future__ import annotations

from celery import shared_task
from django.db import connection

from tenants.models import Organization
from tenants.tasks import task_per_organization

from .services import audit_purge


@shared_task(ignore_result=True)
def audit_purge_fanout() -> int:
    """Beat (daily): each organization deletes the audit events its plan no longer keeps."""
    return task_per_organization(audit_purge_org_task)


@shared_task(acks_late=True, ignore_result=True)
def audit_purge_org_task() -> int:
    """Idempotent; a backlog larger than one run's limit queues the next run at once."""
    organization = Organization.objects.get(schema_name=connection.schema_name)
    purge = audit_purge(organization=organization)
    if purge.more:
        audit_purge_org_task.delay()
    return purge.deleted
