from __future__ import annotations

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class AuditEvent(models.Model):
    """Who did what to what, in this organization. Append-only; in the tenant schema.

    Actors are referenced by id and label (no foreign key into `public`), so a deleted
    user or key never rewrites or cascades into history.

    Tamper evidence (migration 0002, PL/pgSQL in the schema): the database refuses UPDATE,
    DELETE and TRUNCATE on this table unless the transaction set `prumo.audit_purge = 'on'`,
    which only the retention purge (`services.audit_purge`) does, and then only DELETE passes.
    Each row is chained to the one before it, in id order, by a BEFORE INSERT trigger that
    holds a per-schema advisory lock until commit (so concurrent writers never fork the chain):
      prev_hash = the hash of the row with the highest id ('' for the first row ever),
      hash      = sha256 hex of the UTF-8 text of `audit_event_canonical(row)`: the jsonb object
                  {id, created_at (UTC, "YYYY-MM-DDTHH:MI:SS.ffffffZ"), actor_type, actor_id,
                  actor_label, action, target_type, target_id, target_label, ip_address (host
                  text or null), user_agent, request_id, before, after, prev_hash}, as PostgreSQL
                  prints jsonb (keys sorted, one canonical spacing).
    Whatever a writer puts in `prev_hash`/`hash` is replaced; both come back on insert.
    `manage.py audit_verify` recomputes every hash and link (`integrity.audit_chain_verify`).
    A purge deletes a prefix of the chain and records the last deleted hash as `anchor` in its
    `audit.purged` event: the oldest kept row's prev_hash must be '' or that anchor.
    """

    class ActorType(models.TextChoices):
        USER = "user", _("User")
        API_KEY = "api_key", _("API key")
        SYSTEM = "system", _("System")

    actor_type = models.CharField(max_length=10, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True)
    actor_label = models.CharField(max_length=255, blank=True)
    action = models.CharField(max_length=100, db_index=True)
    target_type = models.CharField(max_length=100, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=255, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Set by the database (see above); db_default makes Django read them back on insert.
    prev_hash = models.CharField(max_length=64, db_default="", editable=False)
    hash = models.CharField(max_length=64, db_default="", editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["target_type", "target_id"], name="audit_target_idx")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor_label} {self.action} {self.target_label}"
