from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from .models import ApiKey, Role


class OrganizationCreateForm(forms.Form):
    name = forms.CharField(label=_("Organization name"), max_length=100)
    slug = forms.SlugField(
        label=_("Address"), max_length=50, required=False,
        help_text=_("Lowercase letters, numbers and hyphens. Leave empty to derive it from the name."),
    )


class OrganizationSettingsForm(forms.Form):
    name = forms.CharField(label=_("Organization name"), max_length=100)
    require_mfa = forms.BooleanField(
        label=_("Require two-factor authentication"), required=False,
        help_text=_("Members without it are sent to activate it before they can use the organization. "
                    "API keys are not affected. Only owners can change this."))

    def __init__(self, *args, can_require_mfa: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Only owners may change it; a disabled field keeps its current value whatever is posted.
        self.fields["require_mfa"].disabled = not can_require_mfa


class InvitationForm(forms.Form):
    email = forms.EmailField(label=_("Email address"))
    role = forms.ChoiceField(label=_("Role"), choices=Role.choices, initial=Role.MEMBER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(label=_("Role"), choices=Role.choices)


class ApiKeyForm(forms.Form):
    EXPIRY_CHOICES = [("", _("Never")), ("30", _("In 30 days")), ("90", _("In 90 days")), ("365", _("In a year"))]

    name = forms.CharField(label=_("Name"), max_length=100, help_text=_("What uses it, e.g. “CRM sync”."))
    scopes = forms.MultipleChoiceField(label=_("Scopes"), choices=ApiKey.Scope.choices,
                                       widget=forms.CheckboxSelectMultiple, initial=[ApiKey.Scope.CHAT])
    expires_in_days = forms.ChoiceField(label=_("Expires"), choices=EXPIRY_CHOICES, required=False)
