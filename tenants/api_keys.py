"""Organization API keys: create (shown once), revoke, and authenticate with a cached lookup.

Authentication is on the hot path of every API and /v1 call: the row is cached in Redis as
JSON under `apikey:v2:<prefix>`, so the async /v1 gateway reads the same entry as the sync
middleware; `last_used_at` is written at most once a minute per key (`apikey:used:<prefix>`
marks the minute).

Whom a key acts as (`ApiKey.principal`): a `member` key acts as its creator, and only while
the creator is an active admin or owner of its organization (`KEY_HOLDER_ROLES`: who may open
the keys page). Leaving, removal, demotion below admin and deactivation revoke the person's
keys at once (`api_keys_revoke_held_by`). Should a path skip those services (a queryset
update), the key is still refused: the API checks the creator on every call, and a cache fill
reads the creator's standing too (so /v1 follows within CACHE_SECONDS). A `service` key
(`manage.py create_api_key`) acts as the organization.

The cache cannot be refilled with what a request read before a revocation: each prefix has a
generation (`apikey:gen:<prefix>`) that every revocation and creation bumps (and then drops the
entry), and a request fills the cache only if the generation it read *before* its database
read is still current (one Lua script). Unknown prefixes are cached as `{}` for
`UNKNOWN_CACHE_SECONDS`; a cache miss from an address already over its unauthenticated limit
never reaches the database.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import string
from dataclasses import dataclass
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _

from accounts.models import User
from billing.ratelimits import ip_over_limit, ip_over_limit_async
from core.db_async import async_pool
from core.events import event_emit
from core.redis_clients import redis_client

from .audit.records import DAY_MARK_SECONDS, api_key_day_mark, api_key_use_enqueue
from .audit.services import Actor, audit_record
from .models import ApiKey, Membership, Organization, Role

KEY_PREFIX = "prm_"
LOOKUP_LENGTH = 12
SECRET_LENGTH = 32
CACHE_SECONDS = 300
UNKNOWN_CACHE_SECONDS = 60
GENERATION_SECONDS = 86_400  # far longer than any request between its generation read and its fill
LAST_USED_EVERY = 60
KEY_HOLDER_ROLES = (Role.OWNER, Role.ADMIN)
_ALPHABET = string.ascii_letters + string.digits

ENTRY_SQL = f"""
SELECT k.id, k.key_hash, k.scopes, k.expires_at, k.revoked_at, k.organization_id, o.schema_name, o.slug,
       k.principal, k.created_by_id,
       EXISTS (SELECT 1 FROM {Membership._meta.db_table} m JOIN {User._meta.db_table} u ON u.id = m.user_id
               WHERE m.organization_id = k.organization_id AND m.user_id = k.created_by_id
                 AND m.role IN ({", ".join(f"'{role}'" for role in KEY_HOLDER_ROLES)}) AND u.is_active)
FROM {ApiKey._meta.db_table} k JOIN {Organization._meta.db_table} o ON o.id = k.organization_id
WHERE k.prefix = %(prefix)s
"""

# Fill the cache only if no revocation or creation bumped the generation since the caller read it.
_FILL = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""
_FORGET = """
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
return 0
"""


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
    principal: str = ApiKey.Principal.MEMBER
    user_id: int | None = None  # the member a `member` key acts as

    def allows(self, scope: str) -> bool:
        return scope in self.scopes

    @property
    def is_service(self) -> bool:
        return self.principal == ApiKey.Principal.SERVICE


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _hash(raw: str) -> str:
    # Keys carry 190 bits of randomness: a fast hash is enough (no password stretching needed).
    return hashlib.sha256(raw.encode()).hexdigest()


def cache_key(prefix: str) -> str:
    return f"apikey:v2:{prefix}"


def generation_key(prefix: str) -> str:
    return f"apikey:gen:{prefix}"


def used_key(prefix: str) -> str:
    return f"apikey:used:{prefix}"


def lookup_prefix(raw: str) -> str | None:
    """The lookup part of a well-formed key, None for anything else."""
    raw = (raw or "").strip()
    if not raw.startswith(KEY_PREFIX) or len(raw) != len(KEY_PREFIX) + LOOKUP_LENGTH + SECRET_LENGTH:
        return None
    return raw[len(KEY_PREFIX):len(KEY_PREFIX) + LOOKUP_LENGTH]


def key_cache_forget(prefix: str) -> None:
    """Bump the prefix's generation and drop its entry: fills begun before this cannot land."""
    redis_client().eval(_FORGET, 2, cache_key(prefix), generation_key(prefix), GENERATION_SECONDS)


def may_hold_keys(membership: Membership | None) -> bool:
    return membership is not None and membership.role in KEY_HOLDER_ROLES and membership.user.is_active


def _key_event(key: ApiKey) -> dict:
    """What integrators are told about a key (never its secret)."""
    return {"id": key.pk, "name": key.name, "prefix": key.display_prefix, "scopes": list(key.scopes),
            "principal": key.principal, "created_by_id": key.created_by_id,
            "expires_at": key.expires_at.isoformat() if key.expires_at else None}


@transaction.atomic
def api_key_create(*, organization: Organization, name: str, scopes: list[str], actor: Actor,
                   user: User | None = None, expires_at: datetime | None = None) -> NewKey:
    """A `member` key acting as `user` (an active admin or owner), or without `user` a `service` key."""
    if user is not None:
        membership = Membership.objects.select_related("user").filter(organization=organization, user=user).first()
        if not may_hold_keys(membership):
            raise ValidationError(_("Only active admins and owners of the organization can hold API keys."))
    valid = {choice for choice, _label in ApiKey.Scope.choices}
    scopes = sorted(set(scopes) & valid) or [ApiKey.Scope.READ]
    prefix = _random(LOOKUP_LENGTH)
    raw = f"{KEY_PREFIX}{prefix}{_random(SECRET_LENGTH)}"
    principal = ApiKey.Principal.MEMBER if user is not None else ApiKey.Principal.SERVICE
    key = ApiKey.objects.create(organization=organization, name=name.strip()[:100], prefix=prefix,
                                key_hash=_hash(raw), scopes=scopes, expires_at=expires_at, created_by=user,
                                principal=principal)
    audit_record(organization=organization, actor=actor, action="api_key.created", target=key,
                 after={"name": key.name, "scopes": scopes, "prefix": key.display_prefix, "principal": principal,
                        "expires_at": expires_at.isoformat() if expires_at else None})
    event_emit(organization=organization, type="api_key.created", data=_key_event(key))
    # An earlier call with this prefix may have cached "unknown": the new key works at once.
    transaction.on_commit(lambda: key_cache_forget(prefix))
    return NewKey(key=key, raw=raw)


@transaction.atomic
def api_key_revoke(*, key: ApiKey, actor: Actor, reason: str = "") -> ApiKey:
    """Revoke `key` (audited with `reason` when given); its cache entry goes when the transaction commits."""
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit_record(organization=key.organization, actor=actor, action="api_key.revoked", target=key,
                     after={"reason": reason} if reason else None)
        event_emit(organization=key.organization, type="api_key.revoked", data={**_key_event(key), "reason": reason})
        transaction.on_commit(lambda: key_cache_forget(key.prefix))
    return key


@transaction.atomic
def api_keys_revoke_held_by(*, user: User, actor: Actor, reason: str,
                            organization: Organization | None = None) -> int:
    """Revoke the member keys `user` holds (in `organization`, or everywhere); how many were revoked."""
    keys = ApiKey.objects.select_related("organization").filter(
        created_by=user, principal=ApiKey.Principal.MEMBER, revoked_at__isnull=True)
    if organization is not None:
        keys = keys.filter(organization=organization)
    revoked = 0
    for key in keys.select_for_update(of=("self",)):
        api_key_revoke(key=key, actor=actor, reason=reason)
        revoked += 1
    return revoked


def entry_from_row(row: tuple | None) -> dict:
    """The cache entry of a row of `ENTRY_SQL` (`{}`: no such key). A member key whose creator may no
    longer hold keys reads as revoked."""
    if row is None:
        return {}
    (key_id, key_hash, scopes, expires_at, revoked_at, organization_id, schema_name, slug, principal, user_id,
     creator_may) = row
    unusable = revoked_at is not None or (principal == ApiKey.Principal.MEMBER and not creator_may)
    return {"id": key_id, "hash": key_hash, "scopes": json.loads(scopes) if isinstance(scopes, str) else scopes,
            "expires_at": expires_at.isoformat() if expires_at else None, "revoked": unusable,
            "organization_id": organization_id, "schema_name": schema_name, "slug": slug,
            "principal": principal, "user_id": user_id}


def key_entry_read(prefix: str) -> dict:
    """The entry of `prefix` from the database (one statement)."""
    with connection.cursor() as cursor:
        cursor.execute(ENTRY_SQL, {"prefix": prefix})
        return entry_from_row(cursor.fetchone())


async def key_entry_read_async(prefix: str) -> dict:
    """`key_entry_read` on the async pool (no connection of its own per call)."""
    pool = await async_pool()
    async with pool.connection() as conn:
        cursor = await conn.execute(ENTRY_SQL, {"prefix": prefix})
        return entry_from_row(await cursor.fetchone())


def key_cache_read(prefix: str) -> tuple[dict | None, str]:
    """The cached entry of `prefix` (None on a miss) and the prefix's current generation."""
    cached, generation = redis_client().mget(cache_key(prefix), generation_key(prefix))
    return (json.loads(cached) if cached is not None else None), generation or ""


def _fill_args(prefix: str, generation: str, entry: dict) -> tuple:
    seconds = CACHE_SECONDS if entry else UNKNOWN_CACHE_SECONDS
    return (_FILL, 2, cache_key(prefix), generation_key(prefix), generation or "", json.dumps(entry), seconds)


def key_cache_fill(prefix: str, generation: str, entry: dict) -> bool:
    """Cache `entry` read from the database, unless the generation moved since `generation` was read."""
    return bool(redis_client().eval(*_fill_args(prefix, generation, entry)))


async def key_cache_fill_async(redis, prefix: str, generation: str, entry: dict) -> bool:
    return bool(await redis.eval(*_fill_args(prefix, generation, entry)))


def _load(prefix: str, address: str | None) -> dict:
    """The entry of `prefix` (`{}`: no such key, or the address may not look further), cached."""
    entry, generation = key_cache_read(prefix)
    if entry is not None:
        return entry
    if address is not None and ip_over_limit(address) is not None:
        return {}
    entry = key_entry_read(prefix)
    key_cache_fill(prefix, generation, entry)
    return entry


async def key_entry_load_async(redis, prefix: str, generation: str | None, address: str) -> dict:
    """/v1's miss path: as `_load` after its cache read, with the generation read alongside the entry."""
    if await ip_over_limit_async(redis, address) is not None:
        return {}
    entry = await key_entry_read_async(prefix)
    await key_cache_fill_async(redis, prefix, generation or "", entry)
    return entry


def auth_from_entry(raw: str, entry: dict) -> KeyAuth | None:
    """The grant of `raw` given its cached entry: None if unknown, revoked, expired or not matching."""
    if not entry or entry["revoked"] or not hmac.compare_digest(entry["hash"], _hash(raw.strip())):
        return None
    if entry["expires_at"] and parse_datetime(entry["expires_at"]) <= timezone.now():
        return None
    return KeyAuth(key_id=entry["id"], organization_id=entry["organization_id"], schema_name=entry["schema_name"],
                   slug=entry["slug"], scopes=frozenset(entry["scopes"]), principal=entry["principal"],
                   user_id=entry["user_id"])


def api_key_touch(prefix: str, key_id: int) -> tuple[bool, bool]:
    """Whether this call is the key's first of its minute (write `last_used_at`) and of its UTC day (audit
    the use): one round trip."""
    pipe = redis_client().pipeline(transaction=False)
    pipe.set(used_key(prefix), 1, nx=True, ex=LAST_USED_EVERY)
    pipe.set(api_key_day_mark(key_id), 1, nx=True, ex=DAY_MARK_SECONDS)
    minute, day = pipe.execute()
    return bool(minute), bool(day)


def api_key_authenticate(raw: str, *, address: str | None = None, user_agent: str = "",
                         request_id: str = "") -> KeyAuth | None:
    """The grant of a valid, unexpired, unrevoked key; None otherwise (never says which). With `address`,
    a cache miss from an address over its unauthenticated limit is refused without a database look-up.
    The key's first call of the day is audited (`api_key.used`) by a task; `address`, `user_agent` and
    `request_id` go into that event."""
    prefix = lookup_prefix(raw)
    if prefix is None:
        return None
    auth = auth_from_entry(raw, _load(prefix, address))
    if auth is not None:
        minute, day = api_key_touch(prefix, auth.key_id)
        if minute:
            ApiKey.objects.filter(pk=auth.key_id).update(last_used_at=timezone.now())
        if day:
            api_key_use_enqueue(key_id=auth.key_id, ip_address=address if address != "unknown" else None,
                                user_agent=user_agent, request_id=request_id)
    return auth


def bearer_token(request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
