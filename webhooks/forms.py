from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from .events import EVENT_TYPES


class WebhookEndpointForm(forms.Form):
    url = forms.CharField(label=_("URL"), max_length=2000, help_text=_("Where events are sent: https://…"),
                          widget=forms.URLInput(attrs={"inputmode": "url", "autocomplete": "off"}))
    description = forms.CharField(label=_("Description"), max_length=200, required=False)
    event_types = forms.MultipleChoiceField(
        label=_("Events"), required=False, widget=forms.CheckboxSelectMultiple,
        choices=[(name, name) for name in EVENT_TYPES],
        help_text=_("None chosen: every event, including the ones added later."))
