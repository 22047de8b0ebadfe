"""Screenshots of the pages a newcomer meets first, at 1280 and 375 px, from a running `make run`.

    make run                                   # in one terminal: the demo organization, seeded
    .venv/bin/python docs/screenshots/take.py  # in another: writes docs/screenshots/*.png

Signs in as the demo owner, asks the demo model a question (the chat is captured while the answer
streams), then captures the dashboard and billing. Uses Debian's Chromium (/usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

HERE = Path(__file__).resolve().parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SIZES = {"1280": {"width": 1280, "height": 860}, "375": {"width": 375, "height": 780}}
QUESTION = "What does Prumo check when I verify a CNPJ? Answer with a short list."


def sign_in(page, email: str, password: str) -> None:
    page.goto("/accounts/login/")
    form = page.locator("main form").filter(has=page.locator("input[name=password]"))
    form.locator("input[name=login]").fill(email)
    form.locator("input[name=password]").fill(password)
    with page.expect_navigation():
        form.locator("button[type=submit]").first.click()


def chat_mid_stream(page, slug: str, path: Path) -> None:
    page.goto(f"/o/{slug}/chat/")
    box = page.locator("#composer-input")
    box.fill(QUESTION)
    with page.expect_navigation(url=re.compile(rf"/o/{slug}/chat/t/\d+/$")):
        box.press("Enter")
    # Mid-stream: the answer is already rendered (its bold words), not yet complete.
    expect(page.locator("article[data-stream-url] [data-stream-view] strong").first).to_be_visible(timeout=30_000)
    page.screenshot(path=str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--email", default="demo@example.com")
    parser.add_argument("--password", default="prumo-demo")
    parser.add_argument("--org", default="demo")
    parser.add_argument("--language", default="en-US")
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for size, viewport in SIZES.items():
            context = browser.new_context(base_url=args.base_url, viewport=viewport, locale=args.language)
            page = context.new_page()
            sign_in(page, args.email, args.password)
            chat_mid_stream(page, args.org, HERE / f"chat-streaming-{size}.png")
            for name, url in (("dashboard", f"/o/{args.org}/"), ("billing", f"/o/{args.org}/billing/")):
                page.goto(url)
                page.screenshot(path=str(HERE / f"{name}-{size}.png"), full_page=True)
            context.close()
        browser.close()
    print("\n".join(sorted(str(path.relative_to(HERE.parent.parent)) for path in HERE.glob("*.png"))))


if __name__ == "__main__":
    main()
