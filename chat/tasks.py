"""Chat's Celery tasks: thin, idempotent, each in its organization's schema (tenant-schemas-celery)."""

from __future__ import annotations

import time
from collections import defaultdict

from celery import shared_task
from django.conf import settings
from django_tenants.utils import schema_context

from .generation import ACTIVE_SET, answer_generate, answer_recover
from .models import Message
from .redis import sync_client
from .titles import thread_title_write


@shared_task(acks_late=True)
def generation_run(answer_id: int) -> None:
    """Stream one answer. A redelivery after a crash closes it as interrupted instead of re-running it."""
    answer_generate(answer_id)


@shared_task(acks_late=True, ignore_result=True)
def thread_title(thread_id: int) -> None:
    """Name a new thread after its first exchange, with the cheapest model the organization may use."""
    thread_title_write(thread_id)


@shared_task(acks_late=True, ignore_result=True)
def trial_answer(visitor: str, answer_id: int, model_id: str) -> None:
    """Stream an anonymous trial answer (public schema, nothing billed)."""
    from .trial import trial_generate

    trial_generate(visitor=visitor, answer_id=answer_id, model_id=model_id)


@shared_task(acks_late=True, ignore_result=True)
def generations_reap() -> int:
    """Beat: close answers whose generation stopped heartbeating (its worker died). Returns how many."""
    client = sync_client()
    deadline = time.time() - settings.CHAT_HEARTBEAT_TIMEOUT
    stale = client.zrangebyscore(ACTIVE_SET, "-inf", deadline)
    by_schema: dict[str, list[tuple[str, int]]] = defaultdict(list)
    closed = 0
    for key in stale:
        _prefix, kind, owner, answer_id = key.split(":")
        if kind == "trial":
            from .trial import trial_recover

            trial_recover(owner, int(answer_id))
            closed += 1
        else:
            by_schema[owner].append((key, int(answer_id)))
    for schema, entries in by_schema.items():
        with schema_context(schema):
            for key, answer_id in entries:
                answer = Message.objects.filter(pk=answer_id).first()
                if answer is not None and answer.status in Message.ACTIVE:
                    answer_recover(answer)
                    closed += 1
                else:
                    client.zrem(ACTIVE_SET, key)
    return closed
