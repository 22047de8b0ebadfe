"""Every user-facing string has a Brazilian Portuguese translation, compiled."""

from __future__ import annotations

import gettext
import re
from pathlib import Path

import pytest
from django.test import Client
from django.utils import translation

LOCALE = Path(__file__).resolve().parent.parent / "locale" / "pt_BR" / "LC_MESSAGES"


def _po_entries() -> list[str]:
    text = (LOCALE / "django.po").read_text()
    return [block for block in text.split("\n\n") if "\nmsgid " in "\n" + block and not block.startswith("#~")]


def test_catalog_has_no_untranslated_or_fuzzy_entries():
    entries = [entry for entry in _po_entries() if not re.search(r'^msgid ""\nmsgstr ""\n"', entry, re.M)]
    assert len(entries) > 100
    fuzzy = [entry for entry in entries if "#, fuzzy" in entry]
    empty = [entry for entry in entries if re.search(r'^msgstr(\[\d\])? ""$(?!\n")', entry, re.M)]
    assert fuzzy == [] and empty == []


def test_compiled_catalog_matches_the_source():
    with (LOCALE / "django.mo").open("rb") as handle:
        catalog = gettext.GNUTranslations(handle)
    pairs = re.findall(r'^msgid "(.+)"\nmsgstr "(.+)"$', (LOCALE / "django.po").read_text(), re.M)
    assert len(pairs) > 80
    stale = [msgid for msgid, msgstr in pairs if "\\" not in msgid + msgstr and catalog.gettext(msgid) != msgstr]
    assert stale == [], "run `make messages`: django.mo is older than django.po"


@pytest.mark.django_db
def test_pages_render_in_portuguese(client_for, org_a):
    client = client_for("a", "owner")
    client.post("/i18n/setlang/", {"language": "pt-br", "next": "/"})
    with translation.override("pt-br"):
        expected = [translation.gettext(s) for s in ("Dashboard", "Members", "Recent activity", "Language")]
    html = client.get(f"/o/{org_a.slug}/").content.decode()
    assert '<html lang="pt-br" ' in html
    for text in expected:
        assert text in html
    with translation.override("pt-br"):
        call_to_action = translation.gettext("Create your account")
    assert call_to_action != "Create your account"
    assert call_to_action in Client(HTTP_ACCEPT_LANGUAGE="pt-BR").get("/").content.decode()
