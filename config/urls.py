from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.urls import include, path

from accounts import views as account_views
from billing import views as billing_views
from tenants import views as tenant_views

from . import views
from .metrics import metrics_view

# Staff sign in through allauth (MFA, rate limits, verified email), never Django's own form.
admin.site.login = secure_admin_login(admin.site.login)

urlpatterns = [
    path("", views.landing, name="landing"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("i18n/setlang/", account_views.language_switch, name="set_language"),
    path("accounts/", include("accounts.urls")),
    path("accounts/", include("allauth.urls")),
    path("pricing", billing_views.pricing, name="pricing"),
    path("try/", include("chat.urls_trial")),
    path("api/", include("config.api_urls")),
    path("orgs/", tenant_views.org_list, name="org_list"),
    path("orgs/new/", tenant_views.org_create, name="org_create"),
    path("invitations/<str:token>/", tenant_views.invitation_accept_view, name="invitation_accept"),
    path("o/<slug:org_slug>/", include("tenants.urls")),
    path("billing/", include("billing.urls")),
    path("admin/", admin.site.urls),
]

handler403 = "config.views.permission_denied"
handler404 = "tenants.middleware.not_found_handler"
handler500 = "config.views.server_error"
