"""Bulk checks under /o/<org_slug>/checks/bulk/. Every view carries `org_member_required`."""

from django.urls import path

from . import views_bulk

urlpatterns = [
    path("", views_bulk.bulk_home, name="checks_bulk"),
    path("<int:batch_id>/", views_bulk.batch_detail, name="checks_batch"),
    path("<int:batch_id>/cancel/", views_bulk.batch_cancel, name="checks_batch_cancel"),
    path("<int:batch_id>/progress/", views_bulk.batch_progress_fragment, name="checks_batch_progress"),
    path("<int:batch_id>/results.csv", views_bulk.batch_csv, name="checks_batch_csv"),
]
