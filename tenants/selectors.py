from __future__ import annotations

from dataclasses import dataclass

from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from accounts.mfa import mfa_enabled_subquery
from accounts.models import User

from .audit.models import AuditEvent
from .models import ApiKey, Invitation, Membership, Organization


def organization_list_for_user(*, user: User) -> QuerySet[Membership]:
    return Membership.objects.filter(user=user).select_related("organization").order_by("organization__name")


def membership_at(*, user: User, slug: str) -> Membership | None:
    """`user`'s membership of the organization `slug`, with the organization and whether the user has MFA (so an
    organization's MFA requirement costs no query of its own), in one query; None for anyone else."""
    if not user.is_authenticated or not slug:
        return None
    return (Membership.objects.select_related("organization").filter(user=user, organization__slug=slug)
            .annotate(user_mfa_enabled=mfa_enabled_subquery()).first())


def member_list(*, organization: Organization) -> QuerySet[Membership]:
    return Membership.objects.filter(organization=organization).select_related("user").order_by("created_at")


def audit_recent_list(*, limit: int = 8) -> QuerySet[AuditEvent]:
    """The latest audit events of the current organization's schema."""
    return AuditEvent.objects.all()[:limit]


def api_key_active_count(*, organization: Organization) -> int:
    """Keys that work: neither revoked nor expired (ApiKey.is_active, counted in the database)."""
    return (ApiKey.objects.filter(organization=organization, revoked_at__isnull=True)
            .exclude(expires_at__lte=timezone.now()).count())


def invitation_pending_list(*, organization: Organization) -> QuerySet[Invitation]:
    return Invitation.objects.filter(organization=organization, status=Invitation.Status.PENDING)


def organization_for_request(request) -> Organization | None:
    """dj-stripe's subscriber callback: the organization the request is scoped to."""
    return getattr(request, "tenant", None) if getattr(request, "membership", None) else None


@dataclass(frozen=True)
class SeatUsage:
    limit: int | None  # the plan's seats; None: unlimited
    members: int
    pending: int  # invitations not yet accepted, revoked or expired

    @property
    def used(self) -> int:
        return self.members + self.pending

    @property
    def full(self) -> bool:
        return self.limit is not None and self.used >= self.limit


def seat_usage(*, organization: Organization, pending: bool = True, excluding_email: str = "",
               entitlements=None) -> SeatUsage:
    """Seats the plan gives and those taken: members, plus pending invitations (unless `pending=False`).
    `entitlements`: the organization's, when the caller has read them already."""
    from billing.selectors import entitlements_for

    entitlements = entitlements or entitlements_for(organization)
    invitations = 0
    if pending:
        invitations = (invitation_pending_list(organization=organization).filter(expires_at__gt=timezone.now())
                       .exclude(email=excluding_email).count())
    return SeatUsage(limit=entitlements.seats,
                     members=Membership.objects.filter(organization=organization).count(), pending=invitations)


def current_organization() -> Organization:
    """The organization whose schema is active (tasks and `schema_context` only carry the schema's name)."""
    tenant = getattr(connection, "tenant", None)
    if isinstance(tenant, Organization):
        return tenant
    return Organization.objects.get(schema_name=connection.schema_name)
