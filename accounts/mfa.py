"""Second factors (allauth.mfa): who has one, where one is required, and how secrets are kept.

Two rules send a signed-in person without a second factor to enrol (`MFARequiredMiddleware`):
staff opening the admin while `ADMIN_REQUIRE_MFA` is on, and members opening an organization
whose owners turned on `Organization.require_mfa`. The API answers such session calls 403
(`mfa_required`); API keys are not people and are not affected.

TOTP secrets and recovery-code seeds are stored encrypted: `accounts.adapters.MFAAdapter`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from allauth.mfa.models import Authenticator
from django.db.models import Exists, OuterRef

if TYPE_CHECKING:
    from django.http import HttpRequest

# Recovery codes alone are not a second factor: they exist only beside one of these.
MFA_FACTOR_TYPES = (Authenticator.Type.TOTP, Authenticator.Type.WEBAUTHN)


def user_mfa_enabled(*, user) -> bool:
    """Whether `user` has an activated second factor (TOTP or a security key)."""
    return bool(user.is_authenticated) and Authenticator.objects.filter(
        user_id=user.pk, type__in=MFA_FACTOR_TYPES).exists()


def mfa_enabled_subquery(user_field: str = "user") -> Exists:
    """`user_mfa_enabled` as an annotation on rows that point at a user (e.g. a membership)."""
    return Exists(Authenticator.objects.filter(user_id=OuterRef(user_field), type__in=MFA_FACTOR_TYPES))


def mfa_enabled(request: HttpRequest, *, membership=None) -> bool:
    """`user_mfa_enabled` for the signed-in user, once per request.

    Free when the membership (given, or `request.membership`) was read by `membership_for` for
    an organization that requires MFA: it carries the answer. Otherwise one query.
    """
    if not hasattr(request, "_mfa_enabled"):
        known = getattr(membership or getattr(request, "membership", None), "user_mfa_enabled", None)
        request._mfa_enabled = known if known is not None else user_mfa_enabled(user=request.user)
    return request._mfa_enabled


def organization_mfa_missing(request: HttpRequest, organization, *, membership=None) -> bool:
    """The organization requires a second factor and the signed-in user has none."""
    return bool(getattr(organization, "require_mfa", False)) and not mfa_enabled(request, membership=membership)
