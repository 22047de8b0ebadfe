"""URLs under /o/<org_slug>/settings/audit/. Every view here carries `org_member_required`."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.audit_log, name="audit_log"),
    path("export/", views.audit_export, name="audit_export"),
]
