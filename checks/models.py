"""CNPJ targets, their checks and reports, bulk batches and monitoring alerts (tenant schema).

A target is a company an organization follows (one row per CNPJ). Each check asks the
registries (or the shared cache) about it and, when the company was found, writes a report:
the normalized record (checks.registries.normalize, LGPD-masked), its risk signals and
provenance. Reports are never edited; a new check writes a new one, and the history of a
target is its reports.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from checks.cnpj import format_cnpj

# Users live in `public`, these rows in each organization's schema: no database constraint
# across schemas (see chat.models for the same choice).
USER_FK = {"on_delete": models.DO_NOTHING, "db_constraint": False, "related_name": "+", "null": True,
           "blank": True}


class RiskLevel(models.TextChoices):
    LOW = "LOW", _("Low")
    MEDIUM = "MEDIUM", _("Medium")
    HIGH = "HIGH", _("High")
    BLOCKER = "BLOCKER", _("Blocker")


class ChecksSettings(models.Model):
    """The organization's choices for checks: one row per schema (`checks_settings()` makes it)."""

    thresholds = models.JSONField(_("risk signal thresholds"), default=dict, blank=True)
    retention_days = models.PositiveIntegerField(
        _("keep reports for (days)"), default=365,
        help_text=_("Older reports are deleted every day; each target keeps its latest one."))
    alert_emails = models.BooleanField(_("email alerts to admins"), default=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"checks settings ({self.retention_days} days)"


class ChecksMonth(models.Model):
    """How many checks the organization requested in a month (UTC), a failed or cancelled one given back: what
    its plan's monthly quota counts. Moved in the statement that writes the check, so the quota costs one row,
    never a count of the month's checks (deleting a target or old reports gives no place back). `quota` is the
    plan's limit as of the latest check counted (None: unlimited): the constraint fails a check over it however
    many are requested at once."""

    month = models.DateField(primary_key=True)  # its first day
    requested = models.PositiveIntegerField(default=0)
    quota = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(quota__isnull=True) | models.Q(requested__lte=models.F("quota")),
                                   name="checks_month_within_quota"),
        ]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m}: {self.requested} of {self.quota or '∞'}"


class Target(models.Model):
    class Schedule(models.TextChoices):
        NONE = "none", _("Not monitored")
        DAILY = "daily", _("Daily")
        WEEKLY = "weekly", _("Weekly")

    cnpj = models.CharField(_("CNPJ"), max_length=14, unique=True)  # canonical: [0-9A-Z]{12}[0-9]{2}
    label = models.CharField(_("label"), max_length=200, blank=True)
    tags = models.JSONField(_("tags"), default=list, blank=True)
    schedule = models.CharField(_("monitoring"), max_length=10, choices=Schedule.choices, default=Schedule.NONE)
    next_check_at = models.DateTimeField(null=True, blank=True)
    # The latest check's state and the latest report's risk, for lists without joins.
    status = models.CharField(max_length=12, blank=True)
    risk_level = models.CharField(max_length=10, choices=RiskLevel.choices, blank=True)
    company_name = models.CharField(max_length=200, blank=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, **USER_FK)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="target_list_idx"),
            models.Index(fields=["next_check_at"], condition=~models.Q(schedule="none"), name="target_due_idx"),
        ]

    def __str__(self) -> str:
        return self.label or self.company_name or self.cnpj_formatted

    @property
    def cnpj_formatted(self) -> str:
        return format_cnpj(self.cnpj)


class Batch(models.Model):
    """A CSV of CNPJs checked in bulk: one check per distinct valid CNPJ."""

    class Status(models.TextChoices):
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        CANCELLED = "cancelled", _("Cancelled")

    filename = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    rows = models.PositiveIntegerField(default=0)  # data rows read
    duplicates = models.PositiveIntegerField(default=0)
    invalid_rows = models.JSONField(default=list, blank=True)  # [{"line", "value", "code", "reason"}]
    total = models.PositiveIntegerField(default=0)  # checks created
    cnpjs = models.JSONField(default=list, blank=True)  # the distinct valid CNPJs, in file order: what to check
    error = models.CharField(max_length=255, blank=True)  # why it stopped before checking them all (credits)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, **USER_FK)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.filename or f"#{self.pk}"


class Check(models.Model):
    """One question to the registries about a target: pending → running → succeeded | not_found | failed.

    A run that finds every provider rate-limited goes back to pending with `run_after` (throttled
    re-scheduling); transient failures are retried with backoff before the check fails.
    """

    class Status(models.TextChoices):
        PENDING = "pending", _("Queued")
        RUNNING = "running", _("Running")
        SUCCEEDED = "succeeded", _("Found")
        NOT_FOUND = "not_found", _("Not found")
        FAILED = "failed", _("Failed")

    FINAL = (Status.SUCCEEDED, Status.NOT_FOUND, Status.FAILED)

    class Source(models.TextChoices):
        MANUAL = "manual", _("Manual")
        BULK = "bulk", _("Bulk")
        MONITOR = "monitor", _("Monitoring")
        API = "api", _("API")

    target = models.ForeignKey(Target, on_delete=models.CASCADE, related_name="checks")
    batch = models.ForeignKey(Batch, on_delete=models.SET_NULL, null=True, blank=True, related_name="checks")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.MANUAL)
    refresh = models.BooleanField(default=False)  # bypass the cache (never the rate limits)
    cache_hit = models.BooleanField(default=False)
    provider = models.CharField(max_length=20, blank=True)
    runs = models.PositiveSmallIntegerField(default=0)  # tries that reached the registries
    run_after = models.DateTimeField(null=True, blank=True)  # throttled or backing off until then
    error = models.CharField(max_length=255, blank=True)
    credits = models.DecimalField(max_digits=18, decimal_places=6, default=0)
    billing_key = models.CharField(max_length=120, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, **USER_FK)
    api_key_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["target", "-created_at"], name="check_target_idx"),
            models.Index(fields=["batch", "status"], name="check_batch_idx"),
            models.Index(fields=["created_at"], name="check_month_idx"),
            # The few checks not done yet, out of an organization's whole history: what checks_feed counts and feeds.
            models.Index(fields=["source", "status", "run_after"], name="check_unfinished_idx",
                         condition=models.Q(status__in=["pending", "running"])),
        ]

    def __str__(self) -> str:
        return f"{self.target_id}#{self.pk} {self.status}"

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL


class Attempt(models.Model):
    """One provider asked during a check: who, what it said, how long it took."""

    check_run = models.ForeignKey(Check, on_delete=models.CASCADE, related_name="attempts")
    provider = models.CharField(max_length=20)
    outcome = models.CharField(max_length=20)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.provider}: {self.outcome}"


class Report(models.Model):
    target = models.ForeignKey(Target, on_delete=models.CASCADE, related_name="reports")
    check_run = models.OneToOneField(Check, on_delete=models.SET_NULL, null=True, blank=True, related_name="report")
    data = models.JSONField()  # the normalized record (schema v1), masked
    signals = models.JSONField(default=list)  # [{"code", "severity", "title", "explanation", "evidence"}]
    risk_level = models.CharField(max_length=10, choices=RiskLevel.choices)
    provider = models.CharField(max_length=20)
    data_date = models.DateField(null=True, blank=True)  # how recent the registry's source data is
    fetched_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["target", "-created_at"], name="report_history_idx")]

    def __str__(self) -> str:
        return f"{self.target_id} {self.created_at:%Y-%m-%d} {self.risk_level}"


class Alert(models.Model):
    """A monitored target changed: its status, partners or risk level."""

    class Kind(models.TextChoices):
        STATUS = "status", _("Registration status changed")
        PARTNERS = "partners", _("Partners changed")
        RISK = "risk", _("Risk level changed")

    target = models.ForeignKey(Target, on_delete=models.CASCADE, related_name="alerts")
    report = models.ForeignKey(Report, on_delete=models.CASCADE, related_name="alerts")
    previous_report = models.ForeignKey(Report, on_delete=models.SET_NULL, null=True, related_name="+")
    kinds = models.JSONField(default=list)  # Kind values
    summary = models.JSONField(default=dict)  # report_diff(...).as_dict() and the risk levels
    created_at = models.DateTimeField(default=timezone.now)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["-created_at"], name="alert_list_idx")]

    def __str__(self) -> str:
        return f"{self.target_id}: {', '.join(self.kinds)}"
