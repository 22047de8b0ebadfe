from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from .models import Theme, User


class ProfileForm(forms.ModelForm):
    class Meta:
        model = User
        fields = ["name", "language"]


class ThemeForm(forms.Form):
    theme = forms.ChoiceField(label=_("Theme"), choices=Theme.choices)
    next = forms.CharField(required=False, widget=forms.HiddenInput)
