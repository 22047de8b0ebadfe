"""Plans, prices and the credit ledger. All in `public`."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

# Credits are exact decimals: six places hold a single token at any realistic price.
CREDIT_FIELD = {"max_digits": 20, "decimal_places": 6}
ZERO = Decimal("0")


class Plan(models.Model):
    """A plan and its entitlements. Code gates on entitlements, never on `code` or `name`."""

    code = models.SlugField(_("code"), max_length=30, unique=True)
    name = models.CharField(_("name"), max_length=60)
    description = models.CharField(_("description"), max_length=255, blank=True)
    monthly_price_cents = models.PositiveIntegerField(_("monthly price (cents)"), default=0)
    currency = models.CharField(_("currency"), max_length=3, default="usd")
    stripe_price_id = models.CharField(_("Stripe price id"), max_length=100, blank=True)
    is_public = models.BooleanField(_("shown on the pricing page"), default=True)
    sort_order = models.PositiveSmallIntegerField(default=0)

    model_tiers = models.JSONField(_("model tiers allowed"), default=list, blank=True)
    requests_per_minute = models.PositiveIntegerField(_("requests per minute"))
    tokens_per_minute = models.PositiveIntegerField(_("tokens per minute"))
    monthly_credits = models.DecimalField(_("monthly credit grant"), **CREDIT_FIELD, default=ZERO)
    seats = models.PositiveIntegerField(_("seats"), null=True, blank=True, help_text=_("Empty: unlimited."))
    checks_per_month = models.PositiveIntegerField(
        _("checks per month"), null=True, blank=True, help_text=_("Empty: unlimited.")
    )
    max_upload_mb = models.PositiveIntegerField(_("max upload size (MB)"))
    api_access = models.BooleanField(_("API access"), default=False)
    webhooks = models.BooleanField(_("webhooks"), default=False)
    audit_retention_days = models.PositiveIntegerField(_("audit log retention (days)"))
    metered_overage = models.BooleanField(_("metered overage"), default=False)
    # Fair sharing: one organization cannot take every worker, nor one member every send.
    concurrent_answers = models.PositiveSmallIntegerField(
        _("chat answers generated at once"), default=4, help_text=_("More wait their turn in the queue."))
    concurrent_checks = models.PositiveSmallIntegerField(
        _("CNPJ checks run at once"), default=4, help_text=_("More wait their turn in the queue."))
    messages_per_minute = models.PositiveSmallIntegerField(
        _("chat messages per minute per member"), default=20)
    concurrent_jobs = models.PositiveSmallIntegerField(
        _("Studio jobs run at once"), default=2, help_text=_("More wait their turn in the queue."))

    class Meta:
        ordering = ["sort_order", "pk"]
        verbose_name = _("plan")
        verbose_name_plural = _("plans")

    def __str__(self) -> str:
        return self.name

    @property
    def monthly_price(self) -> Decimal:
        return Decimal(self.monthly_price_cents) / 100


class Price(models.Model):
    """What one unit of usage costs in credits, from `effective_from` on.

    Model prices are per million input and output tokens; check prices per check; Studio prices per unit
    (an image of a size and quality: studio.catalog). Usage
    events copy the prices they were charged at, so a new row never rewrites history.
    """

    class Kind(models.TextChoices):
        MODEL = "model", _("Model")
        CHECK = "check", _("Check")
        STUDIO = "studio", _("Studio")

    kind = models.CharField(max_length=10, choices=Kind.choices)
    key = models.CharField(_("model id or check kind"), max_length=120)
    input_per_million = models.DecimalField(**CREDIT_FIELD, default=ZERO)
    output_per_million = models.DecimalField(**CREDIT_FIELD, default=ZERO)
    per_unit = models.DecimalField(**CREDIT_FIELD, default=ZERO)
    effective_from = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["kind", "key", "effective_from"], name="price_unique_kind_key_from")
        ]
        ordering = ["kind", "key", "-effective_from"]
        verbose_name = _("price")
        verbose_name_plural = _("prices")

    def __str__(self) -> str:
        return f"{self.kind}:{self.key} from {self.effective_from:%Y-%m-%d}"


class BillingAccount(models.Model):
    """An organization's plan, subscription state and credit balance.

    `credits` only ever changes together with a `CreditEntry`, by a conditional UPDATE
    (see billing.ledger), so it never goes below zero and always equals the ledger's sum.
    """

    class Status(models.TextChoices):
        ACTIVE = "active", _("Active")
        PAST_DUE = "past_due", _("Past due")
        CANCELED = "canceled", _("Canceled")

    organization = models.OneToOneField(
        "tenants.Organization", primary_key=True, on_delete=models.CASCADE, related_name="billing"
    )
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="accounts")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    credits = models.DecimalField(_("credits"), **CREDIT_FIELD, default=ZERO)
    stripe_customer_id = models.CharField(max_length=100, blank=True)
    # Why the plan is what it is when no subscription decides it ("Development demo", a contract): set by
    # `plan_assign`, cleared when a Stripe subscription changes the plan.
    plan_note = models.CharField(_("plan note"), max_length=100, blank=True)
    # A `credits.low` event is sent when a movement takes the balance from at least this to below it; empty: never.
    # Read by the ledger's statements with the balance (billing.ledger), so it costs no round trip.
    credits_low_threshold = models.DecimalField(_("low credits threshold"), **CREDIT_FIELD, null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(credits__gte=0), name="billing_credits_not_negative")]
        verbose_name = _("billing account")
        verbose_name_plural = _("billing accounts")

    def __str__(self) -> str:
        return f"{self.organization} ({self.plan})"


class CreditReservation(models.Model):
    """Credits held for work whose cost is known only afterwards (a streamed answer)."""

    class Status(models.TextChoices):
        OPEN = "open", _("Open")
        SETTLED = "settled", _("Settled")
        RELEASED = "released", _("Released")

    organization = models.ForeignKey("tenants.Organization", on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200, unique=True)
    amount = models.DecimalField(**CREDIT_FIELD)
    actual = models.DecimalField(**CREDIT_FIELD, null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "created_at"], name="reservation_open_idx")]

    def __str__(self) -> str:
        return f"{self.key} ({self.status})"


class CreditEntry(models.Model):
    """One movement of credits. Append-only; `idempotency_key` makes every movement happen once."""

    class Kind(models.TextChoices):
        GRANT = "grant", _("Plan grant")
        PURCHASE = "purchase", _("Purchase")
        DEBIT = "debit", _("Usage")
        RESERVE = "reserve", _("Reserved")
        RELEASE = "release", _("Released")
        REFUND = "refund", _("Refund")
        ADJUSTMENT = "adjustment", _("Adjustment")

    organization = models.ForeignKey("tenants.Organization", on_delete=models.CASCADE, related_name="credit_entries")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    amount = models.DecimalField(**CREDIT_FIELD)
    balance_after = models.DecimalField(**CREDIT_FIELD)
    idempotency_key = models.CharField(max_length=200, unique=True)
    reservation = models.ForeignKey(
        CreditReservation, null=True, blank=True, on_delete=models.PROTECT, related_name="entries"
    )
    description = models.CharField(max_length=255, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "-created_at"], name="credit_entry_org_time_idx")]
        verbose_name = _("credit entry")
        verbose_name_plural = _("credit entries")

    def __str__(self) -> str:
        return f"{self.kind} {self.amount:+} → {self.balance_after}"


class UsageEvent(models.Model):
    """One billable action, with the unit prices it was charged at. Append-only."""

    class Kind(models.TextChoices):
        MODEL = "model", _("AI model")
        CHECK = "check", _("CNPJ check")
        STUDIO = "studio", _("Studio generation")

    organization = models.ForeignKey("tenants.Organization", on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    api_key_id = models.BigIntegerField(null=True, blank=True)  # the API issue adds the key model
    kind = models.CharField(max_length=10, choices=Kind.choices)
    key = models.CharField(_("model id or check kind"), max_length=120)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    units = models.PositiveIntegerField(default=0)
    credits = models.DecimalField(**CREDIT_FIELD)
    input_per_million = models.DecimalField(**CREDIT_FIELD, default=ZERO)
    output_per_million = models.DecimalField(**CREDIT_FIELD, default=ZERO)
    per_unit = models.DecimalField(**CREDIT_FIELD, default=ZERO)
    request_id = models.CharField(max_length=128)
    occurred_at = models.DateTimeField(default=timezone.now)
    # Set when the rollup has folded this event into DailyUsage (bookkeeping, not usage data).
    rolled_up_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "request_id"], name="usage_event_once_per_request")
        ]
        indexes = [
            models.Index(fields=["organization", "occurred_at"], name="usage_event_org_time_idx"),
            models.Index(fields=["id"], condition=models.Q(rolled_up_at__isnull=True), name="usage_event_pending_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind}:{self.key} {self.credits} credits"


class DailyUsage(models.Model):
    """Usage per organization × day × kind/key × user, rebuilt from UsageEvent by billing.usage."""

    organization = models.ForeignKey("tenants.Organization", on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    kind = models.CharField(max_length=10, choices=UsageEvent.Kind.choices)
    key = models.CharField(max_length=120)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    events = models.PositiveIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    units = models.BigIntegerField(default=0)
    credits = models.DecimalField(**CREDIT_FIELD, default=ZERO)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "day", "kind", "key", "user"], nulls_distinct=False,
                                    name="daily_usage_unique_bucket")
        ]
        indexes = [models.Index(fields=["organization", "day"], name="daily_usage_org_day_idx")]
        verbose_name = _("daily usage")
        verbose_name_plural = _("daily usage")

    def __str__(self) -> str:
        return f"{self.day} {self.organization_id} {self.kind}:{self.key} {self.credits}"


class MeterReport(models.Model):
    """One organization-day of credits reported to a Stripe Billing meter (metered overage).

    The identifier is sent to Stripe, which refuses a second event with it: a retry after
    a timeout can never count the same day twice.
    """

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        SENT = "sent", _("Sent")

    organization = models.ForeignKey("tenants.Organization", on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    credits = models.DecimalField(**CREDIT_FIELD)
    identifier = models.CharField(max_length=100, unique=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "day"], name="meter_report_once_per_day")]

    def __str__(self) -> str:
        return self.identifier
