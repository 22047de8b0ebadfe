"""Forms of the checks pages: add a target, edit it, filter the list, the organization's settings."""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from . import cnpj as cnpj_id
from .models import Check, RiskLevel, Target
from .selectors import NEVER_CHECKED
from .services import tags_clean
from .signals import SignalThresholds, SignalThresholdsError


class CNPJField(forms.CharField):
    """A CNPJ in any format (masked or not, numeric or alphanumeric); cleans to the canonical form."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", 40)
        super().__init__(**kwargs)

    def widget_attrs(self, widget):
        return {**super().widget_attrs(widget), "autocapitalize": "characters", "autocomplete": "off",
                "spellcheck": "false", "placeholder": "12.345.678/0001-95"}

    def clean(self, value):
        value = super().clean(value)
        validation = cnpj_id.validate(value)
        if not validation.is_valid:
            raise ValidationError(validation.message, code=f"cnpj_{validation.error}")
        return validation.cnpj


class TagsField(forms.CharField):
    """Comma-separated tags; cleans to the sorted list the services store."""

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("max_length", 1000)
        kwargs.setdefault("help_text", _("Separate tags with commas, e.g. supplier, south"))
        super().__init__(**kwargs)

    def prepare_value(self, value):
        return ", ".join(value) if isinstance(value, list | tuple) else value

    def clean(self, value):
        return tags_clean(super().clean(value) or "")


class TargetEditForm(forms.Form):
    label = forms.CharField(label=_("Label"), max_length=200, required=False,
                            help_text=_("Your own name for this company (optional)."))
    tags = TagsField(label=_("Tags"))
    schedule = forms.ChoiceField(label=_("Monitoring"), choices=Target.Schedule.choices,
                                 initial=Target.Schedule.NONE,
                                 help_text=_("Monitored companies are checked again and raise alerts when they "
                                             "change."))


class TargetAddForm(TargetEditForm):
    cnpj = CNPJField(label=_("CNPJ"), help_text=_("With or without dots, slash and dash; letters are allowed."))
    refresh = forms.BooleanField(label=_("Refresh (bypass the cache)"), required=False,
                                 help_text=_("Ask the registries even when a recent answer is cached, at the "
                                             "full price."))

    field_order = ["cnpj", "label", "tags", "schedule", "refresh"]


class TargetFilterForm(forms.Form):
    q = forms.CharField(label=_("Search"), required=False, max_length=200,
                        widget=forms.TextInput(attrs={"type": "search",
                                                      "placeholder": _("CNPJ, label or company name")}))
    risk = forms.ChoiceField(label=_("Risk level"), required=False,
                             choices=[("", _("Any risk level")), *RiskLevel.choices])
    status = forms.ChoiceField(label=_("Status"), required=False,
                               choices=[("", _("Any status")), *Check.Status.choices,
                                        (NEVER_CHECKED, _("Not checked yet"))])
    tag = forms.ChoiceField(label=_("Tag"), required=False)

    def __init__(self, *args, tags: list[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tag"].choices = [("", _("Any tag")), *((tag, tag) for tag in tags)]

    def filters(self) -> dict[str, str]:
        """The valid filters (an unknown value is ignored rather than failing the page)."""
        self.is_valid()
        return {name: self.cleaned_data.get(name) or "" for name in ("q", "risk", "status", "tag")}


# Labels and help of SignalThresholds fields (checks/signals.py); a new field shows its name until added here.
THRESHOLD_TEXTS = {
    "situacao_recente_days": (_("Recent status change (days)"),
                              _("A registration status other than active set less than this many days ago.")),
    "empresa_recente_medium_days": (_("New company, medium risk (days)"),
                                    _("Companies opened less than this many days ago.")),
    "empresa_recente_low_days": (_("New company, low risk (days)"),
                                 _("Companies opened less than this many days ago; at least the medium-risk "
                                   "value.")),
    "capital_baixo_limit": (_("Low share capital (R$)"), _("Share capital below this amount.")),
    "capital_incompativel_multiple": (_("Incompatible share capital (times)"),
                                      _("A declared amount above this many times the share capital.")),
    "exclusao_recente_days": (_("Recent exclusion from Simples or MEI (days)"), None),
    "socio_entrada_recente_days": (_("Partner joined recently (days)"), None),
    "socio_faixa_jovem_max": (_("Young administrator: age range up to"),
                              _("Receita's age range codes: 1 = 0–12 years, 2 = 13–20 … 9 = over 80.")),
    "socio_faixa_idosa_min": (_("Elderly partner: age range from"),
                              _("Receita's age range codes; 10 turns the signal off.")),
    "qsa_grande_limit": (_("Many partners: more than"), None),
    "cnae_match_digits": (_("Activity comparison depth (CNAE digits)"),
                          _("2 = division, 3 = group, 4 = class, 7 = subclass.")),
    "dados_desatualizados_days": (_("Registry data out of date after (days)"), None),
    "cnaes_sensiveis": (_("Sensitive activities (CNAE codes)"),
                        _("Comma-separated codes or prefixes, e.g. 6491300, 6612603.")),
    "motivos_graves": (_("Serious status reasons (Receita codes)"), _("Comma-separated codes.")),
}
_LIST_SEPARATORS = re.compile(r"[,;\s]+")


def _threshold_text(value) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


class ChecksSettingsForm(forms.Form):
    """Retention, alert e-mails and every SignalThresholds field, validated by `SignalThresholds.from_settings`."""

    retention_days = forms.IntegerField(label=_("Keep reports for (days)"), min_value=1, max_value=3650,
                                        help_text=_("Older reports are deleted every day; each target keeps its "
                                                    "latest one."))
    alert_emails = forms.BooleanField(label=_("E-mail alerts to owners and admins"), required=False)

    def __init__(self, *args, thresholds: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        defaults = SignalThresholds().as_settings()
        current = {**defaults, **(thresholds or {})}
        self.threshold_names = [spec.name for spec in dataclasses.fields(SignalThresholds)]
        for name in self.threshold_names:
            label, help_text = THRESHOLD_TEXTS.get(name, (name, None))
            default = _threshold_text(defaults[name])
            is_list = isinstance(defaults[name], list)
            is_decimal = isinstance(getattr(SignalThresholds(), name), Decimal)
            widget = forms.TextInput(attrs={"inputmode": "text" if is_list else "decimal" if is_decimal
                                            else "numeric"})
            hint = _("Default: %(default)s.") % {"default": default}
            self.fields[name] = forms.CharField(
                label=label, required=False, initial=_threshold_text(current[name]), widget=widget,
                help_text=f"{help_text} {hint}" if help_text else hint)

    @property
    def threshold_fields(self):
        return [self[name] for name in self.threshold_names]

    @property
    def general_fields(self):
        return [self["retention_days"], self["alert_emails"]]

    def clean(self):
        cleaned = super().clean()
        defaults = SignalThresholds().as_settings()
        given = {}
        for name in self.threshold_names:
            text = (cleaned.get(name) or "").strip()
            if not text:
                continue  # blank: the default
            given[name] = [item for item in _LIST_SEPARATORS.split(text) if item] if isinstance(
                defaults[name], list) else text
        try:
            thresholds = SignalThresholds.from_settings(given)
        except SignalThresholdsError as error:
            for name, message in error.errors.items():
                self.add_error(name if name in self.fields else None, message)
            return cleaned
        # Only what differs from the defaults is stored, so better defaults later reach everyone else.
        chosen = thresholds.as_settings()
        cleaned["thresholds"] = {name: value for name, value in chosen.items() if value != defaults[name]}
        return cleaned
