"""Organization API keys: create (shown once), revoke, and authenticate with a cached lookup.

Authentication is on the hot path of every API and /v1 call: the row is cached in Redis as
JSON under `apikey:<prefix>` (revocation deletes the entry), so the async /v1 gateway reads
the same entry as the sync middleware; `last_used_at` is written at most once a minute per
key (`apikey:used:<prefix>` marks the minute).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import string
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import User
from config.redis_shared import redis_client

from .audit.services import Actor, audit_record
from .models import ApiKey, Organization

KEY_PREFIX = "prm_"
LOOKUP_LENGTH = 12
SECRET_LENGTH = 32
CACHE_SECONDS = 300
LAST_USED_EVERY = 60
_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    raw: str  # shown to its creator once, never stored


@dataclass(frozen=True)
class KeyAuth:
    """What a valid key grants: enough to serve a request without touching the database."""

    key_id: int
    organization_id: int
    schema_name: str
    slug: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _hash(raw: str) -> str:
    # Keys carry 190 bits of randomness: a fast hash is enough (no password stretching needed).
    return hashlib.sha256(raw.encode()).hexdigest()


def cache_key(prefix: str) -> str:
    return f"apikey:{prefix}"


def used_key(prefix: str) -> str:
    return f"apikey:used:{prefix}"


def lookup_prefix(raw: str) -> str | None:
    """The lookup part of a well-formed key, None for anything else."""
    raw = (raw or "").strip()
    if not raw.startswith(KEY_PREFIX) or len(raw) != len(KEY_PREFIX) + LOOKUP_LENGTH + SECRET_LENGTH:
        return None
    return raw[len(KEY_PREFIX):len(KEY_PREFIX) + LOOKUP_LENGTH]


@transaction.atomic
def api_key_create(*, organization: Organization, name: str, scopes: list[str], actor: Actor,
                   user: User | None = None, expires_at: datetime | None = None) -> NewKey:
    valid = {choice for choice, _label in ApiKey.Scope.choices}
    scopes = sorted(set(scopes) & valid) or [ApiKey.Scope.READ]
    prefix = _random(LOOKUP_LENGTH)
    raw = f"{KEY_PREFIX}{prefix}{_random(SECRET_LENGTH)}"
    key = ApiKey.objects.create(organization=organization, name=name.strip()[:100], prefix=prefix,
                                key_hash=_hash(raw), scopes=scopes, expires_at=expires_at, created_by=user)
    audit_record(organization=organization, actor=actor, action="api_key.created", target=key,
                 after={"name": key.name, "scopes": scopes, "prefix": key.display_prefix,
                        "expires_at": expires_at.isoformat() if expires_at else None})
    return NewKey(key=key, raw=raw)


@transaction.atomic
def api_key_revoke(*, key: ApiKey, actor: Actor) -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit_record(organization=key.organization, actor=actor, action="api_key.revoked", target=key)
        transaction.on_commit(lambda: redis_client().delete(cache_key(key.prefix)))
    return key


def _load(prefix: str) -> dict:
    """The cached entry of `prefix` (`{}`: no such key), from the database on a miss."""
    cached = redis_client().get(cache_key(prefix))
    if cached is not None:
        return json.loads(cached)
    row = (ApiKey.objects.select_related("organization").filter(prefix=prefix)
           .values("id", "key_hash", "scopes", "expires_at", "revoked_at", "organization_id",
                   "organization__schema_name", "organization__slug").first())
    entry = {}
    if row is not None:
        entry = {"id": row["id"], "hash": row["key_hash"], "scopes": row["scopes"],
                 "expires_at": row["expires_at"].isoformat() if row["expires_at"] else None,
                 "revoked": row["revoked_at"] is not None, "organization_id": row["organization_id"],
                 "schema_name": row["organization__schema_name"], "slug": row["organization__slug"]}
    redis_client().set(cache_key(prefix), json.dumps(entry), ex=CACHE_SECONDS)
    return entry


def auth_from_entry(raw: str, entry: dict) -> KeyAuth | None:
    """The grant of `raw` given its cached entry: None if unknown, revoked, expired or not matching."""
    if not entry or entry["revoked"] or not hmac.compare_digest(entry["hash"], _hash(raw.strip())):
        return None
    if entry["expires_at"] and parse_datetime(entry["expires_at"]) <= timezone.now():
        return None
    return KeyAuth(key_id=entry["id"], organization_id=entry["organization_id"], schema_name=entry["schema_name"],
                   slug=entry["slug"], scopes=frozenset(entry["scopes"]))


def api_key_touch(prefix: str) -> bool:
    """Whether this call should write `last_used_at` (the first call of the key's minute)."""
    return bool(redis_client().set(used_key(prefix), 1, nx=True, ex=LAST_USED_EVERY))


def api_key_authenticate(raw: str) -> KeyAuth | None:
    """The grant of a valid, unexpired, unrevoked key; None otherwise (never says which)."""
    prefix = lookup_prefix(raw)
    if prefix is None:
        return None
    auth = auth_from_entry(raw, _load(prefix))
    if auth is not None and api_key_touch(prefix):
        ApiKey.objects.filter(pk=auth.key_id).update(last_used_at=timezone.now())
    return auth


def bearer_token(request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
