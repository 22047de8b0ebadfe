"""Studio's Celery tasks: thin, idempotent, each in its organization's schema (tenant-schemas-celery)."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from tenants.tasks import task_per_organization

from .services import job_enqueue, job_run, jobs_reap


@shared_task(bind=True, acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5,
             ignore_result=True)
def job_run_task(self, job_id: int) -> str:
    """Run one job; a job that must wait (no slot free, or a retry's backoff) is queued again for then."""
    from django.db import connection

    outcome = job_run(job_id)
    if outcome.retry_in is not None and not self.request.is_eager:
        job_enqueue(job_id, schema=connection.schema_name, countdown=outcome.retry_in)
    return outcome.status


@shared_task(ignore_result=True)
def jobs_reap_fanout() -> int:
    """Beat (every minute): each organization queues again the jobs whose worker died."""
    return task_per_organization(jobs_reap_org_task)


@shared_task(acks_late=True, ignore_result=True)
def jobs_reap_org_task() -> int:
    return jobs_reap()
