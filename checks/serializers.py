"""Shapes of checks, targets, reports and alerts in the API (checks.api)."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext_lazy as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing.serializers import credits_field

from .models import Alert, Attempt, Check, Report, RiskLevel, Target
from .signals import Severity

LABEL_MAX = 200
TAG_MAX = 40
TAGS_MAX = 20


def report_url(report_id: int) -> str:
    return reverse("api_report", args=[report_id])


def check_url(check_id: int) -> str:
    return reverse("api_check", args=[check_id])


def absolute(serializer: serializers.Serializer, path: str) -> str:
    """`path` as an absolute URL when the serializer has the request (API answers), else as is."""
    request = serializer.context.get("request")
    return request.build_absolute_uri(path) if request is not None else path


def signal_localized(signal: dict[str, Any], language: str | None = None) -> dict[str, Any]:
    """A stored signal with its title and explanation in `language` (default: the request's), else English."""
    texts = signal.get("texts") or {}
    language = (language or translation.get_language() or "en").lower()
    chosen = (texts.get(language) or texts.get(language.split("-")[0])
              or next((text for code, text in texts.items() if code.startswith(language.split("-")[0])), None)
              or texts.get("en") or next(iter(texts.values()), {}))
    return {"code": signal.get("code", ""), "severity": signal.get("severity", ""),
            "title": chosen.get("title", ""), "explanation": chosen.get("explanation", ""),
            "evidence": signal.get("evidence") or {}}


# ---------------------------------------------------------------- reports


class SignalSerializer(serializers.Serializer):
    code = serializers.CharField(help_text=_("The rule that fired, e.g. SITUACAO_BAIXADA."))
    severity = serializers.ChoiceField(choices=[(s.value, s.value) for s in Severity])
    title = serializers.CharField(help_text=_("In the request's language (Accept-Language: en or pt-br)."))
    explanation = serializers.CharField(help_text=_("In the request's language (Accept-Language: en or pt-br)."))
    evidence = serializers.DictField(help_text=_("The report fields and values that triggered it, keyed by path."))


class ReportSummarySerializer(serializers.ModelSerializer):
    """A report in lists: its risk and where to read the rest."""

    target = serializers.IntegerField(source="target_id", read_only=True)
    risk_level = serializers.ChoiceField(choices=RiskLevel.choices, read_only=True)
    company_name = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField(help_text=_("GET it for the data and the signals."))

    class Meta:
        model = Report
        fields = ["id", "target", "risk_level", "company_name", "provider", "data_date", "fetched_at", "created_at",
                  "url"]
        read_only_fields = fields

    def get_company_name(self, report: Report) -> str:
        return str((report.data or {}).get("razao_social") or "")

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, report: Report) -> str:
        return absolute(self, report_url(report.pk))


class ReportSerializer(ReportSummarySerializer):
    """A report: the normalized record as stored (LGPD-masked), its risk signals and provenance."""

    check = serializers.IntegerField(source="check_run_id", read_only=True, allow_null=True,
                                     help_text=_("The check that wrote it (null once that check was purged)."))
    data = serializers.DictField(read_only=True, help_text=_("The normalized company record (schema v1)."))
    signals = serializers.SerializerMethodField()

    class Meta(ReportSummarySerializer.Meta):
        fields = [*ReportSummarySerializer.Meta.fields, "check", "data", "signals"]
        read_only_fields = fields

    @extend_schema_field(SignalSerializer(many=True))
    def get_signals(self, report: Report) -> list[dict[str, Any]]:
        return [signal_localized(signal) for signal in report.signals or ()]


class FieldChangeSerializer(serializers.Serializer):
    path = serializers.CharField(help_text=_("e.g. situacao.code, qsa[NAME|49], cnaes_secundarios[4635401]."))
    label = serializers.CharField(help_text=_("In the request's language."))
    kind = serializers.ChoiceField(choices=[("changed", "changed"), ("added", "added"), ("removed", "removed")])
    old = serializers.JSONField(allow_null=True)
    new = serializers.JSONField(allow_null=True)
    item = serializers.CharField(allow_null=True, help_text=_("The partner, CNAE or registration it belongs to."))


class ReportDiffSerializer(serializers.Serializer):
    old_report = serializers.IntegerField(help_text=_("The older of the two reports."))
    new_report = serializers.IntegerField(help_text=_("The newer of the two reports."))
    changes = FieldChangeSerializer(many=True)
    status_changed = serializers.BooleanField()
    partners_changed = serializers.BooleanField()
    risk_level_change = serializers.ChoiceField(choices=[("raised", "raised"), ("lowered", "lowered")],
                                                allow_null=True)


# ---------------------------------------------------------------- checks


class AttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = Attempt
        fields = ["provider", "outcome", "http_status", "latency_ms"]
        read_only_fields = fields


class CheckSerializer(serializers.ModelSerializer):
    """A check in lists: its state, what it cost, and its report's summary once found."""

    target = serializers.IntegerField(source="target_id", read_only=True)
    cnpj = serializers.CharField(source="target.cnpj", read_only=True)
    status = serializers.ChoiceField(choices=Check.Status.choices, read_only=True,
                                     help_text=_("pending → running → succeeded | not_found | failed."))
    source = serializers.ChoiceField(choices=Check.Source.choices, read_only=True)
    credits = credits_field(help_text=_("What it cost (0 until it finishes; a failed check costs nothing)."))
    attempts = AttemptSerializer(many=True, read_only=True)
    report = serializers.SerializerMethodField()
    status_url = serializers.SerializerMethodField(help_text=_("GET it until the status is final."))

    class Meta:
        model = Check
        fields = ["id", "target", "cnpj", "status", "source", "refresh", "cache_hit", "provider", "credits", "error",
                  "created_at", "started_at", "finished_at", "attempts", "report", "status_url"]
        read_only_fields = fields

    report_serializer = ReportSummarySerializer

    @staticmethod
    def report_of(check: Check) -> Report | None:
        try:
            return check.report
        except Report.DoesNotExist:
            return None

    @extend_schema_field(ReportSummarySerializer(allow_null=True))
    def get_report(self, check: Check) -> dict[str, Any] | None:
        report = self.report_of(check)
        return self.report_serializer(report, context=self.context).data if report is not None else None

    @extend_schema_field(OpenApiTypes.URI)
    def get_status_url(self, check: Check) -> str:
        return absolute(self, check_url(check.pk))


class CheckDetailSerializer(CheckSerializer):
    """One check, with its whole report (data and signals) once found."""

    report_serializer = ReportSerializer

    @extend_schema_field(ReportSerializer(allow_null=True))
    def get_report(self, check: Check) -> dict[str, Any] | None:
        return super().get_report(check)


class CheckCreateSerializer(serializers.Serializer):
    cnpj = serializers.CharField(
        allow_blank=True, trim_whitespace=True,
        help_text=_("With or without the mask (12.ABC.345/01DE-35 or 12ABC34501DE35); numeric or alphanumeric."))
    label = serializers.CharField(max_length=LABEL_MAX, required=False, allow_blank=True, default="",
                                  help_text=_("Your name for this company: sets the target's label when given."))
    tags = serializers.ListField(child=serializers.CharField(max_length=TAG_MAX), required=False, default=list,
                                 max_length=TAGS_MAX,
                                 help_text=_("Replace the target's tags when given (an empty list keeps them)."))
    schedule = serializers.ChoiceField(choices=Target.Schedule.choices, required=False,
                                       help_text=_("Monitor the target: none, daily or weekly (unchanged if omitted)."))
    refresh = serializers.BooleanField(required=False, default=False,
                                       help_text=_("Ask the registries even if a recent answer is cached (billed "
                                                   "at the lookup price)."))


class CheckFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=Check.Status.choices, required=False)
    target = serializers.IntegerField(required=False, min_value=1, help_text=_("Only this target's checks."))


# ---------------------------------------------------------------- targets


class TargetSerializer(serializers.ModelSerializer):
    cnpj_formatted = serializers.CharField(read_only=True)
    schedule = serializers.ChoiceField(choices=Target.Schedule.choices, read_only=True)
    status = serializers.SerializerMethodField(help_text=_("The latest check's status; null before any check."))
    risk_level = serializers.SerializerMethodField(help_text=_("The latest report's risk; null before any report."))
    tags = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = Target
        fields = ["id", "cnpj", "cnpj_formatted", "label", "tags", "schedule", "next_check_at", "status",
                  "risk_level", "company_name", "last_checked_at", "created_at"]
        read_only_fields = fields

    @extend_schema_field(serializers.ChoiceField(choices=Check.Status.choices, allow_null=True))
    def get_status(self, target: Target) -> str | None:
        return target.status or None

    @extend_schema_field(serializers.ChoiceField(choices=RiskLevel.choices, allow_null=True))
    def get_risk_level(self, target: Target) -> str | None:
        return target.risk_level or None


class TargetUpdateSerializer(serializers.Serializer):
    label = serializers.CharField(max_length=LABEL_MAX, required=False, allow_blank=True)
    tags = serializers.ListField(child=serializers.CharField(max_length=TAG_MAX), required=False,
                                 max_length=TAGS_MAX, help_text=_("Replaces the tags."))
    schedule = serializers.ChoiceField(choices=Target.Schedule.choices, required=False)


class TargetFilterSerializer(serializers.Serializer):
    q = serializers.CharField(max_length=200, required=False, allow_blank=True, default="",
                              help_text=_("Part of the CNPJ (with or without the mask), label or company name."))
    risk_level = serializers.ChoiceField(choices=RiskLevel.choices, required=False)
    status = serializers.ChoiceField(choices=Check.Status.choices, required=False,
                                     help_text=_("The latest check's status."))
    tag = serializers.CharField(max_length=TAG_MAX, required=False, help_text=_("Only targets with this tag."))
    schedule = serializers.ChoiceField(choices=Target.Schedule.choices, required=False)


# ---------------------------------------------------------------- alerts


class AlertSerializer(serializers.ModelSerializer):
    target = serializers.IntegerField(source="target_id", read_only=True)
    cnpj = serializers.CharField(source="target.cnpj", read_only=True)
    report = serializers.IntegerField(source="report_id", read_only=True)
    previous_report = serializers.IntegerField(source="previous_report_id", read_only=True, allow_null=True)
    kinds = serializers.ListField(child=serializers.ChoiceField(choices=Alert.Kind.choices), read_only=True)
    summary = serializers.DictField(read_only=True, help_text=_(
        "`diff`: the changes (as GET /api/v1/reports/{id}/diff/{other_id}/ gives them, labels in the language of "
        "the moment it was raised); `risk`: the previous and the new risk level."))
    unread = serializers.SerializerMethodField()

    class Meta:
        model = Alert
        fields = ["id", "target", "cnpj", "report", "previous_report", "kinds", "summary", "created_at", "read_at",
                  "unread"]
        read_only_fields = fields

    def get_unread(self, alert: Alert) -> bool:
        return alert.read_at is None


class AlertFilterSerializer(serializers.Serializer):
    unread = serializers.BooleanField(required=False, allow_null=True, default=None,
                                      help_text=_("Only unread (true) or read (false) alerts."))
