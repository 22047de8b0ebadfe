from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.utils import translation
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST
from django.views.i18n import set_language

from .forms import ProfileForm
from .services import user_profile_update


@login_required
def profile(request: HttpRequest) -> HttpResponse:
    form = ProfileForm(request.POST or None, instance=request.user)
    if request.method == "POST" and form.is_valid():
        user_profile_update(user=request.user, **form.cleaned_data)
        translation.activate(request.user.language)
        messages.success(request, _("Your profile was saved."))
        response = redirect("account_profile")
        response.set_cookie("django_language", request.user.language, samesite="Lax")
        return response
    return render(request, "account/profile.html", {"form": form})


@require_POST
def language_switch(request: HttpRequest) -> HttpResponse:
    """Django's set_language, and a signed-in user's saved language follows the choice."""
    response = set_language(request)
    code = request.POST.get("language", "")
    if request.user.is_authenticated and translation.check_for_language(code):
        user_profile_update(user=request.user, language=code)
    if isinstance(response, HttpResponseRedirect):
        target = response.url
        if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
            response["Location"] = "/"
    return response
