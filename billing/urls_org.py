"""Billing pages under /o/<org_slug>/billing/. Every view carries `org_member_required`."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.billing_overview, name="billing_home"),
    path("usage/", views.usage, name="billing_usage"),
]
