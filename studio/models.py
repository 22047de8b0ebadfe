"""Generation jobs and their outputs, in each organization's schema.

A job goes `queued → running → succeeded | failed | dead | cancelled`: `failed` is a permanent refusal (the
provider's reason shown, nothing charged), `dead` a job whose transient failures exhausted its attempts (the
dead-letter view retries or discards it). A running job holds a lease (`lease_until`) that its worker renews;
a worker that dies stops renewing and the reaper queues the job again (studio.services.jobs_reap).
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import connection, models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from billing.models import CREDIT_FIELD, ZERO


class Job(models.Model):
    class Kind(models.TextChoices):
        IMAGE = "image", _("Image")
        SPEECH = "speech", _("Speech")
        TRANSCRIPTION = "transcription", _("Transcription")
        VIDEO = "video", _("Video")

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")
        DEAD = "dead", _("Dead (retries exhausted)")
        CANCELLED = "cancelled", _("Cancelled")

    OPEN = (Status.QUEUED, Status.RUNNING)

    kind = models.CharField(max_length=16, choices=Kind.choices)
    provider = models.CharField(max_length=20)
    model = models.CharField(max_length=120)  # the studio catalog's id, e.g. "openai/gpt-image-1"
    prompt = models.TextField(blank=True)
    options = models.JSONField(default=dict, blank=True)  # size, quality, voice, format… (validated by the catalog)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True)
    credits_held = models.DecimalField(**CREDIT_FIELD, default=ZERO)
    credits_charged = models.DecimalField(**CREDIT_FIELD, default=ZERO)
    billing_key = models.CharField(max_length=100, unique=True)
    # No database constraint into `public` (as chat's and checks' rows): deleting a person never touches schemas.
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.DO_NOTHING,
                                   db_constraint=False, related_name="+")
    api_key_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    run_after = models.DateTimeField(default=timezone.now)  # a retry waits for its backoff
    started_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "run_after"], name="studio_job_due_idx"),
                   models.Index(fields=["status", "lease_until"], name="studio_job_lease_idx")]

    def __str__(self) -> str:
        return f"{self.kind} {self.model} ({self.status})"

    @staticmethod
    def new_billing_key() -> str:
        return f"studio:{connection.schema_name}:{secrets.token_hex(12)}"


def output_path(instance: Output, filename: str) -> str:
    # The schema in the path keeps each organization's files apart (locally and in S3).
    return f"{connection.schema_name}/studio/{timezone.now():%Y/%m}/{instance.job_id}/{filename}"


class Output(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="outputs")
    file = models.FileField(upload_to=output_path, max_length=300)
    content_type = models.CharField(max_length=60)
    size = models.PositiveBigIntegerField()
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    duration_seconds = models.FloatField(null=True, blank=True)
    text = models.TextField(blank=True)  # a transcription's text
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.job_id}: {self.file.name}"
