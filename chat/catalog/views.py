"""Settings → AI providers: an organization's own provider keys (owners and admins)."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from chat.providers import key_probe
from tenants.audit.services import Actor
from tenants.guards import org_member_required
from tenants.models import Role

from .models import Provider
from .selectors import provider_key_list
from .services import provider_key_delete, provider_key_problem, provider_key_set

KEYED_PROVIDERS = [(value, label) for value, label in Provider.choices if value not in ("demo", "ollama")]


class ProviderKeyForm(forms.Form):
    provider = forms.ChoiceField(label=gettext_lazy("Provider"), choices=KEYED_PROVIDERS)
    secret = forms.CharField(label=gettext_lazy("API key"), max_length=500, strip=True,
                             widget=forms.PasswordInput(attrs={"autocomplete": "off"}),
                             help_text=gettext_lazy("Stored encrypted. It is never shown again."))
    test = forms.BooleanField(label=gettext_lazy("Test this key with the provider before saving"), required=False,
                              help_text=gettext_lazy("Lists the provider's models with it (a free call)."))

    def clean(self):
        data = super().clean()
        provider, secret = data.get("provider"), data.get("secret")
        if not provider or not secret:
            return data
        if problem := provider_key_problem(provider=provider, secret=secret):
            self.add_error("secret", problem)
        elif data.get("test"):
            outcome = key_probe(provider, secret)
            if outcome == "refused":
                self.add_error("secret", _("The provider refused this key. Check it in the provider's console."))
            elif outcome == "unreachable":
                self.add_error("test", _("The provider could not be reached to test the key. Try again, or "
                                         "save it without the test."))
        return data


@org_member_required(role=Role.ADMIN)
def provider_keys(request: HttpRequest) -> HttpResponse:
    form = ProviderKeyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        provider_key_set(organization=request.tenant, provider=form.cleaned_data["provider"],
                         secret=form.cleaned_data["secret"], user=request.user, actor=Actor.from_request(request))
        messages.success(request, _("Key saved. Its models are now available in Chat."))
        return redirect("provider_keys", org_slug=request.tenant.slug)
    return render(request, "catalog/provider_keys.html",
                  {"form": form, "keys": provider_key_list(organization=request.tenant)})


@org_member_required(role=Role.ADMIN)
@require_POST
def provider_key_remove(request: HttpRequest, provider: str) -> HttpResponse:
    if provider_key_delete(organization=request.tenant, provider=provider, actor=Actor.from_request(request)):
        messages.success(request, _("Key removed."))
    return redirect("provider_keys", org_slug=request.tenant.slug)
