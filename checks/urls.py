"""Checks under /o/<org_slug>/checks/. Every view carries `org_member_required`."""

from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.checks_home, name="checks_home"),
    path("targets/new/", views.target_add_view, name="checks_target_add"),
    path("export.csv", views.targets_export, name="checks_export"),
    path("targets/<int:target_id>/", views.target_detail, name="checks_target"),
    path("targets/<int:target_id>/edit/", views.target_edit, name="checks_target_edit"),
    path("targets/<int:target_id>/check/", views.target_check, name="checks_target_check"),
    path("targets/<int:target_id>/diff/", views.target_diff, name="checks_target_diff"),
    path("runs/<int:check_id>/progress/", views.check_progress, name="checks_progress"),
    path("reports/<int:report_id>/", views.report_detail, name="checks_report"),
    path("reports/<int:report_id>/csv/", views.report_csv, name="checks_report_csv"),
    path("reports/<int:report_id>/print/", views.report_print, name="checks_report_print"),
    path("alerts/", views.alert_list_view, name="checks_alerts"),
    path("alerts/read/", views.alerts_read_all, name="checks_alerts_read_all"),
    path("alerts/<int:alert_id>/read/", views.alert_read, name="checks_alert_read"),
    path("settings/", views.checks_settings_view, name="checks_settings"),
    path("bulk/", include("checks.urls_bulk")),
]
