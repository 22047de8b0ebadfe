"""Audit events that are not one service's side effect: a person's sign-ins and security changes (recorded
in every organization they belong to), an API key's first use of the day, exports, and staff edits in
the Django admin.

API key use adds no round trip to a call on its way to the answer: the key middleware (tenants.api_keys)
and /v1's completions (chat.gateway's rate-limit pipeline) put a `SET NX` on `apikey:day:<UTC date>:<key
id>` into a Redis round trip they already make; `GET /v1/models`, which has no such round trip, sets it
after the answer is sent. Only the first call of the day queues a Celery task (`api_key_used_record`)
that writes the event; no request writes to the database for it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .services import Actor, audit_record

if TYPE_CHECKING:
    from django.http import HttpRequest

    from tenants.models import Organization

logger = logging.getLogger(__name__)

DAY_MARK_SECONDS = 2 * 86_400  # past the end of its UTC day wherever the clock is


def _user_actor(user, request: HttpRequest | None) -> Actor:
    """The person, with the request's address and browser when there is one."""
    if request is None:
        return Actor(type="user", id=str(user.pk), label=user.email)
    from_request = Actor.from_request(request)
    return Actor(type="user", id=str(user.pk), label=user.email, ip_address=from_request.ip_address,
                 user_agent=from_request.user_agent, request_id=from_request.request_id)


def user_event_record(*, user, action: str, request: HttpRequest | None = None, after: dict | None = None) -> int:
    """Record `action` about `user` in every organization they are a member of; how many organizations."""
    from tenants.models import Membership

    if user is None or user.pk is None:
        return 0
    actor = _user_actor(user, request)
    organizations = [m.organization for m in Membership.objects.filter(user_id=user.pk).select_related("organization")]
    for organization in organizations:
        audit_record(organization=organization, actor=actor, action=action, target=user,
                     target_label=user.email, after=after)
    return len(organizations)


def login_failed_record(*, email: str, request: HttpRequest | None, reason: str = "credentials") -> int:
    """A failed sign-in to an existing account (an unknown address records nothing); never the password."""
    from accounts.models import User

    user = User.objects.filter(email__iexact=(email or "").strip()).first() if email else None
    if user is None:
        return 0
    return user_event_record(user=user, action="user.login_failed", request=request, after={"reason": reason})


def export_record(*, organization: Organization, actor: Actor, action: str, what: dict) -> None:
    """An export (`what`: its format, filters or object) as its own audit event."""
    audit_record(organization=organization, actor=actor, action=action, after=what)


# API key use: the first call per key per UTC day


def api_key_day_mark(key_id: int, *, now: datetime | None = None) -> str:
    """The Redis key that marks a key's use on the current UTC day (set only once the key is known valid)."""
    day = (now or datetime.now(UTC)).astimezone(UTC).date()
    return f"apikey:day:{day:%Y%m%d}:{key_id}"


def api_key_use_enqueue(*, key_id: int, ip_address: str | None, user_agent: str = "", request_id: str = "") -> None:
    """Hand a key's first use of the day to the worker (never fails the caller's request)."""
    from tenants.tasks import api_key_used_record

    try:
        api_key_used_record.delay(key_id, ip_address or "", user_agent[:512], request_id[:128])
    except Exception:
        logger.exception("could not queue an API key's first use of the day")


def api_key_use_record(*, key_id: int, ip_address: str = "", user_agent: str = "", request_id: str = "") -> bool:
    """Record `api_key.used` in the key's organization; False when the key is gone."""
    from tenants.models import ApiKey

    key = ApiKey.objects.select_related("organization").filter(pk=key_id).first()
    if key is None:
        return False
    actor = Actor(type="api_key", id=str(key.pk), label=f"API key {key.pk}", ip_address=ip_address or None,
                  user_agent=user_agent, request_id=request_id)
    audit_record(organization=key.organization, actor=actor, action="api_key.used", target=key,
                 after={"day": f"{datetime.now(UTC):%Y-%m-%d}", "prefix": key.display_prefix})
    return True


# Staff in the Django admin


def staff_action_record(*, request: HttpRequest, organization: Organization, action: str, obj,
                        message: str = "") -> None:
    """A staff member's add, change or delete of `obj` (a record of `organization`) in the admin."""
    user = request.user
    actor = Actor.from_request(request)
    actor = Actor(type="user", id=str(user.pk), label=f"{user.email} (staff)", ip_address=actor.ip_address,
                  user_agent=actor.user_agent, request_id=actor.request_id)
    audit_record(organization=organization, actor=actor, action=action, target=obj,
                 after={"staff": True, "model": obj._meta.label_lower, "change": message})
