from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from billing.models import CREDIT_FIELD

from .events import EVENT_TYPES


class WebhookEndpointForm(forms.Form):
    url = forms.CharField(label=_("URL"), max_length=2000, help_text=_("Where events are sent: https://…"),
                          widget=forms.URLInput(attrs={"inputmode": "url", "autocomplete": "off"}))
    description = forms.CharField(label=_("Description"), max_length=200, required=False)
    event_types = forms.MultipleChoiceField(
        label=_("Events"), required=False, widget=forms.CheckboxSelectMultiple,
        choices=[(name, name) for name in EVENT_TYPES],
        help_text=_("None chosen: every event, including the ones added later, except chat answers "
                    "(chat.answer.completed), which are sent only when chosen."))
    include_message_text = forms.BooleanField(
        label=_("Include message text"), required=False,
        help_text=_("Send the text of chat answers with chat.answer.completed; otherwise only their numbers."))


class CreditsLowForm(forms.Form):
    threshold = forms.DecimalField(
        label=_("Warn when credits fall below"), required=False, min_value=0,
        max_digits=CREDIT_FIELD["max_digits"], decimal_places=2,
        help_text=_("A credits.low event is sent each time the balance falls below this. Empty: never."))
