"""The anonymous trial at /try: a few messages with the cheapest model, then an invitation to sign up.

Nothing is stored in the database: a visitor's conversation lives in Redis for a day under
a random visitor id kept in a signed cookie. Two counters limit it, checked and counted
atomically in Redis: `TRIAL_MESSAGES` per visitor and `TRIAL_MESSAGES_PER_IP` per client
address, so a script rotating cookies stops at the address limit. When the visitor signs
up and creates an organization, the conversation becomes a thread there (`trial_claim`).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_tenants.utils import schema_context

from accounts.models import User
from billing.models import Plan
from billing.selectors import Entitlements
from billing.services import FREE_PLAN, plans_seed
from core.redis_clients import redis_client
from tenants.models import Organization

from .catalog.selectors import ModelOption, model_cheapest, model_options
from .files import tokens_estimate
from .generation import generation_stream, stream_end
from .loop import answers_run
from .models import Message, Thread
from .providers import ChatMessage, ChatRequest

COOKIE = "prumo_trial"
TTL = 24 * 3600
SYSTEM_PROMPT = "You are Prumo's assistant in a short free trial. Be concise and helpful."

# KEYS: visitor counter, ip counter. ARGV: visitor limit, ip limit, ttl. Returns the visitor's new
# count, or -1 (visitor limit) / -2 (address limit) without counting anything.
_COUNT = """
local visitor = tonumber(redis.call('GET', KEYS[1]) or '0')
local ip = tonumber(redis.call('GET', KEYS[2]) or '0')
if visitor >= tonumber(ARGV[1]) then return -1 end
if ip >= tonumber(ARGV[2]) then return -2 end
-- The window starts with the first message (EXPIRE ... NX needs Redis 7; the embedded one is 6.2).
if redis.call('INCR', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
if redis.call('INCR', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
return visitor + 1
"""


class TrialLimit(Exception):
    """No trial message left; `per_address` when the address (not the visitor) ran out."""

    def __init__(self, *, per_address: bool):
        super().__init__("trial limit reached")
        self.per_address = per_address


class TrialBusy(Exception):
    """An answer is still being written."""


class TrialUnavailable(Exception):
    """No model can serve the trial (nothing configured)."""


@dataclass(frozen=True)
class TrialMessage:
    id: int
    role: str
    content: str
    status: str = Message.Status.COMPLETE

    @property
    def is_active(self) -> bool:
        return self.status in Message.ACTIVE


def new_visitor_id() -> str:
    return secrets.token_urlsafe(16)


def _log_key(visitor: str) -> str:
    return f"trial:{visitor}:log"


def _active_key(visitor: str) -> str:
    return f"trial:{visitor}:active"


def stream_key(visitor: str, answer_id: int) -> str:
    return f"chat:trial:{visitor}:{answer_id}"


def trial_option() -> ModelOption | None:
    """The cheapest model the Free plan allows among the platform's configured providers."""
    plan = Plan.objects.filter(code=FREE_PLAN).first()
    if plan is None:
        plans_seed()
        plan = Plan.objects.get(code=FREE_PLAN)
    return model_cheapest(model_options(entitlements=Entitlements.from_plan(plan), own_keys={}))


def trial_messages(visitor: str) -> list[TrialMessage]:
    client = redis_client()
    rows = [TrialMessage(**json.loads(raw)) for raw in client.lrange(_log_key(visitor), 0, -1)]
    active = client.get(_active_key(visitor))
    if active is not None:
        rows.append(TrialMessage(id=int(active), role=Message.Role.ASSISTANT, content="",
                                 status=Message.Status.STREAMING))
    return rows


def trial_used(visitor: str) -> int:
    return int(redis_client().get(f"trial:count:v:{visitor}") or 0)


def trial_ask(*, visitor: str, ip: str, content: str) -> int:
    """Count one message (or raise TrialLimit), store it, and queue its answer. Returns the answer's id."""
    content = content.strip()[: settings.TRIAL_MAX_INPUT_CHARS]
    if not content:
        raise ValueError("empty message")
    option = trial_option()
    if option is None:
        raise TrialUnavailable
    client = redis_client()
    if client.exists(_active_key(visitor)):
        raise TrialBusy
    counted = client.eval(_COUNT, 2, f"trial:count:v:{visitor}", f"trial:count:ip:{ip}",
                          settings.TRIAL_MESSAGES, settings.TRIAL_MESSAGES_PER_IP, TTL)
    if counted < 0:
        raise TrialLimit(per_address=counted == -2)
    log = _log_key(visitor)
    answer_id = client.llen(log) + 1
    with client.pipeline(transaction=True) as pipe:
        pipe.rpush(log, json.dumps({"id": answer_id, "role": "user", "content": content}))
        pipe.expire(log, TTL)
        pipe.set(_active_key(visitor), answer_id + 1, ex=TTL)
        pipe.execute()
    from .tasks import trial_answer

    transaction.on_commit(lambda: trial_answer.apply_async(args=[visitor, answer_id + 1, option.id],
                                                           headers={"_schema_name": "public"}))
    return answer_id + 1


def _history(visitor: str) -> list[ChatMessage]:
    messages = [ChatMessage(role="system", content=SYSTEM_PROMPT)]
    messages += [ChatMessage(role=m.role, content=m.content) for m in trial_messages(visitor)
                 if not m.is_active and m.content]
    return messages


def trial_generate(*, visitor: str, answer_id: int, model_id: str) -> None:
    """Write the trial answer (a Celery task runs this); the platform pays, nothing is billed."""
    client = redis_client()
    if client.get(_active_key(visitor)) != str(answer_id):
        return  # already answered (a redelivered task)
    options = [o for o in model_options(entitlements=None, own_keys={}, ids=[model_id])]
    key = stream_key(visitor, answer_id)
    if not options:
        trial_finish(visitor=visitor, answer_id=answer_id, text="", status=Message.Status.FAILED)
        return
    request = ChatRequest(model=options[0].model.provider_model, messages=_history(visitor),
                          max_tokens=settings.TRIAL_MAX_OUTPUT_TOKENS)
    outcome = answers_run(generation_stream(key=key, candidates=options, request=request, own_keys={}))
    trial_finish(visitor=visitor, answer_id=answer_id, text=outcome.text, status=outcome.status)


def trial_finish(*, visitor: str, answer_id: int, text: str, status: str) -> None:
    client = redis_client()
    active = _active_key(visitor)
    if client.get(active) != str(answer_id):
        return
    log = _log_key(visitor)
    with client.pipeline(transaction=True) as pipe:
        pipe.rpush(log, json.dumps({"id": answer_id, "role": "assistant", "content": text, "status": status}))
        pipe.expire(log, TTL)
        pipe.delete(active)
        pipe.execute()
    stream_end(stream_key(visitor, answer_id), status)


def trial_recover(visitor: str, answer_id: int) -> None:
    """The worker died mid-answer: keep what it wrote, marked interrupted."""
    from .generation import stream_text

    trial_finish(visitor=visitor, answer_id=answer_id, text=stream_text(stream_key(visitor, answer_id)),
                 status=Message.Status.INTERRUPTED)


def trial_message(visitor: str, answer_id: int) -> TrialMessage | None:
    return next((m for m in trial_messages(visitor) if m.id == answer_id), None)


def trial_claim(*, visitor: str, organization: Organization, user: User) -> Thread | None:
    """Move the visitor's finished trial conversation into `organization` as the user's thread (once)."""
    rows = [m for m in trial_messages(visitor) if not m.is_active]
    if not rows:
        return None
    option = trial_option()
    model_id = option.id if option else ""
    with schema_context(organization.schema_name), transaction.atomic():
        thread = Thread.objects.create(user=user, model_id=model_id, title=_title(rows))
        now = timezone.now()
        Message.objects.bulk_create([
            Message(thread=thread, role=m.role, content=m.content, status=m.status, created_at=now,
                    model_id=model_id if m.role == "assistant" else "",
                    served_model_id=model_id if m.role == "assistant" else "",
                    output_tokens=tokens_estimate(m.content) if m.role == "assistant" else 0,
                    usage_estimated=m.role == "assistant")
            for m in rows
        ])
        # Last, so a failed insert loses nothing; only one claim can delete the log (the others roll back).
        if not redis_client().delete(_log_key(visitor)):
            transaction.set_rollback(True)
            return None
    return thread


def _title(rows: list[TrialMessage]) -> str:
    from .titles import title_from_text

    first = next((m.content for m in rows if m.role == "user"), "")
    return title_from_text(first)[:200]
