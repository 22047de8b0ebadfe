"""Dark mode and the dashboard in a real browser against the production-style server: "system" follows the
device's preference (Playwright's colour-scheme emulation), a forced choice wins and is kept across reloads;
the dashboard stacks its tiles on a phone, in Portuguese, without a horizontal scroll.

Chromium is Debian's, driven by Playwright (the harness of tests/test_browser.py).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from . import test_browser as harness
from .servers import in_thread

pytestmark = pytest.mark.browser

browser = harness.browser
PHONE = harness.PHONE
PASSWORD = "correct-horse-battery"  # conftest's tenant_world users
EMAIL = "admin-b@example.com"
SLUG = "org-b"


new_page = harness.new_page  # new_page(color_scheme=...) emulates the device's preference


@pytest.fixture
def admin_b(tenant_world, django_db_blocker):
    """Org B's admin, with the theme and language a new account has; put back afterwards."""
    from accounts.models import User

    user = tenant_world["b"]["admin"]
    with django_db_blocker.unblock():
        language = in_thread(lambda: User.objects.get(pk=user.pk).language)

    def reset():
        User.objects.filter(pk=user.pk).update(theme="system", language=language)

    with django_db_blocker.unblock():
        in_thread(reset)
    yield user
    with django_db_blocker.unblock():
        in_thread(reset)


def sign_in(page) -> None:
    harness.sign_in(page, EMAIL, PASSWORD)


def page_colours(page) -> dict:
    """The page's background (the root's: the body is transparent over it), its text, a card's background, and
    the colour scheme form controls are drawn in."""
    return page.evaluate("""() => {
        const root = getComputedStyle(document.documentElement);
        const card = document.querySelector(".card");
        return {theme: document.documentElement.dataset.theme, background: root.backgroundColor,
                text: getComputedStyle(document.body).color, scheme: root.colorScheme,
                card: card ? getComputedStyle(card).backgroundColor : null};
    }""")


def brightness(rgb: str) -> float:
    """0 (black) to 255 (white): the mean of an `rgb(r, g, b)` colour's channels."""
    channels = [float(part) for part in rgb[rgb.index("(") + 1:rgb.index(")")].split(",")[:3]]
    return sum(channels) / 3


def choose_theme(page, label: str) -> None:
    """Open the account menu and press one of the theme buttons (the form posts and comes back here)."""
    menu = page.locator("details.account-menu")
    menu.locator("summary").click()
    with page.expect_navigation():
        menu.get_by_role("button", name=label, exact=True).click()


def is_dark(colours: dict) -> bool:
    return brightness(colours["background"]) < 60 and brightness(colours["text"]) > 180


def is_light(colours: dict) -> bool:
    return brightness(colours["background"]) > 230 and brightness(colours["text"]) < 60


def test_system_follows_the_device_and_a_forced_choice_is_kept(new_page, admin_b):
    page = new_page(color_scheme="dark")
    sign_in(page)
    page.goto(f"/o/{SLUG}/")
    colours = page_colours(page)
    assert colours["theme"] == "system" and is_dark(colours), colours
    assert colours["scheme"] == "dark"  # form controls and scrollbars follow
    assert brightness(colours["card"]) < 60

    choose_theme(page, "Light")
    assert urlsplit(page.url).path == f"/o/{SLUG}/"  # back where the choice was made
    colours = page_colours(page)
    assert colours["theme"] == "light" and is_light(colours), colours
    assert colours["scheme"] == "light"
    page.reload()
    assert is_light(page_colours(page))
    page.goto("/accounts/profile/")
    assert is_light(page_colours(page))
    assert page.locator("main .theme-form button[aria-pressed=true]").inner_text().strip() == "Light"

    choose_theme(page, "System")
    assert is_dark(page_colours(page))


def test_a_forced_dark_theme_wins_on_a_light_device(new_page, admin_b):
    page = new_page(color_scheme="light")
    sign_in(page)
    page.goto(f"/o/{SLUG}/")
    assert is_light(page_colours(page))
    choose_theme(page, "Dark")
    colours = page_colours(page)
    assert colours["theme"] == "dark" and is_dark(colours), colours
    page.reload()
    assert is_dark(page_colours(page))


def test_the_dashboard_fits_a_phone_in_portuguese(new_page, admin_b):
    from django.utils import translation

    with translation.override("pt-br"):
        heading = translation.gettext("Recent conversations")
    page = new_page(viewport=PHONE, color_scheme="dark")
    sign_in(page)
    harness.switch_language(page, "pt-br")
    page.goto(f"/o/{SLUG}/")
    assert page.locator("html").get_attribute("lang") == "pt-br"
    assert page.get_by_role("heading", name=heading).is_visible()
    widths = page.evaluate("""() => ({
        scroll: document.documentElement.scrollWidth,
        tiles: [...document.querySelectorAll(".dashboard-tiles > .card")]
            .map((tile) => tile.getBoundingClientRect().left),
    })""")
    assert widths["scroll"] <= PHONE["width"], f"horizontal scroll on a phone: {widths}"
    assert len(widths["tiles"]) >= 3 and len(set(widths["tiles"])) == 1, f"the tiles do not stack: {widths}"
