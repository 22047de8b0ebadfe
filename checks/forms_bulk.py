"""The bulk upload form: one CSV file (its content is checked by `checks.bulk.csv_parse`)."""

from __future__ import annotations

from django import forms
from django.utils.formats import number_format
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from .bulk import MAX_ROWS


class BulkUploadForm(forms.Form):
    file = forms.FileField(
        label=_("CSV file"),
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,.txt,.tsv,text/csv,text/plain",
                                               "aria-describedby": "id_file_help"}))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["file"].help_text = gettext(
            "Up to %(max)s CNPJs, one a row, with or without the mask. A header row may name the columns cnpj, "
            "label and tags; without one, the first column is read.") % {
                "max": number_format(MAX_ROWS, force_grouping=True)}
