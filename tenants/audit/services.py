from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction
from django.utils import timezone
from django_tenants.utils import schema_context

from .models import AuditEvent

logger = logging.getLogger(__name__)

# The transaction-local setting under which the database lets audit rows be deleted (migration 0002).
PURGE_SETTING = "prumo.audit_purge"
PURGE_BATCH = 1000  # rows per DELETE
PURGE_MAX_PER_RUN = 50_000  # rows per transaction; the task runs again for the rest

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
    """Append an audit event to the organization's schema, inside the caller's transaction.

    One INSERT: the database chains it (prev_hash, hash) under a per-schema lock held until the
    caller's transaction ends, so keep transactions that write audit events short."""
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


@dataclass(frozen=True)
class Purge:
    deleted: int
    cutoff: datetime
    more: bool  # events past retention remain: this run stopped at its limit


def audit_purge(*, organization: Organization, now: datetime | None = None, batch_size: int = PURGE_BATCH,
                limit: int = PURGE_MAX_PER_RUN) -> Purge:
    """Delete the organization's events older than its plan's `audit_retention_days`, oldest first, and
    record how many went in an `audit.purged` event (counts, the cutoff and the chain's new anchor: no
    personal data). Idempotent: a second run finds nothing to delete and records nothing.

    Only a prefix of the chain (in id order) goes: everything before the oldest event inside retention.
    The last deleted event's hash is the `anchor` that the oldest kept event's prev_hash must equal
    (`integrity.audit_chain_verify`)."""
    from billing.selectors import entitlements_for

    days = entitlements_for(organization).audit_retention_days
    cutoff = (now or timezone.now()) - timedelta(days=days)
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    deleted, anchor, more = 0, "", False
    with transaction.atomic(), schema_context(organization.schema_name), connection.cursor() as cursor:
        cursor.execute(f"SELECT coalesce((SELECT min(id) FROM {table} WHERE created_at >= %s), "
                       f"(SELECT max(id) + 1 FROM {table}), 0)", [cutoff])
        first_kept = cursor.fetchone()[0]
        # Transaction-local, and undone with a rolled-back savepoint; switched off again once done.
        cursor.execute("SELECT set_config(%s, 'on', true)", [PURGE_SETTING])
        while deleted < limit:
            cursor.execute(
                f"WITH batch AS (SELECT id FROM {table} WHERE id < %s ORDER BY id LIMIT %s) "
                f"DELETE FROM {table} AS event USING batch WHERE event.id = batch.id RETURNING event.id, event.hash",
                [first_kept, min(batch_size, limit - deleted)],
            )
            rows = cursor.fetchall()
            if not rows:
                break
            deleted += len(rows)
            anchor = max(rows)[1]
        cursor.execute("SELECT set_config(%s, '', true)", [PURGE_SETTING])
        if deleted:
            cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE id < %s)", [first_kept])
            more = cursor.fetchone()[0]
            audit_record(organization=organization, actor=Actor.system("retention"), action="audit.purged",
                         after={"events": deleted, "cutoff": cutoff.isoformat(), "retention_days": days,
                                "anchor": anchor})
    return Purge(deleted=deleted, cutoff=cutoff, more=more)
