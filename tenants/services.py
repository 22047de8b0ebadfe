"""Writes for organizations, memberships and invitations. Each change is audited."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify
from django.utils.translation import gettext as _

from accounts.mfa import user_mfa_enabled
from accounts.models import User
from billing.services import credits_grant_monthly
from core.events import event_emit

from .api_keys import KEY_HOLDER_ROLES, api_keys_revoke_held_by
from .audit.services import Actor, audit_record
from .models import Invitation, Membership, Organization, Role, invitation_token_hash
from .provisioning import schema_provision
from .selectors import seat_usage

# Lowercase letters and digits in hyphen-separated words: URL- and hostname-safe, and
# maps one-to-one onto a schema name (no `a_b` beside `a-b`).
SLUG_PATTERN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
RESERVED_SLUGS = {"new", "admin", "api", "v1", "public", "static", "media", "www", "o", "orgs"}
INVITATION_TTL = timedelta(days=7)


def slug_suggest(name: str) -> str:
    """A free slug derived from the name: `acme`, then `acme-2`, `acme-3`..."""
    base = (slugify(name)[:40].strip("-") or "org")
    if base in RESERVED_SLUGS:
        base = f"{base}-org"
    candidate, n = base, 1
    while Organization.objects.filter(slug=candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def schema_name_for(slug: str) -> str:
    # Schema names use underscores; hostnames and URLs keep the hyphenated slug.
    return "org_" + slug.replace("-", "_")


def _organization_create_limit(user: User) -> None:
    """Refuse a user's organization past ORGANIZATIONS_PER_USER_PER_DAY (each one comes with free credits)."""
    limit = settings.ORGANIZATIONS_PER_USER_PER_DAY
    # Counted under the user's row lock: two simultaneous requests cannot both take the last one.
    User.objects.select_for_update().filter(pk=user.pk).first()
    since = timezone.now() - timedelta(days=1)
    if Organization.objects.filter(created_by=user, created_at__gte=since).count() >= limit:
        raise ValidationError(
            _("You can create up to %(limit)s organizations a day. Try again tomorrow, or ask to join an "
              "existing organization.") % {"limit": limit}, code="organization_limit")


@transaction.atomic
def organization_create(*, user: User, name: str, slug: str = "", actor: Actor | None = None) -> Organization:
    """Create the organization, its schema and the owner's membership, all or nothing.

    People (`actor` a user, the default) are limited per day; system actors (seeding, staff scripts) are not.
    """
    name = name.strip()
    if not name:
        raise ValidationError({"name": _("Give your organization a name.")})
    slug = slug.strip().lower() or slug_suggest(name)
    if not SLUG_PATTERN.fullmatch(slug) or len(slug) > 50:
        raise ValidationError({"slug": _("Use lowercase letters, numbers and single hyphens (up to 50).")})
    # Reserved or in use: one answer, so the form tells nothing more than "taken".
    if slug in RESERVED_SLUGS or Organization.objects.filter(slug=slug).exists():
        raise ValidationError({"slug": _("This address is taken. Choose another.")})
    if actor is None or actor.type == "user":
        _organization_create_limit(user)
    try:
        with transaction.atomic():
            org = Organization.objects.create(
                name=name, slug=slug, schema_name=schema_name_for(slug), created_by=user
            )
    except IntegrityError as exc:
        raise ValidationError({"slug": _("This address is taken. Choose another.")}) from exc
    schema_provision(org.schema_name)
    membership = Membership.objects.create(user=user, organization=org, role=Role.OWNER)
    credits_grant_monthly(org)  # a new organization starts on Free with this month's credits
    actor = actor or Actor(type="user", id=str(user.pk), label=user.email)
    audit_record(organization=org, actor=actor, action="organization.created", target=org,
                 after={"name": org.name, "slug": org.slug})
    audit_record(organization=org, actor=actor, action="membership.created", target=membership,
                 after={"user": user.email, "role": membership.role})
    return org


@transaction.atomic
def organization_update(*, organization: Organization, actor: Actor, name: str) -> Organization:
    before = {"name": organization.name}
    organization.name = name.strip()
    organization.save(update_fields=["name"])
    audit_record(organization=organization, actor=actor, action="organization.updated", target=organization,
                 before=before, after={"name": organization.name})
    return organization


def organization_mfa_require(*, organization: Organization, actor: Actor, user: User, required: bool) -> Organization:
    """Owners turn the organization's MFA requirement on or off; on only once they have a second factor themselves."""
    if required == organization.require_mfa:
        return organization
    if required and not user_mfa_enabled(user=user):
        raise ValidationError({"require_mfa": _("Activate two-factor authentication for your own account before "
                                                "requiring it from everyone.")})
    before = {"require_mfa": organization.require_mfa}
    organization.require_mfa = required
    organization.save(update_fields=["require_mfa"])
    audit_record(organization=organization, actor=actor, action="organization.mfa_requirement_changed",
                 target=organization, before=before, after={"require_mfa": required})
    return organization


def _owners_locked(organization: Organization) -> list[Membership]:
    return list(
        Membership.objects.select_for_update().filter(organization=organization, role=Role.OWNER).order_by("pk")
    )


@transaction.atomic
def membership_role_change(*, membership: Membership, role: str, actor: Actor) -> Membership:
    if role not in Role.values:
        raise ValidationError({"role": _("Unknown role.")})
    owners = _owners_locked(membership.organization)
    membership.refresh_from_db()
    if membership.role == Role.OWNER and role != Role.OWNER and len(owners) <= 1:
        raise ValidationError(_("An organization needs at least one owner. Make someone else owner first."))
    before = {"role": membership.role}
    membership.role = role
    membership.save(update_fields=["role"])
    audit_record(organization=membership.organization, actor=actor, action="membership.role_changed",
                 target=membership, before=before, after={"role": role})
    if role not in KEY_HOLDER_ROLES:  # below admin: the keys they made stop with their right to hold them
        api_keys_revoke_held_by(user=membership.user, organization=membership.organization, actor=actor,
                                reason="membership.demoted")
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, actor: Actor, action: str = "membership.removed") -> None:
    owners = _owners_locked(membership.organization)
    membership.refresh_from_db()
    if membership.role == Role.OWNER and len(owners) <= 1:
        raise ValidationError(_("The last owner cannot leave or be removed. Make someone else owner first."))
    audit_record(organization=membership.organization, actor=actor, action=action, target=membership,
                 before={"user": membership.user.email, "role": membership.role})
    event_emit(organization=membership.organization, type="member.removed", data={
        **_member_event(membership), "reason": action})
    api_keys_revoke_held_by(user=membership.user, organization=membership.organization, actor=actor, reason=action)
    membership.delete()


@dataclass(frozen=True)
class InvitationSent:
    invitation: Invitation
    token: str


def _organization_locked(organization: Organization) -> None:
    # Seat and invitation decisions for one organization are taken one at a time.
    Organization.objects.select_for_update().filter(pk=organization.pk).first()


SEATS_FULL = "seats_full"  # the error code of every refusal for want of a seat
SEAT_REFUSAL_NOTICE_SECONDS = 24 * 3600  # admins hear about one invitation's refused acceptance once a day


def _seats_full_error(organization: Organization, seats: int) -> ValidationError:
    return ValidationError(
        _("%(name)s uses all %(seats)s seats of its plan (pending invitations count). An owner or admin can "
          "upgrade the plan on the Billing page.") % {"name": organization.name, "seats": seats},
        code=SEATS_FULL)


@transaction.atomic
def invitation_create(*, organization: Organization, email: str, role: str, invited_by: User,
                      actor: Actor) -> InvitationSent:
    """Invite `email`, within the plan's seats (members + pending invitations) and the hourly invitation limit."""
    email = email.strip().lower()
    if role not in Role.values:
        raise ValidationError({"role": _("Unknown role.")})
    if Membership.objects.filter(organization=organization, user__email__iexact=email).exists():
        raise ValidationError({"email": _("%(email)s is already a member.") % {"email": email}})
    _organization_locked(organization)
    per_hour = settings.INVITATIONS_PER_ORGANIZATION_PER_HOUR
    if Invitation.objects.filter(organization=organization,
                                 created_at__gte=timezone.now() - timedelta(hours=1)).count() >= per_hour:
        raise ValidationError(_("This organization sent %(limit)s invitations in the last hour. Try again later.")
                              % {"limit": per_hour}, code="invitation_limit")
    # A new invitation to the same address replaces its pending one, so that one's seat is not counted.
    usage = seat_usage(organization=organization, excluding_email=email)
    if usage.full:
        raise _seats_full_error(organization, usage.limit)
    # A new invitation to the same address replaces the pending one (and its link).
    Invitation.objects.filter(organization=organization, email=email, status=Invitation.Status.PENDING).update(
        status=Invitation.Status.REVOKED
    )
    token = Invitation.new_token()
    invitation = Invitation.objects.create(
        organization=organization, email=email, role=role, invited_by=invited_by,
        token_hash=invitation_token_hash(token), expires_at=timezone.now() + INVITATION_TTL,
    )
    audit_record(organization=organization, actor=actor, action="invitation.created", target=invitation,
                 after={"email": email, "role": role})
    from .tasks import invitation_send

    schema = organization.schema_name
    transaction.on_commit(
        lambda: invitation_send.apply_async(args=[invitation.pk, token], headers={"_schema_name": schema})
    )
    return InvitationSent(invitation=invitation, token=token)


@transaction.atomic
def invitation_revoke(*, invitation: Invitation, actor: Actor) -> None:
    invitation.status = Invitation.Status.REVOKED
    invitation.save(update_fields=["status"])
    audit_record(organization=invitation.organization, actor=actor, action="invitation.revoked",
                 target=invitation, before={"email": invitation.email})


def invitation_accept(*, token: str, user: User, actor: Actor) -> Membership:
    """Join the organization of the invitation `token` was sent with, if it has a free seat.

    Refused for want of a seat (the plan may have shrunk since the invitation was sent): the invitee is told
    why, and the organization's owners and admins are told by e-mail and in the audit log."""
    try:
        return _invitation_accept(token=token, user=user, actor=actor)
    except ValidationError as error:
        if getattr(error, "code", None) == SEATS_FULL:
            invitation_seat_refusal_record(token=token, actor=actor)
        raise


@transaction.atomic
def _invitation_accept(*, token: str, user: User, actor: Actor) -> Membership:
    invitation = (
        Invitation.objects.select_for_update().select_related("organization")
        .filter(token_hash=invitation_token_hash(token)).first()
    )
    if invitation is None or invitation.status != Invitation.Status.PENDING or invitation.is_expired:
        raise ValidationError(_("This invitation is no longer valid. Ask for a new one."))
    if invitation.email.lower() != user.email.lower():
        raise ValidationError(
            _("This invitation was sent to %(email)s. Sign in with that address to accept it.")
            % {"email": invitation.email}
        )
    organization = invitation.organization
    _organization_locked(organization)
    already_member = Membership.objects.filter(user=user, organization=organization).exists()
    if not already_member and seat_usage(organization=organization, pending=False).full:
        raise ValidationError(
            _("%(name)s has no free seat on its plan. Ask one of its owners or admins to upgrade the plan (on "
              "its Billing page) or to free a seat, then accept again.") % {"name": organization.name},
            code=SEATS_FULL)
    membership, created = Membership.objects.get_or_create(
        user=user, organization=organization, defaults={"role": invitation.role}
    )
    invitation.status = Invitation.Status.ACCEPTED
    invitation.accepted_at = timezone.now()
    invitation.save(update_fields=["status", "accepted_at"])
    audit_record(organization=invitation.organization, actor=actor, action="invitation.accepted",
                 target=invitation, after={"user": user.email, "role": membership.role})
    if created:
        event_emit(organization=organization, type="member.added", data=_member_event(membership))
    return membership


def invitation_seat_refusal_record(*, token: str, actor: Actor) -> None:
    """Audit an acceptance refused for want of a seat and e-mail the owners and admins (once a day per invitation:
    an invitee pressing "Accept" again sends no more)."""
    from django.core.cache import cache

    invitation = (Invitation.objects.select_related("organization")
                  .filter(token_hash=invitation_token_hash(token), status=Invitation.Status.PENDING).first())
    if invitation is None or not cache.add(f"seat-refusal:{invitation.token_hash}", 1, SEAT_REFUSAL_NOTICE_SECONDS):
        return
    organization = invitation.organization
    usage = seat_usage(organization=organization, pending=False)
    audit_record(organization=organization, actor=actor, action="invitation.refused_no_seat", target=invitation,
                 after={"email": invitation.email, "members": usage.members, "seats": usage.limit})
    from .tasks import seat_refusal_send

    transaction.on_commit(lambda: seat_refusal_send.delay(invitation.pk))


def _member_event(membership: Membership) -> dict:
    """What integrators are told about a member (member.added, member.removed)."""
    return {"membership_id": membership.pk, "user_id": membership.user_id, "email": membership.user.email,
            "role": membership.role}


def invitation_url(token: str) -> str:
    from django.urls import reverse

    return settings.SITE_URL.rstrip("/") + reverse("invitation_accept", args=[token])
