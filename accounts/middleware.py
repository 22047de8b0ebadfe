from __future__ import annotations

from functools import cache

from django.conf import settings
from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext as _

from core.observability import user_var

from .mfa import mfa_enabled, organization_mfa_missing


class UserLanguageMiddleware:
    """A signed-in user's saved language wins over the browser's; tags logs with the user."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            user_var.set(str(user.pk))
            if user.language and user.language != translation.get_language():
                translation.activate(user.language)
                request.LANGUAGE_CODE = translation.get_language()
        return self.get_response(request)


class MFARequiredMiddleware:
    """Sends a signed-in person without a second factor to enrol where one is required.

    Staff on the admin while `ADMIN_REQUIRE_MFA` is on, and members on the pages of an
    organization that requires MFA (`request.tenant`/`request.membership`, set by the tenant
    middleware, which runs first). The organization rule costs no query of its own (the
    membership is read with the answer); the admin rule one query per staff admin request.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        reason = self.refusal(request)
        if reason is None:
            return self.get_response(request)
        messages.warning(request, reason)
        if request.headers.get("HX-Request"):
            # An htmx partial would swap the enrolment page into the current one: load it whole.
            return HttpResponse(status=204, headers={"HX-Redirect": reverse("mfa_activate_totp")})
        return redirect("mfa_activate_totp")

    @staticmethod
    def refusal(request) -> str | None:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return None
        if (settings.ADMIN_REQUIRE_MFA and user.is_staff and request.path_info.startswith(admin_prefix())
                and not mfa_enabled(request)):
            return _("The admin requires two-factor authentication. Activate it to continue.")
        tenant = getattr(request, "tenant", None)
        if getattr(request, "membership", None) is not None and organization_mfa_missing(request, tenant):
            return _("%(organization)s requires two-factor authentication. "
                     "Activate it to continue.") % {"organization": tenant.name}
        return None


@cache
def admin_prefix() -> str:
    return reverse("admin:index")
