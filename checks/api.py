"""CNPJ checks over the API (/api/v1/checks/, targets/, reports/, alerts/).

`POST /api/v1/checks/` with a CNPJ adds (or updates) its target and requests a check: answered
from the shared cache it is final at once (201, with its report); otherwise it is queued (202,
`Location` and `status_url` name the check to poll). An invalid CNPJ is 400 with the reason's
`code` (cnpj_format, cnpj_length, cnpj_checksum); the plan's monthly quota and the credit
balance are 402 (quota_exceeded, insufficient_credits); nothing is written then.

Keys: reading needs the `read` or `checks` scope, writing (requesting checks, editing and
deleting targets) the `checks` scope. Sessions: any role reads, members write. A key's checks
are requested as the member the key acts as (see tenants.api_base) and carry the key's id.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Prefetch, Q, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from tenants.api_base import OrgAPIView, acting_user
from tenants.api_keys import KeyAuth
from tenants.audit.services import Actor

from . import cnpj as cnpj_id
from .diff import report_diff, risk_level_change
from .models import Alert, Attempt, Check, Report, Target
from .serializers import (
    AlertFilterSerializer,
    AlertSerializer,
    CheckCreateSerializer,
    CheckDetailSerializer,
    CheckFilterSerializer,
    CheckSerializer,
    ReportDiffSerializer,
    ReportSerializer,
    ReportSummarySerializer,
    TargetFilterSerializer,
    TargetSerializer,
    TargetUpdateSerializer,
)
from .services import CheckRefused, check_request, target_add, target_delete, target_update

TAG = "Checks"

API_ERROR = {"$ref": "#/components/schemas/ApiError"}


def error_response(description: str) -> OpenApiResponse:
    return OpenApiResponse(API_ERROR, description=description)


# ---------------------------------------------------------------- reads


def check_list(*, status: str | None = None, target_id: int | None = None) -> QuerySet[Check]:
    """Checks with what their rows show: target, attempts (in order) and report summary."""
    checks = Check.objects.select_related("target", "report").prefetch_related(
        Prefetch("attempts", queryset=Attempt.objects.order_by("created_at", "id")))
    if status:
        checks = checks.filter(status=status)
    if target_id:
        checks = checks.filter(target_id=target_id)
    return checks


def target_list(*, q: str = "", risk_level: str | None = None, status: str | None = None, tag: str | None = None,
                schedule: str | None = None) -> QuerySet[Target]:
    targets = Target.objects.all()
    q = q.strip()
    if q:
        match = Q(label__icontains=q) | Q(company_name__icontains=q)
        canonical = cnpj_id.normalize(q)
        if canonical:
            match |= Q(cnpj__contains=canonical)
        targets = targets.filter(match)
    if risk_level:
        targets = targets.filter(risk_level=risk_level)
    if status:
        targets = targets.filter(status=status)
    if tag:
        targets = targets.filter(tags__contains=[tag])
    if schedule:
        targets = targets.filter(schedule=schedule)
    return targets


# ---------------------------------------------------------------- views


class ChecksAPIView(OrgAPIView):
    """Checks, targets, reports and alerts: read with `read` or `checks` (any role), write with `checks` (members)."""

    key_read_scopes = frozenset({"read", "checks"})
    key_write_scopes = frozenset({"checks"})

    def page(self, queryset, serializer_class):
        """One cursor page of `queryset`, serialized with the request (for absolute URLs)."""
        rows = self.paginate_queryset(queryset)
        return self.get_paginated_response(
            serializer_class(rows, many=True, context=self.get_serializer_context()).data)

    def target_or_404(self, target_id: int) -> Target:
        target = Target.objects.filter(pk=target_id).first()
        if target is None:
            raise NotFound()
        return target

    def report_or_404(self, report_id: int) -> Report:
        report = Report.objects.select_related("target").filter(pk=report_id).first()
        if report is None:
            raise NotFound()
        return report


CHECK_RESPONSES = {
    201: OpenApiResponse(CheckDetailSerializer, description="Answered from the shared cache: final, with its report "
                                                            "when the company was found."),
    202: OpenApiResponse(CheckDetailSerializer, description="Queued: poll `status_url` (also in `Location`) until "
                                                            "the status is succeeded, not_found or failed."),
    400: error_response("Invalid input. An invalid CNPJ answers `{detail, code, field: \"cnpj\"}` with code "
                        "cnpj_format, cnpj_length or cnpj_checksum; other fields, one list of messages each."),
    402: error_response("The plan's checks for this month are used up (`quota_exceeded`), or the balance does not "
                        "cover the check (`insufficient_credits`)."),
    503: error_response("Checks are not priced yet (`no_price`)."),
}


@extend_schema(tags=[TAG])
class CheckListView(ChecksAPIView):
    """Checks, newest first; POST requests one."""

    serializer_class = CheckSerializer

    @extend_schema(operation_id="checks_list", parameters=[CheckFilterSerializer],
                   responses=CheckSerializer(many=True), summary="Checks, newest first")
    def get(self, request: Request) -> Response:
        params = self.query_params(CheckFilterSerializer)
        return self.page(check_list(status=params.get("status"), target_id=params.get("target")), CheckSerializer)

    @extend_schema(
        operation_id="checks_create", request=CheckCreateSerializer, responses=CHECK_RESPONSES,
        parameters=[OpenApiParameter("Location", OpenApiTypes.URI, OpenApiParameter.HEADER, response=[202],
                                     description="The check to poll (same as `status_url`).")],
        summary="Check a CNPJ: the answer at once from the cache (201), or queued (202)",
        examples=[OpenApiExample("A CNPJ with its mask", request_only=True,
                                 value={"cnpj": "19.131.243/0001-97", "label": "Supplier", "tags": ["suppliers"]})],
    )
    def post(self, request: Request) -> Response:
        data = self.body(CheckCreateSerializer)
        key_id = request.auth.key_id if isinstance(request.auth, KeyAuth) else None
        try:
            with transaction.atomic():  # refused: the target is not added or changed either
                target = target_add(cnpj=data["cnpj"], label=data["label"], tags=data["tags"],
                                    schedule=data.get("schedule"), user=acting_user(request))
                check = check_request(organization=request.tenant, target=target, source=Check.Source.API,
                                      user=acting_user(request), api_key_id=key_id, refresh=data["refresh"])
        except CheckRefused as refused:
            body = {"detail": refused.message, "code": refused.code}
            if refused.code.startswith("cnpj_"):
                body["field"] = "cnpj"
            return Response(body, status=refused.status)
        check = check_list().get(pk=check.pk)
        body = CheckDetailSerializer(check, context=self.get_serializer_context()).data
        if check.is_final:
            return Response(body, status=status.HTTP_201_CREATED)
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["status_url"]})


@extend_schema(tags=[TAG])
class CheckDetailView(ChecksAPIView):
    """One check: poll it until its status is final."""

    serializer_class = CheckDetailSerializer

    @extend_schema(operation_id="checks_retrieve", responses=CheckDetailSerializer,
                   summary="One check: status, timestamps, attempts and, when found, its report")
    def get(self, request: Request, check_id: int) -> Response:
        check = check_list().filter(pk=check_id).first()
        if check is None:
            raise NotFound()
        return Response(CheckDetailSerializer(check, context=self.get_serializer_context()).data)


@extend_schema(tags=[TAG])
class TargetListView(ChecksAPIView):
    """The companies the organization follows (one per CNPJ), newest first."""

    serializer_class = TargetSerializer

    @extend_schema(operation_id="targets_list", parameters=[TargetFilterSerializer],
                   responses=TargetSerializer(many=True), summary="Targets, newest first")
    def get(self, request: Request) -> Response:
        params = self.query_params(TargetFilterSerializer)
        return self.page(target_list(q=params["q"], risk_level=params.get("risk_level"), status=params.get("status"),
                                     tag=params.get("tag"), schedule=params.get("schedule")), TargetSerializer)


@extend_schema(tags=[TAG])
class TargetDetailView(ChecksAPIView):
    """One target: its label, tags and monitoring schedule can change; deleting it deletes its history."""

    serializer_class = TargetSerializer

    @extend_schema(operation_id="targets_retrieve", responses=TargetSerializer, summary="One target")
    def get(self, request: Request, target_id: int) -> Response:
        return Response(TargetSerializer(self.target_or_404(target_id)).data)

    @extend_schema(operation_id="targets_update", request=TargetUpdateSerializer, responses=TargetSerializer,
                   summary="Change a target's label, tags (replaced) or monitoring schedule")
    def patch(self, request: Request, target_id: int) -> Response:
        target = self.target_or_404(target_id)
        data = self.body(TargetUpdateSerializer)
        target = target_update(target=target, label=data.get("label", target.label), tags=data.get("tags", target.tags),
                               schedule=data.get("schedule", target.schedule))
        return Response(TargetSerializer(target).data)

    @extend_schema(operation_id="targets_destroy",
                   responses={204: None, 409: error_response("A check of this target is still pending or running "
                                                             "(`check_in_progress`): delete it once it finishes.")},
                   summary="Delete a target with its checks, reports and alerts")
    def delete(self, request: Request, target_id: int) -> Response:
        try:
            target_delete(target=self.target_or_404(target_id), actor=Actor.from_request(request))
        except CheckRefused as refused:
            return Response({"detail": refused.message, "code": refused.code}, status=refused.status)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=[TAG])
class TargetReportListView(ChecksAPIView):
    """A target's history: its reports, newest first."""

    serializer_class = ReportSummarySerializer

    @extend_schema(operation_id="targets_reports_list", responses=ReportSummarySerializer(many=True),
                   summary="A target's reports, newest first")
    def get(self, request: Request, target_id: int) -> Response:
        return self.page(self.target_or_404(target_id).reports.all(), ReportSummarySerializer)


@extend_schema(tags=[TAG])
class ReportDetailView(ChecksAPIView):
    """One report: the normalized record, its risk signals (texts in the request's language) and provenance."""

    serializer_class = ReportSerializer

    @extend_schema(operation_id="reports_retrieve", responses=ReportSerializer,
                   summary="One report (signals' texts follow Accept-Language: en or pt-br)")
    def get(self, request: Request, report_id: int) -> Response:
        report = self.report_or_404(report_id)
        return Response(ReportSerializer(report, context=self.get_serializer_context()).data)


@extend_schema(tags=[TAG])
class ReportDiffView(ChecksAPIView):
    """What changed between two reports of the same target, from the older to the newer."""

    serializer_class = ReportDiffSerializer

    @extend_schema(operation_id="reports_diff", responses=ReportDiffSerializer,
                   summary="What changed between two reports of the same target (404 for different targets)")
    def get(self, request: Request, report_id: int, other_id: int) -> Response:
        first, second = self.report_or_404(report_id), self.report_or_404(other_id)
        if first.target_id != second.target_id:
            raise NotFound()
        old, new = sorted((first, second), key=lambda report: (report.created_at, report.pk))
        diff = report_diff(old.data, new.data).as_dict()
        diff["risk_level_change"] = risk_level_change(old.risk_level, new.risk_level)
        return Response(ReportDiffSerializer({"old_report": old.pk, "new_report": new.pk, **diff}).data)


@extend_schema(tags=[TAG])
class AlertListView(ChecksAPIView):
    """Alerts of monitored targets (status, partners or risk level changed), newest first."""

    serializer_class = AlertSerializer

    @extend_schema(operation_id="alerts_list", parameters=[AlertFilterSerializer],
                   responses=AlertSerializer(many=True), summary="Monitoring alerts, newest first")
    def get(self, request: Request) -> Response:
        unread = self.query_params(AlertFilterSerializer)["unread"]
        alerts = Alert.objects.select_related("target")
        if unread is not None:
            alerts = alerts.filter(read_at__isnull=unread)
        return self.page(alerts, AlertSerializer)

