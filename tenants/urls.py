"""URLs under /o/<org_slug>/. Every view here carries `org_member_required`."""

from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("chat/", include("chat.urls")),
    path("checks/", include("checks.urls")),
    path("billing/", include("billing.urls_org")),
    path("settings/", views.org_settings, name="org_settings"),
    path("settings/members/", views.members, name="members"),
    path("settings/ai-providers/", include("chat.catalog.urls")),
    path("settings/api-keys/", views.api_keys, name="api_keys"),
    path("settings/api-keys/<int:key_id>/revoke/", views.api_key_revoke_view, name="api_key_revoke"),
    path("settings/webhooks/", include("webhooks.urls")),
    path("settings/audit/", include("tenants.audit.urls")),
    path("settings/members/<int:membership_id>/role/", views.member_role, name="member_role"),
    path("settings/members/<int:membership_id>/remove/", views.member_remove, name="member_remove"),
    path("settings/members/leave/", views.member_leave, name="member_leave"),
    path("settings/invitations/<int:invitation_id>/revoke/", views.invitation_cancel, name="invitation_revoke"),
]
