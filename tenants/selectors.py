from __future__ import annotations

from django.db.models import QuerySet

from accounts.mfa import mfa_enabled_subquery
from accounts.models import User

from .audit.models import AuditEvent
from .models import Invitation, Membership, Organization


def organization_list_for_user(*, user: User) -> QuerySet[Membership]:
    return Membership.objects.filter(user=user).select_related("organization").order_by("organization__name")


def membership_for(*, user: User, organization: Organization) -> Membership | None:
    if not user.is_authenticated:
        return None
    memberships = Membership.objects.filter(user=user, organization=organization)
    if organization.require_mfa:
        # Read with the membership, so the MFA requirement costs no query of its own.
        memberships = memberships.annotate(user_mfa_enabled=mfa_enabled_subquery())
    return memberships.first()


def member_list(*, organization: Organization) -> QuerySet[Membership]:
    return Membership.objects.filter(organization=organization).select_related("user").order_by("created_at")


def audit_recent_list(*, limit: int = 8) -> QuerySet[AuditEvent]:
    """The latest audit events of the current organization's schema."""
    return AuditEvent.objects.all()[:limit]


def invitation_pending_list(*, organization: Organization) -> QuerySet[Invitation]:
    return Invitation.objects.filter(organization=organization, status=Invitation.Status.PENDING)


def organization_for_request(request) -> Organization | None:
    """dj-stripe's subscriber callback: the organization the request is scoped to."""
    return getattr(request, "tenant", None) if getattr(request, "membership", None) else None
