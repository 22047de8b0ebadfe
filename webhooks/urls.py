"""URLs under /o/<org_slug>/settings/webhooks/. Every view here carries `org_member_required`."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.webhooks_settings, name="webhooks_settings"),
    path("credits-low/", views.webhooks_credits_low, name="webhooks_credits_low"),
    path("<int:endpoint_id>/", views.webhook_endpoint_detail, name="webhook_endpoint"),
    path("<int:endpoint_id>/deliveries/<int:delivery_id>/replay/", views.webhook_delivery_replay_view,
         name="webhook_delivery_replay"),
    path("<int:endpoint_id>/<slug:action>/", views.webhook_endpoint_action, name="webhook_endpoint_action"),
]
