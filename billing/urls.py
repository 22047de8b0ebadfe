"""Public billing URLs (Stripe webhooks). Org-scoped billing pages are in billing/urls_org.py."""

from django.urls import include, path

urlpatterns = [
    path("stripe/", include("djstripe.urls", namespace="djstripe")),
]
