from __future__ import annotations

from .selectors import organization_list_for_user


def organizations(request):
    """The header's organization switcher: the user's organizations, lazily, one query."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {
        "current_organization": getattr(request, "tenant", None),
        "current_membership": getattr(request, "membership", None),
        "my_memberships": organization_list_for_user(user=user),
    }
