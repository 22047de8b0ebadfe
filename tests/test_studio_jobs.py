"""Studio jobs end to end against a fake of OpenAI's image API at the wire: submit (validated, held), run (outputs
stored, settled at what the provider made, metered), permanent failures (at once, with the provider's reason),
transient ones (backoff, then dead), the reaper (a worker that died), and the dead-letter actions."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from django_tenants.utils import schema_context

from billing.ledger import credit_debit
from billing.models import BillingAccount, CreditReservation, Plan, UsageEvent
from billing.selectors import ledger_sum
from studio.models import Job
from studio.providers.openai import png_size
from studio.services import JobRefused, job_discard, job_retry, job_run, job_submit, jobs_reap
from tenants.audit.services import Actor
from tenants.services import organization_create

from .fake_studio import FakeOpenAIImages

MODEL = "openai/gpt-image-1"


@pytest.fixture
def images(settings):
    with FakeOpenAIImages() as fake:
        settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, "openai": {"base_url": fake.url, "api_key": fake.key}}
        settings.STUDIO_RETRY_BASE_SECONDS = 5
        yield fake


@pytest.fixture
def org(tenant_world, db):
    """A fresh organization on Pro (rolled back with the test), with its free grant: 100 credits."""
    org = organization_create(user=tenant_world["a"]["owner"], name=f"Studio {uuid.uuid4().hex[:6]}",
                              actor=Actor.system("tests"))
    BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code="pro"))
    return org


def balance(org) -> Decimal:
    return BillingAccount.objects.get(pk=org.pk).credits


def submit(org, **overrides) -> Job:
    fields = {"user": None, "model_id": MODEL, "prompt": "a lighthouse at dusk",
              "options": {"size": "1024x1024", "quality": "medium", "n": 2}, **overrides}
    return job_submit(organization=org, **fields)


@pytest.mark.django_db
def test_a_job_holds_its_price_runs_and_is_charged_what_the_provider_made(org, images):
    with schema_context(org.schema_name):
        job = submit(org)
        assert (job.status, job.credits_held) == (Job.Status.QUEUED, Decimal("8.4"))  # 2 × 4.2
        assert balance(org) == Decimal("91.6")
        outcome = job_run(job.pk)
        job.refresh_from_db()
        assert (outcome.status, job.status, job.attempts) == ("succeeded", Job.Status.SUCCEEDED, 1)
        outputs = list(job.outputs.all())
        assert [(o.content_type, o.width, o.height) for o in outputs] == [("image/png", 16, 16)] * 2
        with outputs[0].file.open("rb") as stored:
            assert png_size(stored.read()) == (16, 16)
        assert outputs[0].file.name.startswith(f"{org.schema_name}/studio/")
    sent = images.requests[-1]
    assert sent["body"] == {"model": "gpt-image-1", "prompt": "a lighthouse at dusk", "n": 2, "size": "1024x1024",
                            "quality": "medium"}
    assert job.credits_charged == Decimal("8.4") and balance(org) == Decimal("91.6") == ledger_sum(organization=org)
    event = UsageEvent.objects.get(organization=org, request_id=job.billing_key)
    assert (event.kind, event.key, event.units, event.credits) == (
        "studio", "openai/gpt-image-1:medium:1024x1024", 2, Decimal("8.4"))
    assert CreditReservation.objects.get(key=job.billing_key).status == CreditReservation.Status.SETTLED


@pytest.mark.django_db
def test_a_refused_prompt_fails_at_once_with_the_providers_reason_and_costs_nothing(org, images):
    images.fail_next(400, code="content_policy_violation",
                     message="Your request was rejected as a result of our safety system.")
    with schema_context(org.schema_name):
        job = submit(org)
        assert job_run(job.pk).status == Job.Status.FAILED
        job.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.FAILED, 1)
    assert job.error == "Your request was rejected as a result of our safety system."
    assert balance(org) == Decimal("100") == ledger_sum(organization=org)
    assert not UsageEvent.objects.filter(request_id=job.billing_key).exists()


@pytest.mark.django_db
def test_transient_failures_back_off_then_the_job_is_dead_and_can_be_retried_from_the_dead_letters(org, images):
    images.fail_next(503, message="The engine is currently overloaded.", times=2)
    images.fail_next(429, message="Rate limit reached.", retry_after=40)
    with schema_context(org.schema_name):
        job = submit(org)
        now = timezone.now()
        first = job_run(job.pk, now=now)
        job.refresh_from_db()
        assert (first.status, job.status, job.attempts) == ("queued", Job.Status.QUEUED, 1)
        assert 2.5 <= first.retry_in <= 5 and job.run_after > now  # base 5 s, jitter on its upper half
        assert job_run(job.pk, now=now).retry_in > 0  # not due yet: nothing sent, no attempt counted
        assert Job.objects.get(pk=job.pk).attempts == 1 and len(images.requests) == 1
        second = job_run(job.pk, now=now + timedelta(seconds=6))
        assert second.status == "queued" and 5 <= second.retry_in <= 10
        third = job_run(job.pk, now=now + timedelta(seconds=20))
        job.refresh_from_db()
        assert (third.status, job.status, job.attempts) == ("dead", Job.Status.DEAD, 3)
        assert job.error == "Rate limit reached."
        assert balance(org) == Decimal("100")  # the hold went back
        retried = job_retry(organization=org, job=job, user=None)
        assert (retried.status, retried.attempts) == (Job.Status.QUEUED, 0)
        assert balance(org) == Decimal("91.6")
        assert job_run(job.pk).status == "succeeded"
    assert balance(org) == Decimal("91.6") == ledger_sum(organization=org)


@pytest.mark.django_db
def test_a_job_whose_worker_died_is_queued_again_and_dead_after_its_last_attempt(org, images):
    with schema_context(org.schema_name):
        job = submit(org)
        past = timezone.now() - timedelta(hours=1)
        Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, attempts=1, lease_until=past)
        assert jobs_reap() == 1
        job.refresh_from_db()
        assert (job.status, job.lease_until) == (Job.Status.QUEUED, None)
        Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, attempts=3, lease_until=past)
        assert jobs_reap() == 1
        job.refresh_from_db()
        assert job.status == Job.Status.DEAD and "stopped answering" in job.error
        assert balance(org) == Decimal("100")
        assert jobs_reap() == 0
        assert job_discard(job=job) is True
        assert Job.objects.get(pk=job.pk).status == Job.Status.CANCELLED


@pytest.mark.django_db
def test_bad_submissions_are_refused_clearly_and_write_nothing(org, images):
    with schema_context(org.schema_name):
        cases = [
            ({"model_id": "openai/nope"}, "model_not_found", 404),
            ({"prompt": "   "}, "invalid_prompt", 400),
            ({"options": {"size": "10x10"}}, "invalid_options", 400),
            ({"options": {"n": 9}}, "invalid_options", 400),
            ({"options": {"style": "vivid"}}, "invalid_options", 400),
        ]
        for overrides, code, status in cases:
            with pytest.raises(JobRefused) as refused:
                submit(org, **overrides)
            assert (refused.value.code, refused.value.status) == (code, status), overrides
            assert refused.value.message
        assert not Job.objects.exists()
    assert balance(org) == Decimal("100")
    BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code="free"))
    with schema_context(org.schema_name), pytest.raises(JobRefused) as refused:
        submit(org)
    assert refused.value.code == "model_not_allowed"
    BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code="pro"))
    credit_debit(organization=org, amount=Decimal("95"), key=f"drain:{org.pk}")
    with schema_context(org.schema_name), pytest.raises(JobRefused) as refused:
        submit(org)
    assert (refused.value.code, refused.value.status) == ("insufficient_credits", 402)
    assert "8.4" in refused.value.message and "5" in refused.value.message
    with schema_context(org.schema_name):
        assert not Job.objects.exists()
    assert balance(org) == Decimal("5") == ledger_sum(organization=org)
