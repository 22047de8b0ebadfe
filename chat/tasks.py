"""Chat's Celery tasks: thin, idempotent, each in its organization's schema (tenant-schemas-celery)."""

from __future__ import annotations

import logging
import random
import time

from celery import shared_task
from celery.signals import worker_shutdown
from django.conf import settings
from django.db import OperationalError, connection
from django_tenants.utils import schema_context, schema_exists

from core.redis_clients import redis_client

from .gateway import holds_reap
from .generation import (
    ACTIVE_SET,
    SLOT_RETRY_SECONDS,
    answer_generate,
    answer_never_started,
    answer_recover,
    answers_drain,
)
from .models import Message
from .services import PENDING_SET, attachment_text_extract
from .titles import thread_title_write

logger = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def generation_run(self, answer_id: int) -> None:
    """Start one answer: claimed and its context built here, it then streams on the worker's event loop (the task
    returns; chat.generation). A worker that dies mid-answer leaves it to the reaper (its heartbeat stops), which
    closes it as interrupted; a redelivery never re-runs it. A database that refuses connections is retried
    (claiming the answer is idempotent).

    When the organization is at its plan's cap of answers at once, the answer waits its turn: the task
    runs again in about a second (run eagerly, in-process tests, it stays pending instead)."""
    if not answer_generate(answer_id, wait=self.request.is_eager) and not self.request.is_eager:
        generation_run.apply_async(args=[answer_id], countdown=SLOT_RETRY_SECONDS + random.uniform(0, 0.5),
                                   headers={"_schema_name": connection.schema_name})


@worker_shutdown.connect
def _answers_drain(**_kwargs) -> None:
    """A warm shutdown stops taking tasks, then waits here for the answers still streaming to end and be closed
    (GENERATION_DRAIN_SECONDS at most: past it they are left to the reaper, as if the worker had died)."""
    if not answers_drain():
        logger.warning("chat answers still streaming after %ss: left to the reaper", settings.GENERATION_DRAIN_SECONDS)


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=settings.CHAT_PDF_CPU_SECONDS * 3 + 30,
             time_limit=settings.CHAT_PDF_CPU_SECONDS * 3 + 60)
def attachment_extract(attachment_id: int) -> None:
    """Read an uploaded PDF's text, then queue or fail the answer waiting for it. The reading runs in a child
    process with a CPU-time limit (chat.files); these time limits are only a wall-clock backstop."""
    attachment_text_extract(attachment_id=attachment_id)


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
    """Beat: close answers whose worker died (no heartbeat) or whose task never started. Returns how many.

    Each entry on its own: one that cannot be closed (a database error) is logged and tried again on the
    next run, and one whose organization was deleted is dropped; neither keeps the reaper from the others."""
    client = redis_client()
    closed = 0
    for key in client.zrangebyscore(PENDING_SET, "-inf", time.time() - settings.CHAT_PENDING_TIMEOUT):
        closed += _reap(client, PENDING_SET, key)
    for key in client.zrangebyscore(ACTIVE_SET, "-inf", time.time() - settings.CHAT_HEARTBEAT_TIMEOUT):
        closed += _reap(client, ACTIVE_SET, key)
    return closed


def _reap(client, queue: str, key: str) -> int:
    """Close the answer of one stale entry of `queue` (never started, or its worker died); 1 if it was closed."""
    _prefix, kind, owner, answer_id = key.split(":")
    try:
        if kind == "trial":
            from .trial import trial_recover

            trial_recover(owner, int(answer_id))
            return 1
        if not schema_exists(owner):  # the organization was deleted, its answers with it
            client.zrem(queue, key)
            return 0
        with schema_context(owner):
            if queue == PENDING_SET:
                answer = Message.objects.filter(pk=int(answer_id),
                                                status__in=[Message.Status.WAITING, Message.Status.PENDING]).first()
                if answer is not None:
                    answer_never_started(answer)
                client.zrem(queue, key)
            else:
                answer = Message.objects.filter(pk=int(answer_id), status__in=Message.ACTIVE).first()
                if answer is not None:
                    answer_recover(answer)
                else:
                    client.zrem(queue, key)
            return int(answer is not None)
    except Exception:
        logger.exception("chat reaper: %s could not be closed; the next run tries again", key)
        return 0


@shared_task(acks_late=True, ignore_result=True)
def gateway_holds_reap() -> int:
    """Beat: release /v1 credit holds left open by a process that died mid-call."""
    return holds_reap()
