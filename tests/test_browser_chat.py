"""Chat in a real browser against the production-style server and the real Celery worker: ask the
demo model, watch the answer stream in, reload mid-answer and see it finish exactly once; and the
same page on a phone.

Chromium is Debian's, driven by Playwright (the harness of tests/test_browser.py). The worker
commits the answers; the `threads` fixture removes them afterwards. Playwright keeps an event loop
running in the main thread, so database reads go through `in_thread`.
"""

from __future__ import annotations

import re
import uuid
from html.parser import HTMLParser

import pytest
from django_tenants.utils import schema_context

from . import test_browser as harness
from .servers import in_thread
from .test_chat_streaming import DEMO, EMAIL, PASSWORD, SLUG, expected_answer, threads_remove

pytestmark = pytest.mark.browser

# test_browser.py's fixtures, registered here too: one Chromium for this module, screenshots on failure.
browser = harness.browser
new_page = harness.new_page
PHONE = harness.PHONE

ANSWER_TIMEOUT_MS = 30_000  # one demo answer takes ~4 s (tests/servers.py CHAT_DEMO_DELAY)
# Remembers, per article, the last text the stream wrote into it: the final article replaces the
# streaming one, so this is how a test sees what was streamed (after a reload, since that reload).
STREAM_RECORDER = """
window.__streamed = {};
new MutationObserver(() => {
  document.querySelectorAll("article[data-stream-url] [data-stream-text]").forEach((node) => {
    window.__streamed[node.closest("article").id] = node.textContent;
  });
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def squeeze(text: str) -> str:
    return " ".join(text.split())


def html_text(html: str) -> str:
    """The text content of an HTML fragment, whitespace collapsed (like the DOM's textContent)."""
    parser = _Text()
    parser.feed(html)
    parser.close()
    return squeeze("".join(parser.parts))


@pytest.fixture
def threads(tenant_world, django_db_blocker):
    """Thread ids a test made through the browser; removed (with the worker's usage records) after."""
    made: list[int] = []
    yield made
    with django_db_blocker.unblock():
        in_thread(lambda: threads_remove(tenant_world["a"]["org"], made))


@pytest.fixture
def org_db(tenant_world, django_db_blocker, celery_worker_process):
    """`org_db(fn)`: run ORM code in org-a's schema, outside Playwright's event loop."""

    def run(fn):
        def in_schema():
            with schema_context(tenant_world["a"]["org"].schema_name):
                return fn()

        with django_db_blocker.unblock():
            return in_thread(in_schema)

    return run


def sign_in(page) -> None:
    harness.sign_in(page, EMAIL, PASSWORD)


def ask(page, threads: list[int], question: str) -> int:
    """Type a question on the new-chat page and press Enter; returns the new thread's id."""
    page.goto(f"/o/{SLUG}/chat/")
    page.select_option("[data-testid=model-picker]", DEMO)
    box = page.locator("#composer-input")
    box.fill(question)
    with page.expect_navigation(url=re.compile(rf"/o/{SLUG}/chat/t/\d+/$")):
        box.press("Enter")
    thread_id = int(re.search(r"/chat/t/(\d+)/$", page.url).group(1))
    threads.append(thread_id)
    return thread_id


def answer_of(org_db, thread_id: int):
    from chat.models import Message

    return org_db(lambda: Message.objects.get(thread_id=thread_id, role=Message.Role.ASSISTANT))


def test_answer_streams_survives_a_reload_and_finishes_exactly_once(new_page, threads, org_db):
    from playwright.sync_api import expect

    from chat.markdown import markdown_render

    page = new_page()
    page.add_init_script(STREAM_RECORDER)
    sign_in(page)
    question = f"Will a reload lose this answer? {uuid.uuid4().hex[:8]}"
    thread_id = ask(page, threads, question)
    answer_id = answer_of(org_db, thread_id).pk
    full = expected_answer(question)

    article = page.locator(f"#message-{answer_id}")
    streamed = article.locator("[data-stream-text]")
    expect(streamed).to_have_text(re.compile(r"\S"))  # text streams in
    partial = streamed.text_content()
    assert full.startswith(partial) and len(partial) < len(full), partial
    page.wait_for_function("([id, n]) => (window.__streamed[id] || '').length > n", arg=[f"message-{answer_id}",
                                                                                         len(partial)])

    page.reload()
    assert page.locator(f"#message-{answer_id}[data-stream-url]").count() == 1, (
        "the answer had finished before the reload: nothing was resumed")
    final = page.locator(f"#message-{answer_id}.status-complete")
    expect(final).to_have_count(1, timeout=ANSWER_TIMEOUT_MS)

    message = answer_of(org_db, thread_id)
    assert message.status == "complete" and message.content == full
    # Exactly one answer article, no longer streaming, showing the saved text once.
    assert page.locator("article.msg-assistant").count() == 1
    assert page.locator(f"#message-{answer_id}").count() == 1
    assert page.locator("article[data-stream-url]").count() == 0
    assert page.evaluate("(id) => window.__streamed[id]", f"message-{answer_id}") == message.content, (
        "the reloaded page streamed a different text (gap or duplicate)")
    shown = final.locator("[data-copy-source]").evaluate("(node) => node.textContent")
    assert squeeze(shown) == html_text(markdown_render(message.content))
    assert page.locator("#messages").inner_text().count("built-in demo model") == 1


def assert_fits(page, selectors: list[str]) -> None:
    widths = page.evaluate(
        """() => ({
            scroll: document.documentElement.scrollWidth,
            client: document.documentElement.clientWidth,
            styled: [...document.styleSheets].some((sheet) => sheet.href && sheet.cssRules.length > 0),
        })"""
    )
    assert widths["styled"], "no stylesheet: the check would measure an unstyled page"
    assert widths["scroll"] <= widths["client"] <= PHONE["width"], f"horizontal scroll on a phone: {widths}"
    for selector in selectors:
        locator = page.locator(selector)
        assert locator.count() > 0, f"{selector} is missing"
        for n in range(locator.count()):
            element = locator.nth(n)
            assert element.is_visible(), f"{selector} #{n} is not visible"
            box = element.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= widths["client"] + 0.5, (selector, n, box, widths)


def test_chat_fits_a_phone(new_page, threads, org_db):
    from playwright.sync_api import expect

    page = new_page(viewport=PHONE)
    sign_in(page)
    page.goto(f"/o/{SLUG}/chat/")
    page.wait_for_load_state("load")
    assert_fits(page, ["#composer", "#composer-input", "[data-testid=model-picker]", "[data-testid=send]"])

    thread_id = ask(page, threads, f"Does this fit a phone? {uuid.uuid4().hex[:8]}")
    answer_id = answer_of(org_db, thread_id).pk
    expect(page.locator(f"#message-{answer_id}.status-complete")).to_have_count(1, timeout=ANSWER_TIMEOUT_MS)
    page.wait_for_load_state("load")
    assert_fits(page, ["#composer", "#composer-input", "[data-testid=send]", "article[data-testid=message]",
                       f"#message-{answer_id} .codeblock"])


def test_a_new_conversation_shows_its_title_without_a_reload(new_page, threads, org_db):
    """With only the demo model (offline), the title arrives after the first answer (issue 13, item 7)."""
    from playwright.sync_api import expect

    from chat.titles import title_from_text

    page = new_page()
    sign_in(page)
    question = f"Which documents does a company need for a bank account {uuid.uuid4().hex[:8]}?"
    thread_id = ask(page, threads, question)
    heading = page.locator("[data-testid=thread-title]")
    expect(heading).to_have_text("New conversation")
    answer_id = answer_of(org_db, thread_id).pk
    expect(page.locator(f"#message-{answer_id}.status-complete")).to_have_count(1, timeout=ANSWER_TIMEOUT_MS)

    title = title_from_text(question)
    expect(heading).to_have_text(title, timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("[data-testid=thread-list] li[aria-current] a")).to_have_text(title)
    expect(page).to_have_title(f"{title} · Prumo")
    assert page.locator("#rename-title").input_value() == title
