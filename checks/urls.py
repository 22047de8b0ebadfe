"""Checks under /o/<org_slug>/checks/. Every view carries `org_member_required`."""

from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.checks_home, name="checks_home"),
    path("bulk/", include("checks.urls_bulk")),
]
