"""Credits and usage over the API (/api/v1/billing/...): balance, ledger, daily usage.

Read-only: API keys need the `read` scope, session users any role.
"""

from __future__ import annotations

from datetime import date

from django.db.models import QuerySet, Sum
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from tenants.api_base import OrgAPIView
from tenants.models import Organization

from .models import ZERO, DailyUsage
from .selectors import billing_account_get, credit_entry_list
from .serializers import (
    BalanceSerializer,
    CreditEntryFilterSerializer,
    CreditEntrySerializer,
    UsageFilterSerializer,
    UsageSerializer,
)

TAG = "Billing"


def usage_daily_list(*, organization: Organization, start: date, end: date, kind: str | None = None) -> QuerySet:
    """Usage per day × kind × key (members summed), oldest day first, from the daily rollups."""
    rows = DailyUsage.objects.filter(organization=organization, day__gte=start, day__lte=end)
    if kind:
        rows = rows.filter(kind=kind)
    return (rows.values("day", "kind", "key")
            .annotate(events=Sum("events"), input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens"),
                      units=Sum("units"), credits=Sum("credits"))
            .order_by("day", "kind", "key"))


@extend_schema(tags=[TAG])
class BalanceView(OrgAPIView):
    """The credit balance. Key scope `read`; any role."""

    serializer_class = BalanceSerializer

    @extend_schema(operation_id="billing_balance", summary="The credit balance")
    def get(self, request: Request) -> Response:
        account = billing_account_get(organization=request.tenant)
        return Response(BalanceSerializer({"credits": account.credits}).data)


@extend_schema(tags=[TAG])
class LedgerView(OrgAPIView):
    """The credit ledger (append-only). Key scope `read`; any role."""

    serializer_class = CreditEntrySerializer

    @extend_schema(operation_id="billing_ledger", parameters=[CreditEntryFilterSerializer],
                   responses=CreditEntrySerializer(many=True), summary="Credit movements, newest first")
    def get(self, request: Request) -> Response:
        entries = credit_entry_list(organization=request.tenant)
        kind = self.query_params(CreditEntryFilterSerializer).get("kind")
        if kind:
            entries = entries.filter(kind=kind)
        return self.page(entries, CreditEntrySerializer)


@extend_schema(tags=[TAG])
class UsageView(OrgAPIView):
    """Daily usage from the rollups (updated by a periodic job, not live). Key scope `read`; any role."""

    serializer_class = UsageSerializer

    @extend_schema(operation_id="billing_usage", parameters=[UsageFilterSerializer],
                   summary="Daily usage (from the rollups), by kind and model or check")
    def get(self, request: Request) -> Response:
        params = self.query_params(UsageFilterSerializer)
        start, end = params["start"], params["end"]
        rows = list(usage_daily_list(organization=request.tenant, start=start, end=end, kind=params.get("kind")))
        total = sum((row["credits"] for row in rows), ZERO)
        return Response(UsageSerializer({"start": start, "end": end, "total_credits": total, "results": rows}).data)
