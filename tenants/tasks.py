from __future__ import annotations

from celery import shared_task
from django.core.mail import send_mail
from django.db import connection
from django.template.loader import render_to_string
from django.utils import translation

from .audit.services import Actor, audit_record
from .models import Invitation
from .services import invitation_url


class WrongSchema(RuntimeError):
    """A task ran outside the schema of the organization it works for."""


@shared_task(bind=True, acks_late=True, max_retries=5, retry_backoff=True)
def invitation_send(self, invitation_id: int, token: str) -> str:
    """Email the invitation link; runs in the inviting organization's schema."""
    invitation = Invitation.objects.select_related("organization", "invited_by").get(pk=invitation_id)
    organization = invitation.organization
    if connection.schema_name != organization.schema_name:
        raise WrongSchema(f"{connection.schema_name} != {organization.schema_name}")
    if invitation.status != Invitation.Status.PENDING:
        return "skipped"
    language = invitation.invited_by.language if invitation.invited_by else "en"
    with translation.override(language):
        context = {"invitation": invitation, "url": invitation_url(token), "organization": organization}
        subject = render_to_string("tenants/email/invitation_subject.txt", context).strip()
        body = render_to_string("tenants/email/invitation_message.txt", context)
    send_mail(subject, body, None, [invitation.email])
    audit_record(organization=organization, actor=Actor.system("celery"), action="invitation.sent",
                 target=invitation, after={"email": invitation.email})
    return connection.schema_name
