from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import translation
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST
from django.views.i18n import set_language

from .forms import ProfileForm, ThemeForm
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
    return render(request, "account/profile.html", {"form": form, "theme_form": ThemeForm()})


@login_required
@require_POST
def theme_set(request: HttpRequest) -> HttpResponse:
    """Save the user's light/dark/system choice, then back to the page it was made on (no JavaScript needed)."""
    form = ThemeForm(request.POST)
    if not form.is_valid():
        context = {"form": ProfileForm(instance=request.user), "theme_form": form}
        return render(request, "account/profile.html", context, status=400)
    user_profile_update(user=request.user, theme=form.cleaned_data["theme"])
    target = form.cleaned_data["next"]
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        target = reverse("account_profile")
    return redirect(target)


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
