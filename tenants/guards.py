"""The guard every view under /o/<slug>/ carries (an architecture test enforces it).

Roles as in the API (tenants/api_base.py): viewers read, members write, some views need an admin.
Unsafe methods (POST, PUT, PATCH, DELETE) need `WRITE_ROLE` unless a view says a viewer may
use it (`viewer_may_write=True`, e.g. leaving the organization), so a new form cannot forget it.
"""

from __future__ import annotations

import inspect
from functools import wraps

from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import Http404
from django.utils.translation import gettext as _

from .models import Membership, Role

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")  # DRF's list: what a viewer may send
WRITE_ROLE = Role.MEMBER


def can_write(membership: Membership | None) -> bool:
    """Whether this member may change anything in the organization (templates hide write controls otherwise)."""
    return membership is not None and membership.has_role(WRITE_ROLE)


def role_refusal(membership: Membership, needed: str) -> str:
    """Why a member's role refuses an action: shown on the 403 page and next to hidden write controls."""
    current = membership.get_role_display()
    if needed == WRITE_ROLE:
        return _("Your role in this organization (%(role)s) can only read. Ask an admin for the %(needed)s "
                 "role.") % {"role": current, "needed": Role(needed).label}
    return _("Your role in this organization (%(role)s) does not allow this: it needs the %(needed)s role or "
             "above. Ask an owner or admin.") % {"role": current, "needed": Role(needed).label}


def org_member_required(view=None, *, role: str | None = None, viewer_may_write: bool = False):
    """Only members of the organization in the URL; `role` is the least role allowed.

    Unsafe methods also need `WRITE_ROLE` unless `viewer_may_write`. The view receives the
    request (with `request.tenant` and `request.membership`) but not the `org_slug` URL argument.
    """

    def check(request, org_slug: str, *, check_schema: bool) -> None:
        tenant = getattr(request, "tenant", None)
        membership = getattr(request, "membership", None)
        if (
            tenant is None
            or membership is None
            or tenant.slug != org_slug
            or membership.organization_id != tenant.pk
            or (check_schema and connection.schema_name != tenant.schema_name)
        ):
            raise Http404
        if role is not None and not membership.has_role(role):
            raise PermissionDenied(role_refusal(membership, role))
        if request.method not in SAFE_METHODS and not viewer_may_write and not membership.has_role(WRITE_ROLE):
            raise PermissionDenied(role_refusal(membership, WRITE_ROLE))

    def decorator(view_func):
        if inspect.iscoroutinefunction(view_func):
            # Async views run on the event loop's thread, whose connection is not the one the
            # middleware set: they must pass `request.tenant` to their database work explicitly.
            @wraps(view_func)
            async def wrapper(request, org_slug: str, *args, **kwargs):
                check(request, org_slug, check_schema=False)
                return await view_func(request, *args, **kwargs)
        else:
            @wraps(view_func)
            def wrapper(request, org_slug: str, *args, **kwargs):
                check(request, org_slug, check_schema=True)
                return view_func(request, *args, **kwargs)

        wrapper.org_member_required = True
        wrapper.viewer_may_write = viewer_may_write
        return wrapper

    return decorator(view) if view is not None else decorator
