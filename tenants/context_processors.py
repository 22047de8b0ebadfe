from __future__ import annotations

from .guards import WRITE_ROLE, can_write, role_refusal
from .selectors import organization_list_for_user


def organizations(request):
    """The header's organization switcher: the user's organizations, lazily, one query."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    membership = getattr(request, "membership", None)
    read_only = membership is not None and not can_write(membership)
    return {
        "current_organization": getattr(request, "tenant", None),
        "current_membership": membership,
        "my_memberships": organization_list_for_user(user=user),
        # Viewers are not offered write controls the guard would refuse; the note says why.
        "org_read_only": read_only,
        "org_read_only_note": role_refusal(membership, WRITE_ROLE) if read_only else "",
    }
