"""Studio jobs: submitted with their worst case held, run on the `studio` queue under per-kind and per-organization
caps that hold across workers, retried with backoff on transient failures, dead after their last attempt.

- `job_submit` validates the model (plan tier), prompt and options, holds `price × units` (billing.charges) and
  queues the job, all or nothing.
- `job_run` (one worker, one job): takes a slot of its kind (STUDIO_CONCURRENCY, over every worker: a Redis
  semaphore with leases, billing.ratelimits slots) and one of its organization's (its plan's `concurrent_jobs`),
  claims the job with a lease, calls the provider, stores the outputs and settles the hold at the units the
  provider made. A transient failure
  queues the job again after `backoff(attempt)` (at least the provider's Retry-After); after STUDIO_MAX_ATTEMPTS
  it is `dead`, its hold released. A permanent one fails it at once, with the provider's reason.
- `jobs_reap` queues again (or declares dead) running jobs whose lease ran out: their worker died.
- `job_retry` / `job_discard`: the dead-letter view's actions.
"""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext as _
from django_tenants.utils import schema_context

from accounts.models import User
from billing.charges import Metered, charge_hold, charge_release, charge_settle
from billing.ledger import InsufficientCredits
from billing.models import Price, UsageEvent
from billing.ratelimits import Slot, slot_acquire, slot_release
from billing.selectors import entitlements_for, price_for
from tenants.models import Organization
from tenants.selectors import current_organization

from .catalog import InvalidOptions, StudioModel, studio_model
from .models import Job, Output
from .providers import StudioError, StudioRequest, StudioResult, provider_for

logger = logging.getLogger(__name__)


# billing.ratelimits slots: the organization's jobs at once (its plan's `concurrent_jobs`), and per kind over all.
SLOT_KIND = "studio"


class JobRefused(Exception):
    """A job that cannot be submitted; `code` and `status` for the API, `message` for the person."""

    def __init__(self, code: str, message: str, *, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _price(model: StudioModel, options: dict) -> Price:
    price = price_for(kind=Price.Kind.STUDIO, key=model.price_key(options))
    if price is None:
        raise JobRefused("no_price", _("This model is not priced yet; ask the administrator."), status=503)
    return price


def job_submit(*, organization: Organization, user: User | None, model_id: str, prompt: str, options: dict,
               api_key_id: int | None = None) -> Job:
    model = studio_model(model_id)
    if model is None:
        raise JobRefused("model_not_found", _("There is no Studio model '%(model)s'.") % {"model": model_id},
                         status=404)
    if not entitlements_for(organization).allows_model_tier(model.tier):
        raise JobRefused("model_not_allowed", _("Your plan does not include %(model)s. Upgrade to use it.")
                         % {"model": model.label}, status=403)
    prompt = (prompt or "").strip()
    if not prompt:
        raise JobRefused("invalid_prompt", _("Describe what to make."))
    if len(prompt) > model.max_prompt_chars:
        raise JobRefused("invalid_prompt", _("The prompt is too long (at most %(max)s characters).")
                         % {"max": model.max_prompt_chars})
    try:
        options = model.options_clean(options or {})
    except InvalidOptions as error:
        raise JobRefused("invalid_options", str(error)) from None
    price = _price(model, options)
    amount = price.per_unit * model.units(options)
    try:
        with transaction.atomic():
            job = Job.objects.create(kind=model.kind, provider=model.provider, model=model.id, prompt=prompt,
                                     options=options, credits_held=amount, billing_key=Job.new_billing_key(),
                                     created_by=user, api_key_id=api_key_id)
            charge_hold(organization=organization, amount=amount, key=job.billing_key,
                        description=f"Studio {model.id}", user=user)
            schema = connection.schema_name
            transaction.on_commit(lambda: job_enqueue(job.pk, schema=schema))
    except InsufficientCredits as error:
        raise JobRefused("insufficient_credits", _("Not enough credits: this job costs %(cost)s and the balance is "
                                                   "%(balance)s.") % {"cost": amount.normalize(),
                                                                      "balance": error.balance.normalize()},
                         status=402) from None
    return job


def job_enqueue(job_id: int, *, schema: str, countdown: float | None = None) -> None:
    from .tasks import job_run_task

    with schema_context(schema):
        job_run_task.apply_async((job_id,), countdown=countdown, queue=settings.STUDIO_QUEUE)


# ---------------------------------------------------------------- running


@dataclass(frozen=True)
class RunOutcome:
    status: str  # the job's status after this run, or "busy" (no slot: the job waits, no attempt counted)
    retry_in: float | None = None  # when to run it again


def backoff(attempt: int, *, retry_after: float | None = None) -> float:
    """Seconds before attempt `attempt + 1`: exponential from STUDIO_RETRY_BASE_SECONDS with full jitter on its
    upper half, never sooner than the provider asked."""
    base = settings.STUDIO_RETRY_BASE_SECONDS * (2 ** (attempt - 1))
    wait = base / 2 + random.uniform(0, base / 2)
    return max(wait, retry_after or 0.0)


def _slots(job: Job, organization: Organization) -> tuple[Slot, Slot] | None:
    lease = settings.STUDIO_LEASE_SECONDS
    kind_slot = slot_acquire(kind=f"studio-{job.kind}", organization_id=0, lease_seconds=lease,
                             limit=settings.STUDIO_CONCURRENCY[job.kind])
    if kind_slot is None:
        return None
    org_slot = slot_acquire(kind=SLOT_KIND, organization_id=organization.pk, lease_seconds=lease,
                            limit=entitlements_for(organization).concurrent_jobs)
    if org_slot is None:
        slot_release(kind_slot)
        return None
    return kind_slot, org_slot


def _claim(job_id: int, now) -> Job | None:
    """queued and due → running with a lease and one more attempt; None when another worker has it, or it is not
    due, or it is closed."""
    lease_until = now + timedelta(seconds=settings.STUDIO_LEASE_SECONDS)
    claimed = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED, run_after__lte=now).update(
        status=Job.Status.RUNNING, started_at=now, lease_until=lease_until, attempts=F("attempts") + 1)
    return Job.objects.get(pk=job_id) if claimed else None


def _api_key(organization: Organization, provider: str) -> str:
    """The organization's own key for `provider` (chat's, an unreadable one skipped), else the platform's."""
    from chat.catalog.selectors import provider_keys_for

    return (provider_keys_for(organization).get(provider)
            or settings.LLM_PROVIDERS.get(provider, {}).get("api_key", ""))


def job_run(job_id: int, *, now=None) -> RunOutcome:
    """Run one job once (see the module's docstring). Idempotent: a job another worker has, or already closed,
    is left alone."""
    now = now or timezone.now()
    job = Job.objects.filter(pk=job_id).first()
    if job is None or job.status != Job.Status.QUEUED:
        return RunOutcome(job.status if job else "missing")
    if job.run_after > now:
        return RunOutcome(job.status, retry_in=(job.run_after - now).total_seconds())
    organization = current_organization()
    slots = _slots(job, organization)
    if slots is None:
        return RunOutcome("busy", retry_in=settings.STUDIO_BUSY_RETRY_SECONDS)
    try:
        job = _claim(job_id, now)
        if job is None:
            return RunOutcome("claimed elsewhere")
        model = studio_model(job.model)
        request = StudioRequest(kind=job.kind, model=model.provider_model, prompt=job.prompt, options=job.options,
                                api_key=_api_key(organization, job.provider),
                                base_url=settings.LLM_PROVIDERS.get(job.provider, {}).get("base_url", ""))
        try:
            result = provider_for(job.provider).run(request)
        except StudioError as error:
            return _failed(job, error, organization=organization)
        _succeeded(job, result, organization=organization, model=model)
        return RunOutcome(Job.Status.SUCCEEDED)
    finally:
        for slot in slots:
            slot_release(slot)


@transaction.atomic
def _succeeded(job: Job, result: StudioResult, *, organization: Organization, model: StudioModel) -> None:
    if not Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).select_for_update().exists():
        return  # reaped meanwhile: another attempt owns it now
    price = _price(model, job.options)
    credits = price.per_unit * result.units
    for number, artifact in enumerate(result.artifacts, start=1):
        output = Output(job=job, content_type=artifact.content_type, size=len(artifact.content),
                        width=artifact.width, height=artifact.height, duration_seconds=artifact.duration_seconds,
                        text=artifact.text)
        output.file.save(f"{number}-{uuid.uuid4().hex[:8]}.{artifact.extension}", ContentFile(artifact.content),
                         save=False)
        output.save()
    charge_settle(organization=organization, key=job.billing_key, actual=credits, beyond_hold=False,
                  usage=Metered.at(price, kind=UsageEvent.Kind.STUDIO, key=model.price_key(job.options),
                                   request_id=job.billing_key, credits=min(credits, job.credits_held),
                                   user=job.created_by, api_key_id=job.api_key_id, units=result.units))
    Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED, finished_at=timezone.now(), lease_until=None,
                                         error="", credits_charged=min(credits, job.credits_held))


def _failed(job: Job, error: StudioError, *, organization: Organization) -> RunOutcome:
    """A provider's failure: queued again after a backoff while attempts remain (transient), else closed."""
    with transaction.atomic():
        if not Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).select_for_update().exists():
            return RunOutcome("reaped")
        if error.transient and job.attempts < settings.STUDIO_MAX_ATTEMPTS:
            wait = backoff(job.attempts, retry_after=error.retry_after)
            Job.objects.filter(pk=job.pk).update(status=Job.Status.QUEUED, lease_until=None, error=error.message,
                                                 run_after=timezone.now() + timedelta(seconds=wait))
            return RunOutcome(Job.Status.QUEUED, retry_in=wait)
        status = Job.Status.DEAD if error.transient else Job.Status.FAILED
        _close(job, status=status, error=error.message)
    logger.info("studio job %s %s after %s attempts: %s", job.pk, status, job.attempts, error.message)
    return RunOutcome(status)


def _close(job: Job, *, status: str, error: str = "") -> None:
    """Close an open job without output: its hold goes back."""
    charge_release(key=job.billing_key)
    Job.objects.filter(pk=job.pk).update(status=status, error=error[:500], lease_until=None,
                                         finished_at=timezone.now())


def jobs_reap(*, now=None) -> int:
    """Running jobs whose lease ran out (their worker died): queued again for their next attempt, or dead after
    the last. Returns how many it touched."""
    now = now or timezone.now()
    schema = connection.schema_name
    touched = 0
    for job_id in Job.objects.filter(status=Job.Status.RUNNING, lease_until__lt=now).values_list("pk", flat=True):
        with transaction.atomic():
            job = Job.objects.select_for_update().filter(pk=job_id, status=Job.Status.RUNNING,
                                                         lease_until__lt=now).first()
            if job is None:
                continue
            if job.attempts >= settings.STUDIO_MAX_ATTEMPTS:
                _close(job, status=Job.Status.DEAD, error=_("The worker running it stopped answering."))
            else:
                Job.objects.filter(pk=job.pk).update(status=Job.Status.QUEUED, lease_until=None, run_after=now,
                                                     error=_("The worker running it stopped answering."))
                transaction.on_commit(lambda job_id=job.pk: job_enqueue(job_id, schema=schema))
            touched += 1
    return touched


def job_retry(*, organization: Organization, job: Job, user: User | None) -> Job:
    """A dead (or failed) job, queued again from its first attempt with its worst case held again."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.status not in (Job.Status.DEAD, Job.Status.FAILED):
            raise JobRefused("not_retryable", _("Only dead or failed jobs can be retried."), status=409)
        job.billing_key = Job.new_billing_key()
        try:
            charge_hold(organization=organization, amount=job.credits_held, key=job.billing_key,
                        description=f"Studio {job.model} (retry)", user=user)
        except InsufficientCredits:
            raise JobRefused("insufficient_credits", _("Not enough credits to run this job again."),
                             status=402) from None
        job.status, job.attempts, job.error, job.run_after = Job.Status.QUEUED, 0, "", timezone.now()
        job.finished_at = job.lease_until = None
        job.save(update_fields=["billing_key", "status", "attempts", "error", "run_after", "finished_at",
                                "lease_until"])
        schema = connection.schema_name
        transaction.on_commit(lambda: job_enqueue(job.pk, schema=schema))
    return job


def job_discard(*, job: Job) -> bool:
    """Take a dead job off the dead-letter list (cancelled; its hold was already released)."""
    return bool(Job.objects.filter(pk=job.pk, status=Job.Status.DEAD).update(status=Job.Status.CANCELLED))
