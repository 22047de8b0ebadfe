"""A streaming answer is shown rendered, not as raw markdown, and sanitized like the final render.

static/js/chat.js renders the text streamed so far with the vendored markdown-it and DOMPurify, configured
from chat/markdown.py's allow-list (emitted into the page): these tests read the DOM while the answer is still
streaming (its article still has `data-stream-url`) and compare it with what the server renders when it is done.

The demo model's answer (chat/providers/demo.py) has bold text, a quote of the question and a code fence, so a
real answer from the real worker shows each of them mid-stream; a question with raw HTML in it comes back in
that quote. For a wider corpus, one test serves the stream itself (Playwright answers the page's EventSource
with the server's own event format), so the whole renderer meets every case of tests/test_chat_markdown.py.
"""

from __future__ import annotations

import re
import uuid

import pytest

from . import test_browser as harness
from . import test_browser_chat as chat_harness
from .test_browser_chat import ANSWER_TIMEOUT_MS, answer_of, ask, sign_in
from .test_chat_markdown import DANGEROUS_TAGS, OTHER_ATTRIBUTES, URL_SCHEMES, XSS, in_context

pytestmark = pytest.mark.browser

browser = harness.browser
new_page = harness.new_page
threads = chat_harness.threads
org_db = chat_harness.org_db

STREAM_URL = re.compile(r".*/chat/m/\d+/events/.*")
# Every repaint of a streaming answer, as the reader saw it, and any CSP violation on the page.
RENDER_RECORDER = """
window.__renders = [];
window.__violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__violations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
new MutationObserver(() => {
  document.querySelectorAll("article[data-stream-url] [data-stream-view]").forEach((view) => {
    if (view.hidden) return;
    window.__renders.push({
      id: view.closest("article").id,
      html: view.innerHTML,
      text: view.textContent,
      height: view.getBoundingClientRect().height,
      strong: view.querySelector("strong") !== null,
      quote: view.querySelector("blockquote") !== null,
      code: view.querySelector(".codeblock pre") !== null,
    });
  });
}).observe(document, { subtree: true, childList: true, characterData: true });
"""
# A fragment's elements, attributes and text as nested lists; a <pre> as its text alone, since only the server
# colors code (Pygments' spans), which changes neither the text nor the layout.
SKELETON = """
(html) => {
  const walk = (node) => {
    if (node.nodeType === Node.TEXT_NODE) return node.data;
    if (node.nodeType !== Node.ELEMENT_NODE) return null;
    // nh3 leaves `class=""` where it removed every class; DOMPurify removes the attribute.
    const attributes = [...node.attributes].filter((a) => !(a.name === "class" && a.value === ""))
      .map((a) => [a.name, a.value]).sort();
    if (node.localName === "pre") return ["pre", attributes, [node.textContent]];
    return [node.localName, attributes, children(node)];
  };
  const children = (node) => {
    const out = [];
    node.childNodes.forEach((child) => {
      const part = walk(child);
      if (part === null) return;
      if (typeof part === "string" && typeof out[out.length - 1] === "string") out[out.length - 1] += part;
      else out.push(part);
    });
    return out;
  };
  const template = document.createElement("template");
  template.innerHTML = html;
  return children(template.content);
}
"""
# What no rendering of an answer may contain: elements that run or load something, handlers, inline styles,
# links other than http(s) and mailto.
UNSAFE = """
(roots) => roots.flatMap((root) => [...root.querySelectorAll("*")]).flatMap((element) => {
  const found = [];
  if (["script", "img", "iframe", "svg", "math", "object", "embed", "style", "form", "input", "details",
       "link", "meta", "base"].includes(element.localName)) found.push(element.outerHTML);
  for (const { name, value } of element.attributes) {
    if (name.startsWith("on") || ["style", "src", "srcset", "action", "formaction"].includes(name)) {
      found.push(`${element.localName}[${name}=${value}]`);
    }
    if (name === "href" && !/^(https?|mailto):/i.test(value.trim())) found.push(`${element.localName}[href=${value}]`);
  }
  return found;
})
"""


def skeleton(page, html: str):
    return page.evaluate(SKELETON, html)


def unsafe(page, article: str) -> list[str]:
    """What is unsafe in the answer's text (streamed, rendered or final) of `article`."""
    texts = page.locator(f"{article} .md")
    assert texts.count() > 0
    return texts.evaluate_all(UNSAFE)


def sanitizer_samples() -> list[str]:
    """HTML that tries every tag, attribute, class, attribute value and URL scheme near the allow-list."""
    import nh3

    from chat.markdown import sanitizer_settings

    rules = sanitizer_settings()
    tags = set(nh3.ALLOWED_TAGS) | set(rules["tags"]) | DANGEROUS_TAGS | {"u", "details", "label", "video"}
    names = set().union(*nh3.ALLOWED_ATTRIBUTES.values(), *rules["attributes"].values(), OTHER_ATTRIBUTES)
    attributes = " ".join(f'{name}="v1"' for name in sorted(names))
    classes = " ".join([*sorted(set().union(*rules["classes"].values())), "unlisted"])
    samples = [in_context(tag, f' {attributes} class="{classes}"') for tag in sorted(tags)]
    samples += [in_context(tag, f' {name}="{value}"') for tag, valued in rules["attribute_values"].items()
                for name, values in valued.items() for value in [*values, "other"]]
    samples += [f'<a href="{scheme}:x" title="t" target="_self" rel="opener">x</a>' for scheme in sorted(URL_SCHEMES)]
    samples += [f'<a href="{url}">x</a>' for url in ("/accounts/logout/", "#top", "page.html", "//example.com/x",
                                                     " JAVASCRIPT:alert(1)", "java\tscript:alert(1)")]
    samples += [f"<div>a<{tag}>secret <b>bold</b></{tag}>b</div>" for tag in sorted(tags)]
    return samples + XSS


def test_the_browsers_sanitizer_keeps_what_the_servers_keeps(new_page, tenant_world):
    """DOMPurify, configured from the page's copy of the allow-list, reduces hostile HTML exactly as nh3 does
    (the second layer: markdown-it never hands it raw HTML)."""
    from chat.markdown import html_sanitize

    # Chromium reports every inline handler it parses, even in the inert document DOMPurify parses into, so
    # these samples make CSP reports; the tests of real answers check there are none.
    page = new_page(csp_reports_expected=True)
    sign_in(page)
    page.goto("/o/org-a/chat/")
    page.wait_for_function("window.chatMarkdown !== undefined")
    assert page.evaluate("window.chatMarkdown !== null"), "the renderer did not load"
    samples = sanitizer_samples()
    cleaned = page.evaluate("""(samples) => samples.map((html) => {
      const holder = document.createElement("div");
      holder.append(window.chatMarkdown.sanitize(html));
      return holder.innerHTML;
    })""", samples)
    differ = [(html, browser_html, html_sanitize(html)) for html, browser_html in zip(samples, cleaned, strict=True)
              if skeleton(page, browser_html) != skeleton(page, html_sanitize(html))]
    assert differ == []
    # Raw-text elements: the two HTML parsers disagree on their text (nh3 may keep it, the browser drops it), so
    # only check that nothing of them survives.
    raw = [f"<p>a<{tag} title=t>secret <b>bold</b></{tag}>b</p>" for tag in ("title", "textarea", "noembed", "xmp")]
    for html in page.evaluate("""(samples) => samples.map((html) => {
      const holder = document.createElement("div");
      holder.append(window.chatMarkdown.sanitize(html));
      return holder.innerHTML;
    })""", raw):
        assert not re.search(r"<(?!/?p>)", html) and "<b>" not in html, html


def test_the_answer_is_rendered_while_it_streams_and_the_final_version_takes_its_place(new_page, threads, org_db):
    from playwright.sync_api import expect

    from chat.markdown import markdown_render

    page = new_page()
    page.add_init_script(RENDER_RECORDER)
    sign_in(page)
    thread_id = ask(page, threads, f"Does markdown render as it streams? {uuid.uuid4().hex[:8]}")
    answer_id = answer_of(org_db, thread_id).pk
    article = f"#message-{answer_id}"
    expect(page.locator(f"{article}.status-complete")).to_have_count(1, timeout=ANSWER_TIMEOUT_MS)

    renders = [r for r in page.evaluate("window.__renders") if r["id"] == f"message-{answer_id}"]
    assert renders, "the answer was never shown rendered while it streamed"
    with_bold = [r for r in renders if r["strong"]]
    assert with_bold and all("**" not in r["text"] for r in with_bold), "literal ** next to rendered bold"
    assert "**" not in renders[-1]["text"]
    assert any(r["quote"] for r in renders), "the quote was not a blockquote mid-stream"
    assert any(r["code"] for r in renders), "the code fence was not a code block mid-stream"
    assert page.evaluate("window.__violations") == []

    # The final version is in place once, and shows what the last streamed rendering showed, at the same height.
    message = answer_of(org_db, thread_id)
    assert message.status == "complete"
    assert page.locator(article).count() == 1 and page.locator("article.msg-assistant").count() == 1
    assert page.locator("article[data-stream-url], [data-stream-view], [data-stream-text]").count() == 0
    assert page.locator("#messages").inner_text().count("built-in demo model") == 1
    final = page.locator(f"{article} [data-copy-source]")
    assert final.locator("strong").count() == 1 and final.locator("blockquote").count() == 1
    assert skeleton(page, renders[-1]["html"]) == skeleton(page, final.inner_html())
    assert skeleton(page, renders[-1]["html"]) == skeleton(page, str(markdown_render(message.content)))
    assert abs(final.evaluate("(node) => node.getBoundingClientRect().height") - renders[-1]["height"]) <= 0.5


def test_raw_html_in_a_streaming_answer_stays_text(new_page, threads, org_db):
    from playwright.sync_api import expect

    page = new_page()
    page.add_init_script(RENDER_RECORDER)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sign_in(page)
    # The demo model quotes the question: its answer streams this raw HTML back.
    hostile = "<img src=x onerror=alert(1)> <script>alert(2)</script> [link](javascript:alert(3)) go"
    thread_id = ask(page, threads, hostile)
    answer_id = answer_of(org_db, thread_id).pk
    view = f"#message-{answer_id}[data-stream-url] [data-stream-view]"
    expect(page.locator(f"{view} blockquote")).to_contain_text("go")  # the whole quote has streamed
    assert unsafe(page, f"#message-{answer_id}") == []
    assert page.locator(f"{view} blockquote").inner_text() == hostile  # shown as text, as the server shows it
    expect(page.locator(f"#message-{answer_id}.status-complete")).to_have_count(1, timeout=ANSWER_TIMEOUT_MS)
    assert unsafe(page, f"#message-{answer_id}") == []
    assert dialogs == [] and page.evaluate("window.__violations") == []


FEATURES = """# Title

Some **bold**, *em*, ~~gone~~ and `code`.

3. third
4. fourth

- a
- b

> quoted

| a | b | c |
|:--|:-:|--:|
| 1 | 2 | 3 |

[docs](https://example.com/a?b=1&c=2 "Docs") <https://example.org> [home](/accounts/logout/) [mail](mailto:a@b.c)

![diagram](https://example.com/d.png) ![pixel](data:image/png;base64,iVBORw0KGgo=) ![local](/media/x.png)

```python
def f():
    return "<x>"
```

    indented code

***
"""


def test_a_streamed_corpus_renders_as_the_server_renders_it(new_page, threads, org_db):
    """Every markdown feature and every XSS case of tests/test_chat_markdown.py, streamed in small pieces,
    ends up exactly as chat/markdown.py renders it (code colors aside) and inert."""
    from chat.markdown import markdown_render
    from chat.streams import sse

    text = FEATURES + "\n\n".join(XSS) + '\n\nLast words.\n\n```js\nconst unclosed = "END'
    pieces = [text[start:start + 7] for start in range(0, len(text), 7)]
    body = b"retry: 3600000\n\n" + b"".join(
        sse("delta", {"text": piece}, f"1-{n}") for n, piece in enumerate(pieces))

    page = new_page()
    page.add_init_script(RENDER_RECORDER)
    page.route(STREAM_URL, lambda route: route.fulfill(
        status=200, body=body, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}))
    sign_in(page)
    thread_id = ask(page, threads, f"Stand-in question {uuid.uuid4().hex[:8]}")
    answer_id = answer_of(org_db, thread_id).pk
    view = page.locator(f"#message-{answer_id}[data-stream-url] [data-stream-view]")
    view.locator("pre", has_text='const unclosed = "END').wait_for()

    assert skeleton(page, view.inner_html()) == skeleton(page, str(markdown_render(text)))
    assert unsafe(page, f"#message-{answer_id}") == []
    assert view.locator("th.align-center").count() == 1 and view.locator("ol[start='3']").count() == 1
    assert page.locator(f"#message-{answer_id} [data-stream-text]").text_content() == text
    assert page.evaluate("window.__violations") == []


def test_without_the_renderer_the_answer_streams_as_plain_text(new_page, threads, org_db):
    from playwright.sync_api import expect

    page = new_page()
    page.route(re.compile(r".*/static/vendor/.*"), lambda route: route.abort())
    sign_in(page)
    thread_id = ask(page, threads, f"What if markdown-it is missing? {uuid.uuid4().hex[:8]}")
    answer_id = answer_of(org_db, thread_id).pk
    streaming = page.locator(f"#message-{answer_id}[data-stream-url]")
    expect(streaming.locator("[data-stream-text]")).to_contain_text("**built-in demo model**")
    expect(streaming.locator("[data-stream-view]")).to_be_hidden()

    final = page.locator(f"#message-{answer_id}.status-complete")
    expect(final).to_have_count(1, timeout=ANSWER_TIMEOUT_MS)
    assert final.locator("[data-copy-source] strong").inner_text() == "built-in demo model"
    assert page.locator("#messages").inner_text().count("built-in demo model") == 1


def test_the_trial_renders_its_answer_while_it_streams(new_page, redis_url, celery_worker_process):
    import redis
    from playwright.sync_api import expect

    redis.Redis.from_url(redis_url).delete("trial:count:ip:127.0.0.1")  # the per-address cap, used by earlier runs
    page = new_page()
    page.add_init_script(RENDER_RECORDER)
    page.goto("/try/")
    box = page.locator("#composer-input")
    box.fill(f"Does the trial render markdown as it streams? {uuid.uuid4().hex[:8]}")
    with page.expect_navigation():
        box.press("Enter")
    expect(page.locator("article.msg-assistant.status-complete")).to_have_count(1, timeout=ANSWER_TIMEOUT_MS)

    renders = page.evaluate("window.__renders")
    with_bold = [r for r in renders if r["strong"]]
    assert with_bold and all("**" not in r["text"] for r in with_bold)
    assert any(r["quote"] for r in renders) and any(r["code"] for r in renders)
    assert page.locator("#messages").inner_text().count("built-in demo model") == 1
    assert page.locator("[data-stream-view]").count() == 0
    assert page.evaluate("window.__violations") == []
