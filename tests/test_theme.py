"""Dark mode: the user's choice (system, light, dark) is saved by a plain form and rendered as <html data-theme>;
the stylesheets colour everything through variables, with a dark palette that keeps WCAG AA contrast.

The browser side (the device's preference, a forced choice, the choice kept across a reload) is in
tests/test_browser_theme.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.test import Client

from accounts.models import Theme, User

STATIC = Path(__file__).resolve().parent.parent / "static"
STYLESHEETS = [STATIC / "css" / "prumo.css", STATIC / "css" / "checks.css", STATIC / "css" / "highlight.css",
               STATIC / "api" / "docs.css"]
HTML_THEME = re.compile(r'<html lang="[\w-]+" data-theme="(\w+)">')


def page_theme(response) -> str:
    match = HTML_THEME.search(response.content.decode())
    assert match, "no data-theme on <html>"
    return match.group(1)


# ---------------------------------------------------------------- the choice


@pytest.mark.django_db
def test_the_choice_is_saved_and_every_page_renders_it(client_for, tenant_world, org_a):
    client = client_for("a", "member")
    user = tenant_world["a"]["member"]
    User.objects.filter(pk=user.pk).update(theme=Theme.SYSTEM)
    assert page_theme(client.get(f"/o/{org_a.slug}/")) == "system"

    response = client.post("/accounts/theme/", {"theme": "dark", "next": f"/o/{org_a.slug}/chat/"})
    assert response.status_code == 302 and response["Location"] == f"/o/{org_a.slug}/chat/"
    assert User.objects.get(pk=user.pk).theme == "dark"
    for path in (f"/o/{org_a.slug}/", "/accounts/profile/", "/"):
        assert page_theme(client.get(path)) == "dark"

    client.post("/accounts/theme/", {"theme": "light", "next": "/accounts/profile/"})
    page = client.get("/accounts/profile/")
    assert page_theme(page) == "light"
    pressed = re.findall(r'name="theme" value="(\w+)" aria-pressed="true"', page.content.decode())
    assert pressed == ["light", "light"]  # the account menu's buttons and the profile page's


@pytest.mark.django_db
def test_a_bad_choice_is_a_form_error_not_a_500(client_for, tenant_world):
    client = client_for("b", "member")
    user = tenant_world["b"]["member"]
    User.objects.filter(pk=user.pk).update(theme=Theme.LIGHT)
    for data in ({"theme": "sepia"}, {}, {"theme": ""}):
        response = client.post("/accounts/theme/", data)
        assert response.status_code == 400
        assert 'data-testid="theme-errors"' in response.content.decode()
        assert "Select a valid choice." in response.content.decode() or "This field is required." in (
            response.content.decode())
    assert User.objects.get(pk=user.pk).theme == "light"


@pytest.mark.django_db
def test_the_choice_goes_back_only_to_our_own_pages(client_for):
    client = client_for("b", "viewer")
    for elsewhere in ("https://evil.example/", "//evil.example/o/", ""):
        response = client.post("/accounts/theme/", {"theme": "dark", "next": elsewhere})
        assert response.status_code == 302 and response["Location"] == "/accounts/profile/"


@pytest.mark.django_db
def test_the_form_needs_a_signed_in_user_a_post_and_its_csrf_token(tenant_world):
    anonymous = Client()
    assert page_theme(anonymous.get("/")) == "system"  # visitors follow their device
    assert "/accounts/theme/" not in anonymous.get("/").content.decode()
    response = anonymous.post("/accounts/theme/", {"theme": "dark"})
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(tenant_world["a"]["viewer"])
    assert strict.get("/accounts/theme/").status_code == 405
    assert strict.post("/accounts/theme/", {"theme": "dark"}).status_code == 403
    page = strict.get("/accounts/profile/").content.decode()
    form = re.search(r'<form method="post" action="/accounts/theme/".*?</form>', page, re.S).group(0)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    assert strict.post("/accounts/theme/", {"theme": "dark", "csrfmiddlewaretoken": token}).status_code == 302
    assert User.objects.get(pk=tenant_world["a"]["viewer"].pk).theme == "dark"
    User.objects.filter(pk=tenant_world["a"]["viewer"].pk).update(theme=Theme.SYSTEM)


# ---------------------------------------------------------------- the palettes

HEX = re.compile(r"#[0-9a-fA-F]{3,8}\b")


def declarations(css: str, selector: str) -> dict[str, str]:
    """The custom properties declared in the block of `selector` (its first occurrence)."""
    start = css.index(selector + " {")
    body = css[start + len(selector) + 2:css.index("}", start)]
    return dict(re.findall(r"(--[\w-]+):\s*([^;]+);", body))


def luminance(color: str) -> float:
    color = color.lstrip("#")
    if len(color) in (3, 4):
        color = "".join(c * 2 for c in color[:3])
    channels = [int(color[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(text: str, background: str) -> float:
    lighter, darker = sorted((luminance(text), luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


PRUMO = (STATIC / "css" / "prumo.css").read_text()
LIGHT = declarations(PRUMO, ":root")
DARK = declarations(PRUMO, ':root[data-theme="dark"]')
# Text (first) on background (second), as the stylesheets pair them.
TEXT_PAIRS = [
    ("fg", "bg"), ("fg", "card"), ("fg", "field"), ("muted", "bg"), ("muted", "card"), ("accent", "bg"),
    ("accent", "card"), ("accent-fg", "accent"), ("danger", "card"), ("danger", "bg"), ("ok", "card"), ("ok", "bg"),
    ("accent-soft-fg", "accent-soft"), ("fg", "accent-soft"), ("muted", "accent-soft"), ("accent", "accent-soft"),
    ("fg", "info-soft"), ("info-fg", "info-soft"), ("ok", "ok-soft"), ("danger", "danger-soft"),
    ("warn", "warn-soft"), ("neutral-fg", "neutral-soft"), ("on-danger", "danger"), ("on-danger", "danger-strong"),
]


def test_the_dark_palette_is_the_same_forced_or_by_the_device_and_covers_every_colour():
    by_device = declarations(PRUMO, ':root:not([data-theme="light"])')
    assert DARK == by_device
    colours = {name for name, value in LIGHT.items() if HEX.fullmatch(value.strip())}
    assert colours == set(DARK) - {"color-scheme"}, "a colour without a dark value (or the other way)"
    assert "@media screen and (prefers-color-scheme: dark)" in PRUMO
    assert re.search(r":root \{\s*color-scheme: light dark;", PRUMO)
    assert ':root[data-theme="light"] { color-scheme: light; }' in PRUMO


@pytest.mark.parametrize("palette", ["light", "dark"])
def test_text_keeps_aa_contrast_on_its_background(palette):
    colours = LIGHT if palette == "light" else DARK
    low = [(text, background, round(contrast(colours[f"--{text}"], colours[f"--{background}"]), 2))
           for text, background in TEXT_PAIRS if contrast(colours[f"--{text}"], colours[f"--{background}"]) < 4.5]
    assert low == []


def test_code_highlighting_has_a_dark_palette_with_aa_contrast():
    css = (STATIC / "css" / "highlight.css").read_text()
    light = declarations(css, ".highlight")
    dark = declarations(css, ':root[data-theme="dark"] .highlight')
    assert dark == declarations(css, ':root:not([data-theme="light"]) .highlight')
    assert set(light) == set(dark)
    for colours in (light, dark):
        texts = [name for name in colours if name not in ("--hl-bg", "--hl-line")]
        low = [(name, round(contrast(colours[name], colours["--hl-bg"]), 2)) for name in texts
               if contrast(colours[name], colours["--hl-bg"]) < 4.5]
        assert low == []
        assert contrast(colours["--hl-fg"], colours["--hl-line"]) >= 4.5  # a highlighted line's text


def test_stylesheets_name_no_colour_outside_their_palettes():
    """A colour written into a rule would not change with the theme: rules use the variables."""
    for path in STYLESHEETS:
        css = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
        rules = re.sub(r"--[\w-]+:\s*[^;]+;", "", css)  # declarations of the palettes themselves
        assert HEX.findall(rules) == [], f"{path.name} has colours outside its palette"
        assert not re.search(r"\b(rgba?|hsla?)\(", rules), path.name
