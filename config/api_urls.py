"""The DRF API (/api/v1/...), its OpenAPI schema (/api/schema/) and docs page (/api/docs/).

Every view under v1/ is an `OrgAPIView` (tenants.api_base); tests/test_api.py checks it.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView

from billing import api as billing_api
from chat import api as chat_api
from checks import api as checks_api
from tenants import api as tenants_api
from tenants.audit import api as audit_api
from webhooks import api as webhooks_api

from .openapi import ApiDocsView

v1 = [
    path("threads/", chat_api.ThreadListView.as_view(), name="api_threads"),
    path("threads/<int:thread_id>/", chat_api.ThreadDetailView.as_view(), name="api_thread"),
    path("threads/<int:thread_id>/messages/", chat_api.MessageListView.as_view(), name="api_messages"),
    path("threads/<int:thread_id>/messages/<int:message_id>/", chat_api.MessageDetailView.as_view(),
         name="api_message"),
    path("threads/<int:thread_id>/messages/<int:message_id>/stop/", chat_api.MessageStopView.as_view(),
         name="api_message_stop"),
    path("threads/<int:thread_id>/regenerate/", chat_api.ThreadRegenerateView.as_view(), name="api_regenerate"),
    path("threads/<int:thread_id>/edit/", chat_api.ThreadEditLastView.as_view(), name="api_edit_last"),
    path("threads/<int:thread_id>/attachments/", chat_api.AttachmentListView.as_view(), name="api_attachments"),
    path("billing/balance/", billing_api.BalanceView.as_view(), name="api_balance"),
    path("billing/ledger/", billing_api.LedgerView.as_view(), name="api_ledger"),
    path("billing/usage/", billing_api.UsageView.as_view(), name="api_usage"),
    path("organization/", tenants_api.OrganizationView.as_view(), name="api_organization"),
    path("members/", tenants_api.MemberListView.as_view(), name="api_members"),
    path("api-keys/", tenants_api.ApiKeyListView.as_view(), name="api_keys"),
    path("api-keys/<int:key_id>/revoke/", tenants_api.ApiKeyRevokeView.as_view(), name="api_v1_key_revoke"),
    path("audit-events/", audit_api.AuditEventListView.as_view(), name="api_audit_events"),
    path("checks/", checks_api.CheckListView.as_view(), name="api_checks"),
    path("checks/<int:check_id>/", checks_api.CheckDetailView.as_view(), name="api_check"),
    path("targets/", checks_api.TargetListView.as_view(), name="api_targets"),
    path("targets/<int:target_id>/", checks_api.TargetDetailView.as_view(), name="api_target"),
    path("targets/<int:target_id>/reports/", checks_api.TargetReportListView.as_view(), name="api_target_reports"),
    path("reports/<int:report_id>/", checks_api.ReportDetailView.as_view(), name="api_report"),
    path("reports/<int:report_id>/diff/<int:other_id>/", checks_api.ReportDiffView.as_view(),
         name="api_report_diff"),
    path("alerts/", checks_api.AlertListView.as_view(), name="api_alerts"),
    path("webhooks/", webhooks_api.WebhookEndpointListView.as_view(), name="api_webhooks"),
    path("webhooks/event-types/", webhooks_api.EventTypeListView.as_view(), name="api_webhook_event_types"),
    path("webhooks/<int:endpoint_id>/", webhooks_api.WebhookEndpointDetailView.as_view(), name="api_webhook"),
    path("webhooks/<int:endpoint_id>/rotate-secret/", webhooks_api.WebhookSecretRotateView.as_view(),
         name="api_webhook_rotate_secret"),
    path("webhooks/<int:endpoint_id>/test/", webhooks_api.WebhookTestView.as_view(), name="api_webhook_test"),
    path("webhooks/<int:endpoint_id>/deliveries/", webhooks_api.WebhookDeliveryListView.as_view(),
         name="api_webhook_deliveries"),
    path("webhooks/<int:endpoint_id>/deliveries/<int:delivery_id>/replay/",
         webhooks_api.WebhookDeliveryReplayView.as_view(), name="api_webhook_delivery_replay"),
    path("webhooks/<int:endpoint_id>/replay-failed/", webhooks_api.WebhookReplayFailedView.as_view(),
         name="api_webhook_replay_failed"),
]


@csrf_exempt  # it changes nothing; without this a POST would get the CSRF failure page
def api_not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    # API clients get JSON for a path that matches nothing (e.g. a non-numeric id), not the site's page.
    return JsonResponse({"detail": "Not found."}, status=404)


urlpatterns = [
    path("v1/", include(v1)),
    path("schema/", SpectacularAPIView.as_view(), name="api_schema"),
    path("docs/", ApiDocsView.as_view(), name="api_docs"),
    re_path(r"^(?P<rest>(?s:.*))$", api_not_found),  # (?s): a path with a newline is JSON-404 too
]
