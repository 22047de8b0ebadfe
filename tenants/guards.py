"""The guard every view under /o/<slug>/ carries (an architecture test enforces it)."""

from __future__ import annotations

import inspect
from functools import wraps

from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import Http404


def org_member_required(view=None, *, role: str | None = None):
    """Only members of the organization in the URL; `role` is the least role allowed.

    The view receives the request (with `request.tenant` and `request.membership`) but
    not the `org_slug` URL argument.
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
            raise PermissionDenied

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
        return wrapper

    return decorator(view) if view is not None else decorator
