from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django_tenants.utils import schema_context

from .models import AuditEvent

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from django.http import HttpRequest

    from tenants.models import Organization


@dataclass(frozen=True)
class Actor:
    type: str
    id: str = ""
    label: str = ""
    ip_address: str | None = None
    user_agent: str = ""
    request_id: str = ""

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        return cls(type=AuditEvent.ActorType.SYSTEM, label=label)

    @classmethod
    def from_request(cls, request: HttpRequest) -> Actor:
        user = getattr(request, "user", None)
        common = {
            "ip_address": client_ip(request),
            "user_agent": request.headers.get("User-Agent", "")[:512],
            "request_id": getattr(request, "id", ""),
        }
        api_key = getattr(request, "api_key", None)
        if api_key is not None:
            return cls(type=AuditEvent.ActorType.API_KEY, id=str(api_key.key_id), label=f"API key {api_key.key_id}",
                       **common)
        if user is not None and user.is_authenticated:
            return cls(type=AuditEvent.ActorType.USER, id=str(user.pk), label=user.email, **common)
        return cls(type=AuditEvent.ActorType.SYSTEM, label="anonymous", **common)


def client_ip(request: HttpRequest) -> str | None:
    """The client address, trusting exactly TRUSTED_PROXY_COUNT proxies in front of us."""
    return client_ip_from(request.META.get("HTTP_X_FORWARDED_FOR", ""), request.META.get("REMOTE_ADDR"))


def client_ip_from(forwarded: str, remote: str | None) -> str | None:
    """`client_ip` from an `X-Forwarded-For` value and the peer's address (for code outside Django)."""
    from django.conf import settings

    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if len(hops) >= proxies:
            return hops[-proxies]
    return remote or None


def audit_record(
    *,
    organization: Organization,
    actor: Actor,
    action: str,
    target: Any = None,
    target_type: str = "",
    target_id: str = "",
    target_label: str = "",
    before: dict | None = None,
    after: dict | None = None,
) -> AuditEvent:
    """Append an audit event to the organization's schema, inside the caller's transaction."""
    if target is not None:
        target_type = target_type or target._meta.label_lower
        target_id = target_id or str(target.pk)
        target_label = target_label or str(target)
    fields = {
        "actor_type": actor.type,
        "actor_id": actor.id,
        "actor_label": actor.label[:255],
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "target_label": target_label[:255],
        "ip_address": actor.ip_address,
        "user_agent": actor.user_agent,
        "request_id": actor.request_id,
        "before": before,
        "after": after,
    }
    with schema_context(organization.schema_name):
        event = AuditEvent.objects.create(**fields)
    logger.info("audit %s %s:%s by %s", action, target_type, target_id, actor.type,
                extra={"organization": organization.slug})
    return event
