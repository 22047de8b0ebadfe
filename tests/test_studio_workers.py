"""The Studio's per-kind cap holds across worker processes: two real Celery workers (4 threads each) take 8 image
jobs queued at once, and the fake of OpenAI's image API never serves more than STUDIO_CONCURRENCY_IMAGE (2) of
them at the same time; every job still ends succeeded, charged once."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import pytest
from django_tenants.utils import schema_context

from billing.models import BillingAccount, Plan
from billing.selectors import ledger_sum
from config.celery import app
from studio.models import Job
from studio.services import job_submit
from tenants.audit.services import Actor
from tenants.services import organization_create

from .fake_studio import FakeOpenAIImages
from .orgs import organization_drop
from .servers import start_celery_worker

JOBS = 8
CAP = 2


@pytest.fixture
def committed_org(tenant_world, django_db_blocker):
    with django_db_blocker.unblock():
        org = organization_create(user=tenant_world["b"]["owner"], name=f"Studio {uuid.uuid4().hex[:6]}",
                                  actor=Actor.system("tests"))
        BillingAccount.objects.filter(pk=org.pk).update(plan=Plan.objects.get(code="pro"))
        yield org
        organization_drop(org)


def test_two_workers_never_run_more_image_jobs_at_once_than_the_cap(committed_org, django_db_blocker, settings,
                                                                     monkeypatch, test_database_url, redis_url,
                                                                     tmp_path):
    queue = f"studio-{uuid.uuid4().hex[:8]}"  # this test's workers only
    settings.STUDIO_QUEUE = queue
    monkeypatch.setitem(app.conf, "task_always_eager", False)  # the workers run them, not this process
    with FakeOpenAIImages(delay=0.4) as images:
        env = {"OPENAI_BASE_URL": images.url, "OPENAI_API_KEY": images.key, "STUDIO_QUEUE": queue,
               "STUDIO_CONCURRENCY_IMAGE": str(CAP),  # Pro runs 3 of an organization's jobs at once: CAP binds
               "STUDIO_BUSY_RETRY_SECONDS": "0.2"}
        workers = [start_celery_worker(database_url=test_database_url, redis_url=redis_url, workdir=tmp_path / name,
                                       email_dir=tmp_path, queues=queue, env_extra=env) for name in ("w1", "w2")]
        try:
            with django_db_blocker.unblock(), schema_context(committed_org.schema_name):
                jobs = [job_submit(organization=committed_org, user=None, model_id="openai/gpt-image-1",
                                   prompt=f"picture {number}", options={"size": "1024x1024", "quality": "low"})
                        for number in range(JOBS)]
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    statuses = set(Job.objects.filter(pk__in=[job.pk for job in jobs]).values_list("status",
                                                                                                   flat=True))
                    if statuses == {Job.Status.SUCCEEDED}:
                        break
                    time.sleep(0.3)
                done = Job.objects.filter(pk__in=[job.pk for job in jobs])
                assert {job.status for job in done} == {Job.Status.SUCCEEDED}
                assert all(job.attempts == 1 and job.outputs.count() == 1 for job in done)
                ran_by = [worker.process.log().count(": 'succeeded'") for worker in workers]
        finally:
            for worker in workers:
                worker.process.stop()
    assert images.max_running == CAP  # the cap was reached, never passed
    assert len(images.requests) == JOBS
    assert all(count > 0 for count in ran_by), ran_by  # both workers took jobs
    with django_db_blocker.unblock():
        account = BillingAccount.objects.get(pk=committed_org.pk)
        assert account.credits == Decimal("100") - JOBS * Decimal("1.1") == ledger_sum(organization=committed_org)
