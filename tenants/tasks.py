from __future__ import annotations

import re

from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.db import connection
from django.template.loader import render_to_string
from django.utils import translation
from django_tenants.utils import schema_context

from .audit.services import Actor, audit_record
from .models import Invitation, Organization
from .services import invitation_url

EMAIL_NAME_MAX = 60
# A dot between two word characters (`evil.example`) and a scheme separator make mail clients draw a link.
_LINKABLE_DOT = re.compile(r"(?<=\w)\.(?=\w)")


def task_per_organization(task) -> int:
    """Beat fan-out: queue `task` once in every organization's schema; returns how many were queued."""
    count = 0
    for schema in Organization.objects.exclude(schema_name="public").values_list("schema_name", flat=True):
        with schema_context(schema):
            task.delay()
        count += 1
    return count


def email_plain_name(name: str, *, limit: int = EMAIL_NAME_MAX) -> str:
    """An organization name as e-mail text nobody's mail client turns into a link: one line,
    URL-like parts defanged (`evil[.]example`, `http[:]//`), at most `limit` characters."""
    text = " ".join(name.split())
    text = _LINKABLE_DOT.sub("[.]", text.replace("://", "[:]//"))
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


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
        context = {"invitation": invitation, "url": invitation_url(token),
                   "organization_name": email_plain_name(organization.name)}
        subject = render_to_string("tenants/email/invitation_subject.txt", context).strip()
        body = render_to_string("tenants/email/invitation_message.txt", context)
    send_mail(subject, body, None, [invitation.email])
    audit_record(organization=organization, actor=Actor.system("celery"), action="invitation.sent",
                 target=invitation, after={"email": invitation.email})
    return connection.schema_name


@shared_task(acks_late=True, max_retries=5, retry_backoff=True)
def seat_refusal_send(invitation_id: int) -> int:
    """E-mail each owner and admin, in their language, that an invitee could not join for want of a seat.
    Returns how many were written to."""
    from django.urls import reverse

    from .models import Membership, Role

    invitation = Invitation.objects.select_related("organization").get(pk=invitation_id)
    organization = invitation.organization
    admins = (Membership.objects.filter(organization=organization, role__in=[Role.OWNER, Role.ADMIN])
              .select_related("user").order_by("pk"))
    site = settings.SITE_URL.rstrip("/")
    for membership in admins:
        with translation.override(membership.user.language or "en"):
            context = {"invitation": invitation, "organization_name": email_plain_name(organization.name),
                       "billing_url": site + reverse("billing_home", args=[organization.slug]),
                       "members_url": site + reverse("members", args=[organization.slug])}
            subject = render_to_string("tenants/email/seat_refusal_subject.txt", context).strip()
            body = render_to_string("tenants/email/seat_refusal_message.txt", context)
        send_mail(subject, body, None, [membership.user.email])
    return len(admins)


@shared_task(acks_late=True, max_retries=3, retry_backoff=True)
def api_key_used_record(key_id: int, ip_address: str = "", user_agent: str = "", request_id: str = "") -> bool:
    """Audit a key's first use of the UTC day (tenants.audit.records) in its organization's schema."""
    from .audit.records import api_key_use_record

    return api_key_use_record(key_id=key_id, ip_address=ip_address, user_agent=user_agent, request_id=request_id)
