"""The audit log page's filters (a GET form): the same filters as the API's query string."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from django import forms
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .actions import action_choices, action_valid
from .models import AuditEvent
from .selectors import AuditFilters


class AuditFilterForm(forms.Form):
    actor = forms.CharField(label=_("Who"), required=False, max_length=255,
                            widget=forms.TextInput(attrs={"placeholder": _("Email, user or key id")}))
    actor_type = forms.ChoiceField(label=_("Actor type"), required=False,
                                   choices=[("", _("Anyone")), *AuditEvent.ActorType.choices])
    action = forms.ChoiceField(label=_("Action"), required=False)
    target_type = forms.CharField(label=_("Target type"), required=False, max_length=100,
                                  widget=forms.TextInput(attrs={"placeholder": "tenants.apikey"}))
    target_id = forms.CharField(label=_("Target id"), required=False, max_length=64)
    since = forms.DateField(label=_("From"), required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(label=_("To"), required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["action"].choices = action_choices()

    def clean_action(self) -> str:
        value = self.cleaned_data.get("action") or ""
        if value and not action_valid(value):
            raise forms.ValidationError(_("Choose an action from the list."))
        return value

    def clean(self) -> dict:
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            self.add_error("until", _("The end date is before the start date."))
        return data

    def filters(self) -> AuditFilters:
        """The valid form's filters; dates are whole days in the viewer's time zone, both included."""
        data = self.cleaned_data
        zone = timezone.get_current_timezone()
        since = datetime.combine(data["since"], time.min, tzinfo=zone) if data.get("since") else None
        until = (datetime.combine(data["until"] + timedelta(days=1), time.min, tzinfo=zone)
                 if data.get("until") else None)
        return AuditFilters(actor=data.get("actor", "").strip(), actor_type=data.get("actor_type", ""),
                            action=data.get("action", ""), target_type=data.get("target_type", "").strip(),
                            target_id=data.get("target_id", "").strip(), since=since, until=until)
