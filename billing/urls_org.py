"""Billing pages under /o/<org_slug>/billing/. Every view carries `org_member_required`."""

from django.urls import path

from . import stripe_views, views

urlpatterns = [
    path("", views.billing_overview, name="billing_home"),
    path("usage/", views.usage, name="billing_usage"),
    path("plan/", stripe_views.billing_plan_change, name="billing_plan_change"),
    path("top-up/", stripe_views.billing_topup, name="billing_topup"),
    path("portal/", stripe_views.billing_portal, name="billing_portal"),
    path("checkout/success/", stripe_views.billing_checkout_success, name="billing_checkout_success"),
    path("checkout/cancelled/", stripe_views.billing_checkout_cancelled, name="billing_checkout_cancelled"),
]
