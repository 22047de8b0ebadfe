"""A question asked from a thread's composer, without Django's request cycle.

Under load a send spent most of its time around the work rather than in it: a dozen middleware, a thread hop
each way, 16 ORM queries and a template (bench/RESULTS.md). The thread page's composer carries a send grant
(`send_grant`): signed, for its user in one organization, bound to the session that loaded the page (its
digest), valid for CHAT_SEND_GRANT_SECONDS. Like the CSRF token it sits in the page, where another site cannot
read it. An htmx send that presents a valid one is served here (config/asgi.py), as chat.views would serve it:

1. Redis, one round trip: was this send (`send_token`) done already, and the snapshot's version; then the plan's
   sends a minute (billing.ratelimits).
2. PostgreSQL, one round trip on the async pool (core.db_async): the session still valid and still this user's
   (expiry, password), the membership and its role, the organization's MFA rule, the thread locked and idle, two
   message ids, and the thread's history for the hold's estimate (chat.context.context_fit, the rule the ORM
   path uses).
3. PostgreSQL, a second round trip: the worst case held (billing.charges.charge_hold_queue), the question and the
   answer inserted only if the hold was taken, the thread touched, committed.
4. The answer queued (Celery) and the exchange rendered from what was written (chat/_messages.html).

Anything this route does not serve as Django would is left to Django's view, which checks and says everything:
no or a bad grant, another session, files, a retry of a send that went through, a model the plan does not
offer, a member over the plan's sends a minute, a busy thread, a balance that does not cover the hold. Before
leaving a request to Django nothing was written (a refused hold inserts nothing, and the send's count toward
the per-minute limit is given back), and the body read is handed on. A pool that cannot give a connection in
CHAT_SEND_WAIT_SECONDS is answered 503 with Retry-After, as the send turns in config/asgi.py are.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl

from allauth.mfa.models import Authenticator
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.core import signing
from django.core.exceptions import SuspiciousOperation
from django.core.files.uploadhandler import MemoryFileUploadHandler
from django.db import connection as db_connection
from django.http.multipartparser import MultiPartParser, MultiPartParserError
from django.template import loader
from django.utils import timezone, translation
from django.utils.crypto import constant_time_compare
from psycopg import OperationalError, sql
from psycopg.pq import TransactionStatus
from psycopg_pool import PoolTimeout

from accounts.mfa import MFA_FACTOR_TYPES
from accounts.models import User
from billing.charges import charge_hold_queue
from billing.models import CreditReservation
from billing.ratelimits import send_limit_give_back, send_limited_async
from core.db_async import async_pool, insert_values
from core.observability import request_context_set
from core.overload import overloaded_asgi
from core.redis_clients import redis_async_client
from core.scope import scope_cookie, scope_header
from tenants.guards import WRITE_ROLE
from tenants.models import ROLE_RANK, Membership, Organization, Role

from .catalog.selectors import ModelOption
from .context import HISTORY_SQL, context_fit, history_from_rows, history_params
from .models import Attachment, Message, Thread, answer_billing_key, answer_stream_key
from .services import (
    PENDING_SET,
    SEND_TOKEN_SECONDS,
    answer_max_tokens,
    answer_worst_cost,
    generation_publish,
    send_key,
    send_remembered,
)
from .snapshot import CONFIG_VERSION_KEY, org_config
from .streams import session_digest

PATH = re.compile(r"^/o/(?P<slug>[-a-zA-Z0-9_]+)/chat/t/(?P<thread>\d+)/send/$")
GRANT_SALT = "chat.send"
BODY_MAX = 256 * 1024  # a question's text and the form around it; more (files, a huge paste) goes to Django
HEADERS = [(b"content-type", b"text/html; charset=utf-8"), (b"hx-trigger", b"chat-sent"),
           (b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
           (b"referrer-policy", b"same-origin")]
WRITERS = [role.value for role in Role if ROLE_RANK[role] >= ROLE_RANK[Role(WRITE_ROLE)]]


class Fallback(Exception):
    """Leave the request to Django's view (nothing was written)."""


@dataclass(frozen=True)
class SendGrant:
    user_id: int
    organization_id: int
    slug: str
    schema: str
    language: str


def send_grant(*, user_id: int, organization: Organization, session_key: str, language: str) -> str:
    """The composer's grant for sending in `organization` as `user_id`, in the session `session_key`."""
    return signing.dumps([user_id, organization.pk, organization.slug, organization.schema_name,
                          session_digest(session_key), language], salt=GRANT_SALT)


def send_grant_read(token: str, *, session_key: str, slug: str) -> SendGrant | None:
    """The grant of `token` when genuine, not expired, for `slug` and presented with its session; else None."""
    try:
        user_id, organization_id, token_slug, schema, digest, language = signing.loads(
            token, salt=GRANT_SALT, max_age=settings.CHAT_SEND_GRANT_SECONDS)
    except (signing.BadSignature, ValueError, TypeError):
        return None
    if token_slug != slug or not session_key or not constant_time_compare(digest, session_digest(session_key)):
        return None
    return SendGrant(user_id=int(user_id), organization_id=int(organization_id), slug=slug, schema=str(schema),
                     language=str(language))


# ---------------------------------------------------------------- the request


async def _body(receive) -> tuple[bytes, bool]:
    """The whole body, and whether the client is still there."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks), True


def _replay(body: bytes, receive):
    """A `receive` that gives Django the body already read, then the client's next messages."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _form(scope, body: bytes) -> dict[str, list[str]] | None:
    """The form's fields (None when it carries files or cannot be read: Django's to handle)."""
    content_type = scope_header(scope, b"content-type")
    fields: dict[str, list[str]] = {}
    if content_type.startswith("application/x-www-form-urlencoded"):
        try:
            pairs = parse_qsl(body.decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            return None
    elif content_type.startswith("multipart/form-data"):
        meta = {"CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body))}
        try:
            data, files = MultiPartParser(meta, io.BytesIO(body), [MemoryFileUploadHandler()], "utf-8").parse()
        except (MultiPartParserError, SuspiciousOperation, ValueError):  # Django's view answers 400
            return None
        if files:
            return None
        pairs = [(name, value) for name, values in data.lists() for value in values]
    else:
        return None
    for name, value in pairs:
        fields.setdefault(name, []).append(value)
    return fields


def _origin_ok(scope) -> bool:
    """A browser's Origin, when sent, is this host's (Django's CSRF check decides anything else)."""
    origin = scope_header(scope, b"origin")
    if not origin:
        return True
    host = scope_header(scope, b"host")
    return origin.split("://", 1)[-1] == host or origin in settings.CSRF_TRUSTED_ORIGINS


async def send_direct(scope, receive, send):
    """Serve a composer's send when it carries a valid grant: None when served, else the `receive` to hand Django's
    view (replaying the body read)."""
    match = PATH.match(scope.get("path", ""))
    if match is None or scope_header(scope, b"hx-request") != "true" or not settings.CHAT_SEND_DIRECT:
        return receive
    length = scope_header(scope, b"content-length")
    if not length.isdigit() or int(length) > BODY_MAX:
        return receive
    body, connected = await _body(receive)
    replay = _replay(body, receive)
    if not connected:
        return replay
    try:
        await _send(scope, send, body, slug=match["slug"], thread_id=int(match["thread"]))
    except Fallback:
        return replay
    return None


@dataclass
class Asked:
    """The form of one send, checked."""

    grant: SendGrant
    session_key: str
    thread_id: int
    content: str
    model: str
    token: str
    csrf: str


def _asked(scope, body: bytes, *, slug: str, thread_id: int) -> Asked:
    form = _form(scope, body)
    if form is None or form.get("attachments") or not _origin_ok(scope):
        raise Fallback

    def field(name: str) -> str:
        return (form.get(name) or [""])[-1]

    content = field("content").strip()
    session_key = scope_cookie(scope, settings.SESSION_COOKIE_NAME)
    grant = send_grant_read(field("send_grant"), session_key=session_key, slug=slug)
    csrf = field("csrfmiddlewaretoken") or scope_header(scope, b"x-csrftoken")
    if not content or grant is None or not csrf:
        raise Fallback
    return Asked(grant=grant, session_key=session_key, thread_id=thread_id, content=content, model=field("model"),
                 token=field("send_token"), csrf=csrf)


async def _send(scope, send, body: bytes, *, slug: str, thread_id: int) -> None:
    asked = _asked(scope, body, slug=slug, thread_id=thread_id)
    grant = asked.grant
    # Served here, not by Django's middleware: the send's log lines and its generation task carry these.
    request_id = request_context_set(incoming=scope_header(scope, b"x-request-id"), organization=grant.slug,
                                     user=str(grant.user_id))
    redis = redis_async_client()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(send_key(grant.schema, grant.user_id, asked.token) if asked.token else "chat:sent:-")
        pipe.get(CONFIG_VERSION_KEY)
        done, version = await pipe.execute()
    if done:
        raise Fallback  # a retry of a send that went through: Django shows its exchange again
    config = await org_config(grant.organization_id, version)
    if await send_limited_async(redis, organization_id=grant.organization_id, user_id=grant.user_id,
                                per_minute=config.entitlements.messages_per_minute) is not None:
        await send_limit_give_back(redis, organization_id=grant.organization_id, user_id=grant.user_id)
        raise Fallback  # Django counts it and says how long to wait
    try:
        written = await _write(asked, config)
    except Fallback:
        await send_limit_give_back(redis, organization_id=grant.organization_id, user_id=grant.user_id)
        raise
    except (PoolTimeout, OperationalError):
        await send_limit_give_back(redis, organization_id=grant.organization_id, user_id=grant.user_id)
        await overloaded_asgi(send)
        return
    question, answer = written
    if asked.token:
        await redis.set(send_key(grant.schema, grant.user_id, asked.token),
                        send_remembered(thread_id, answer.pk), ex=SEND_TOKEN_SECONDS)
    await asyncio.to_thread(_publish, answer.pk, grant.schema)  # Celery's publish blocks: on a thread, in parallel
    page = _rendered(asked, question, answer)
    await send({"type": "http.response.start", "status": 200,
                "headers": [*HEADERS, (b"content-length", str(len(page)).encode()),
                            (b"x-request-id", request_id.encode())]})
    await send({"type": "http.response.body", "body": page})


def _publish(answer_id: int, schema: str) -> None:
    try:
        generation_publish(answer_id, schema)
    finally:
        db_connection.close()  # tasks run eagerly (tests) use the thread's connection: nobody else would close it


# ---------------------------------------------------------------- the database


def _tables(schema: str) -> dict[str, sql.Composable]:
    def tenant(model) -> sql.Composable:
        return sql.Identifier(schema, model._meta.db_table)

    def public(model) -> sql.Composable:
        return sql.Identifier(model._meta.db_table)

    return {"threads": tenant(Thread), "messages": tenant(Message), "attachments": tenant(Attachment),
            "users": public(User), "memberships": public(Membership), "organizations": public(Organization),
            "sessions": public(Session), "authenticators": public(Authenticator),
            "reservations": public(CreditReservation)}


# The person may send in this thread now: the session is live, the user active, a writing member of the
# organization (with a second factor where it requires one); the thread is theirs, locked, and runs no answer.
# Two message ids are taken for the question and its answer.
ASK_SQL = sql.SQL("""
SELECT t.model_id, t.system_prompt,
    EXISTS (SELECT 1 FROM {messages} m WHERE m.thread_id = t.id AND m.status = ANY(%(active)s)) AS busy,
    u.password, s.session_data,
    nextval(pg_get_serial_sequence(%(message_table)s, 'id')), nextval(pg_get_serial_sequence(%(message_table)s, 'id'))
FROM {threads} t
JOIN {users} u ON u.id = t.user_id
JOIN {memberships} mb ON mb.user_id = u.id AND mb.organization_id = %(organization)s
JOIN {organizations} o ON o.id = mb.organization_id
JOIN {sessions} s ON s.session_key = %(session)s AND s.expire_date > now()
WHERE t.id = %(thread)s AND t.user_id = %(user)s AND u.is_active AND mb.role = ANY(%(roles)s)
    AND (NOT o.require_mfa OR EXISTS (SELECT 1 FROM {authenticators} a WHERE a.user_id = u.id
                                      AND a.type = ANY(%(factors)s)))
FOR UPDATE OF t
""")

def _session_valid(session_data: str, *, user_id: int, password: str) -> bool:
    """Django's own test (django.contrib.auth.get_user): the session names this user, an enabled backend, and the
    hash of the password it was opened with (a password change ends the other sessions)."""
    data = SessionStore().decode(session_data)
    backend = data.get(BACKEND_SESSION_KEY)
    if str(data.get(SESSION_KEY)) != str(user_id) or backend not in settings.AUTHENTICATION_BACKENDS:
        return False
    return constant_time_compare(data.get(HASH_SESSION_KEY, ""), User(pk=user_id, password=password)
                                 .get_session_auth_hash())


def _insert(table: sql.Composable, instance, *, held: str | None, tables) -> tuple[sql.Composed, list]:
    """INSERT `instance`, only if the hold `held` was taken (when there is one)."""
    columns, values = insert_values(instance)
    statement = sql.SQL("INSERT INTO {table} ({columns}) SELECT {values}").format(
        table=table, columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
        values=sql.SQL(", ").join(sql.Placeholder() * len(values)))
    return _if_held(statement, "WHERE", values, held, tables)


def _touch(thread_id: int, answer: Message, *, held: str | None, tables) -> tuple[sql.Composed, list]:
    statement = sql.SQL("UPDATE {threads} SET updated_at = %s, model_id = %s WHERE id = %s").format(**tables)
    return _if_held(statement, "AND", [answer.created_at, answer.model_id, thread_id], held, tables)


def _if_held(statement: sql.Composed, joiner: str, values: list, held: str | None, tables) -> tuple[sql.Composed, list]:
    if held is None:
        return statement, values
    condition = sql.SQL(" " + joiner + " EXISTS (SELECT 1 FROM {reservations} WHERE key = %s)").format(**tables)
    return statement + condition, [*values, held]


async def _write(asked: Asked, config) -> tuple[Message, Message]:
    """The question and its pending answer, held for and committed; Fallback when Django should decide."""
    grant, tables = asked.grant, _tables(asked.grant.schema)
    params = {"active": list(Message.ACTIVE), "message_table": f'"{grant.schema}".{Message._meta.db_table}',
              "organization": grant.organization_id, "session": asked.session_key, "thread": asked.thread_id,
              "user": grant.user_id, "roles": WRITERS, "factors": list(MFA_FACTOR_TYPES)}
    pool = await async_pool()
    async with pool.connection(timeout=settings.CHAT_SEND_WAIT_SECONDS) as connection:
        try:
            # BEGIN and COMMIT as statements of the pipeline: psycopg's transaction() would sync once more for each.
            async with connection.pipeline():
                await connection.execute("BEGIN")
                found = await connection.execute(ASK_SQL.format(**tables), params)
                history = await connection.execute(HISTORY_SQL.format(**tables),
                                                   history_params(thread_id=asked.thread_id))
                row = await found.fetchone()  # the first round trip
                if row is None:
                    raise Fallback
                thread_model, system_prompt, busy, password, session_data, *ids = row
                option = config.options.get(asked.model or thread_model)
                if busy or option is None or not _session_valid(session_data, user_id=grant.user_id,
                                                                password=password):
                    raise Fallback
                question, answer = _messages(asked, option, ids, system_prompt=system_prompt,
                                             history=history_from_rows(await history.fetchall()))
                held, hold = await _hold(connection, asked, config, option, answer)
                # Watched before the commit, as chat.services does: a process that dies between the commit and the
                # queueing still leaves the answer to the reaper (which drops an entry whose answer never committed).
                watched = answer_stream_key(grant.schema, answer.pk)
                await redis_async_client().zadd(PENDING_SET, {watched: time.time()})
                for instance in (question, answer):
                    await connection.execute(*_insert(tables["messages"], instance, held=held, tables=tables))
                await connection.execute(*_touch(asked.thread_id, answer, held=held, tables=tables))
                await connection.execute("COMMIT")
            # The pipeline's end: the hold, the inserts and the commit went in the second round trip.
        except BaseException:
            if connection.info.transaction_status != TransactionStatus.IDLE:
                await connection.rollback()
            raise
        if hold is not None and await hold.taken() is None:
            await redis_async_client().zrem(PENDING_SET, watched)
            raise Fallback  # not covered (or the organization's first movement): the ledger explains, in Django
    return question, answer


def _messages(asked: Asked, option: ModelOption, ids: list[int], *, system_prompt: str,
              history: list) -> tuple[Message, Message]:
    question_id, answer_id = sorted(ids)
    now = timezone.now()
    question = Message(pk=question_id, thread_id=asked.thread_id, role=Message.Role.USER, content=asked.content,
                       created_at=now)
    answer = Message(pk=answer_id, thread_id=asked.thread_id, role=Message.Role.ASSISTANT,
                     status=Message.Status.PENDING, model_id=option.id, max_tokens=answer_max_tokens(option),
                     created_at=now)
    _context, answer.prompt_tokens_estimate = context_fit(
        system_prompt=system_prompt, history=[*history, (question, [])], model=option.model,
        max_tokens=answer.max_tokens, load_images=False)
    return question, answer


async def _hold(connection, asked: Asked, config, option: ModelOption, answer: Message):
    """Queue the hold of the answer's worst case: (its key, the pending hold), or (None, None) when the answer costs
    nothing."""
    worst = answer_worst_cost(config.candidates(option.model), prompt_tokens=answer.prompt_tokens_estimate,
                              max_tokens=answer.max_tokens)
    if worst <= 0:
        return None, None
    key = answer_billing_key(asked.grant.schema, answer.pk)
    hold = await charge_hold_queue(connection, organization_id=asked.grant.organization_id, amount=worst, key=key,
                                   description=f"chat answer {answer.pk}", user_id=asked.grant.user_id)
    return key, hold


# ---------------------------------------------------------------- the answer


class _Page:
    """What chat/_messages.html reads of a request."""

    def __init__(self, asked: Asked) -> None:
        grant = asked.grant
        self.tenant = Organization(pk=grant.organization_id, slug=grant.slug, schema_name=grant.schema)
        self.user = User(pk=grant.user_id)
        self.session = SessionStore(session_key=asked.session_key)


def _rendered(asked: Asked, question: Message, answer: Message) -> bytes:
    for message in (question, answer):  # a text question: no files, known without a query (nor compiling one)
        none = Attachment.objects.none()
        none._result_cache = []
        message._prefetched_objects_cache = {"attachments": none}
    context = {"request": _Page(asked), "thread": Thread(pk=asked.thread_id), "chat_messages": [question, answer],
               "last_question_id": question.pk, "org_read_only": False, "csrf_token": asked.csrf}
    with translation.override(asked.grant.language):
        return loader.get_template("chat/_messages.html").render(context).encode()
