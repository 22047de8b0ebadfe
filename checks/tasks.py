"""Checks' Celery tasks: thin, idempotent, each in its organization's schema (tenant-schemas-celery).

Beat tasks run in `public` and fan out one task per organization, queued inside its schema.
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.db import OperationalError
from django.template.loader import render_to_string
from django.utils import translation

from tenants.audit.services import Actor, audit_record
from tenants.models import Membership, Role
from tenants.tasks import task_per_organization

from .bulk import batch_start
from .models import Alert, Check
from .services import check_enqueue, check_run, checks_reap, current_organization, monitoring_run, reports_purge


@shared_task(bind=True, acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5,
             ignore_result=True)
def check_run_task(self, check_id: int) -> str:
    """Run one check; throttled or failing lookups queue it again for later (idempotent per check).

    Run eagerly (in-process tests), a check that must wait stays pending instead: an eager
    countdown would not wait, and the maintenance task requeues pending checks anyway."""
    outcome = check_run(check_id)
    if outcome.retry_in is not None and not self.request.is_eager:
        check_enqueue(Check(pk=check_id), countdown=outcome.retry_in)
    return outcome.status


@shared_task(ignore_result=True)
def monitoring_fanout() -> int:
    """Beat (hourly): each organization queues checks of its monitored targets that are due."""
    return task_per_organization(monitoring_org_task)


@shared_task(acks_late=True, ignore_result=True)
def monitoring_org_task() -> int:
    return monitoring_run(organization=current_organization())


@shared_task(ignore_result=True)
def checks_maintenance_fanout() -> int:
    """Beat (daily): each organization purges reports past its retention and requeues stuck checks."""
    return task_per_organization(checks_maintenance_org_task)


@shared_task(acks_late=True, ignore_result=True)
def checks_maintenance_org_task() -> int:
    purged = reports_purge()
    checks_reap()
    if purged:
        # What went and how many, never whose: the reports held the personal data.
        audit_record(organization=current_organization(), actor=Actor.system("retention"),
                     action="checks.reports_purged", after={"reports": purged})
    return purged


@shared_task(acks_late=True, max_retries=5, retry_backoff=True, ignore_result=True)
def alert_email_task(alert_id: int) -> int:
    """Email a monitoring alert to the organization's owners and admins, each in their language."""
    alert = Alert.objects.select_related("target", "report").filter(pk=alert_id).first()
    if alert is None:
        return 0
    organization = current_organization()
    recipients = (Membership.objects.filter(organization_id=organization.pk, role__in=[Role.OWNER, Role.ADMIN])
                  .select_related("user"))
    sent = 0
    for membership in recipients:
        user = membership.user
        with translation.override(getattr(user, "language", "") or "en"):
            context = {"alert": alert, "target": alert.target, "organization": organization,
                       "kinds": [Alert.Kind(kind).label for kind in alert.kinds],
                       "url": f"{settings.SITE_URL}/o/{organization.slug}/checks/targets/{alert.target_id}/"}
            subject = render_to_string("checks/email/alert_subject.txt", context).strip()
            body = render_to_string("checks/email/alert_message.txt", context)
        send_mail(subject, body, None, [user.email])
        sent += 1
    return sent


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5, ignore_result=True)
def batch_start_task(batch_id: int) -> bool:
    """Request the next chunk of a bulk batch's checks, then queue itself for the rest (idempotent: a
    retry skips the CNPJs already requested)."""
    more = batch_start(batch_id=batch_id)
    if more:
        batch_start_task.delay(batch_id)
    return more
