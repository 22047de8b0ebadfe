"""Under /o/<org_slug>/settings/ai-providers/. Every view carries `org_member_required`."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.provider_keys, name="provider_keys"),
    path("<str:provider>/remove/", views.provider_key_remove, name="provider_key_remove"),
]
