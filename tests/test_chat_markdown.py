"""Chat answers' markdown: rendered on the server, highlighted with classes, and never executable."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import nh3
import pytest
from django.test import Client
from django.utils.safestring import SafeString

from chat import markdown
from chat.markdown import client_config, html_sanitize, markdown_render, sanitizer_settings

DANGEROUS_TAGS = {"script", "img", "iframe", "svg", "object", "embed", "style", "form", "input", "math", "link", "meta"}
SAFE_SCHEMES = ("http://", "https://", "mailto:")
REAL_TAG = re.compile(r"<[^<>]*>")
QUOTED_VALUE = re.compile(r""""[^"]*"|'[^']*'""")


class Elements(HTMLParser):
    """The elements of a fragment as (tag, attributes), with attribute values unescaped as a browser would."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {name: value or "" for name, value in attrs}))

    def tags(self) -> list[str]:
        return [tag for tag, _attrs in self.elements]


def assert_inert(html: str) -> None:
    """Nothing in `html` runs script, loads a remote resource or styles itself inline."""
    lowered = html.lower()
    for needle in ("<script", "<img", "<iframe", "<svg", "<style"):
        assert needle not in lowered, (needle, html)
    for tag in REAL_TAG.findall(lowered):
        assert not re.search(r"""href\s*=\s*["']?\s*(javascript|data|vbscript):""", tag), (tag, html)
        names = QUOTED_VALUE.sub('""', tag)
        assert not re.search(r"\s(on[a-z]+|style|src)\s*=", names), (tag, html)
    for tag, attrs in Elements(html).elements:
        assert tag not in DANGEROUS_TAGS, html
        for name, value in attrs.items():
            assert not name.startswith("on"), html
            assert name not in {"style", "src", "srcset", "formaction", "action"}, html
            if name == "href":
                assert value.strip().lower().startswith(SAFE_SCHEMES), html


def test_returns_safe_string():
    assert isinstance(markdown_render("hi"), SafeString)


def test_headings_emphasis_and_lists():
    html = markdown_render(
        "# Title\n\n## Sub\n\nSome **bold**, *em* and ~~gone~~.\n\n- one\n- two\n\n1. first\n2. second\n"
    )
    assert "<h1>Title</h1>" in html and "<h2>Sub</h2>" in html
    assert "<strong>bold</strong>" in html and "<em>em</em>" in html
    assert "<s>gone</s>" in html or "<del>gone</del>" in html
    assert "<ul>\n<li>one</li>\n<li>two</li>\n</ul>" in html
    assert "<ol>\n<li>first</li>\n<li>second</li>\n</ol>" in html


def test_ordered_list_start_is_kept():
    assert '<ol start="3">' in markdown_render("3. third\n4. fourth\n")


def test_table_alignment_as_classes_not_styles():
    html = markdown_render("| a | b | c |\n|:--|:-:|--:|\n| 1 | 2 | 3 |\n")
    assert "<table>" in html and "<thead>" in html and "<tbody>" in html
    assert '<th class="align-left">a</th>' in html
    assert '<th class="align-center">b</th>' in html
    assert '<td class="align-right">3</td>' in html
    assert_inert(html)


def test_links_open_in_a_new_tab_without_opener_or_referrer():
    html = markdown_render("[docs](https://example.com/a?b=1&c=2 \"Docs\") and <https://example.org>")
    (tag, attrs), (_tag2, attrs2) = Elements(html).elements[1:]
    assert tag == "a"
    assert attrs == {
        "href": "https://example.com/a?b=1&c=2", "title": "Docs",
        "target": "_blank", "rel": "noopener noreferrer nofollow",
    }
    assert attrs2["href"] == "https://example.org" and attrs2["target"] == "_blank"


def test_relative_links_lose_their_href():
    html = markdown_render("[home](/accounts/logout/) [frag](#x)")
    assert all("href" not in attrs for _tag, attrs in Elements(html).elements)


def test_fenced_code_is_highlighted_with_classes_and_a_copy_button():
    html = markdown_render('Look:\n\n```python\ndef f():\n    return "<x>"\n```\n')
    assert html.count('<div class="codeblock" data-lang="python">') == 1
    assert (
        '<div class="codeblock-bar"><span>python</span>'
        '<button type="button" class="copy-code" data-copy-code="">Copy</button></div>'
    ) in html
    assert '<div class="highlight"><pre>' in html
    assert '<span class="k">def</span>' in html and '<span class="nf">f</span>' in html
    assert "&lt;x&gt;" in html and "<x>" not in html
    assert_inert(html)


def test_unknown_or_missing_language_is_plain_text_without_guessing():
    for source in ("```\nSELECT 1;\n```", "```nosuchlang\nSELECT 1;\n```"):
        html = markdown_render(source)
        assert "SELECT 1;" in html
        assert '<span class="k">' not in html
    assert 'data-lang="text"' in markdown_render("```\nx\n```")
    assert 'data-lang="nosuchlang"' in markdown_render("```nosuchlang\nx\n```")


def test_indented_code_gets_the_same_frame():
    html = markdown_render("text\n\n    indented code\n")
    assert '<div class="codeblock" data-lang="text">' in html and "indented code" in html


def test_copy_label_is_translated_at_render_time(monkeypatch):
    monkeypatch.setattr(markdown, "gettext", lambda message: {"Copy": "Copiar"}[message])
    assert ">Copiar</button>" in markdown_render("```\nx\n```")


@pytest.mark.parametrize(
    "partial",
    [
        "Here is code:\n\n```python\ndef f(",
        "```",
        "```js\n",
        "| a | b |\n|--",
        "| a | b |\n|---|---|\n| 1 |",
        "**bold without end",
        "[link without end](http://exa",
        "> quote\n> - item\n>   ```\n",
        "1. one\n2.",
    ],
)
def test_partial_markdown_while_streaming_renders(partial):
    html = markdown_render(partial)
    assert isinstance(html, SafeString)
    assert_inert(html)


def test_unterminated_fence_keeps_its_code_highlighted():
    html = markdown_render("Intro\n\n```python\nimport os\nprint(os")
    assert 'data-lang="python"' in html and '<span class="kn">import</span>' in html
    assert html.count("<pre>") == 1


XSS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil/x.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    "<iframe src=javascript:alert(1)></iframe>",
    "<iframe srcdoc='<script>alert(1)</script>'>",
    '<a href="javascript:alert(1)">x</a>',
    "<a href='jav&#x09;ascript:alert(1)'>x</a>",
    '<p style="background:url(javascript:alert(1))">x</p>',
    '<div style="position:fixed">x</div>',
    "<style>body{display:none}</style>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<object data=javascript:alert(1)>",
    "<form action=javascript:alert(1)><button>go</button></form>",
    "[x](javascript:alert(1))",
    "[x](JAVASCRIPT:alert(1))",
    "[x]( javascript:alert(1) )",
    "[x](<javascript:alert(1)>)",
    "[x](java\tscript:alert(1))",
    "[x](vbscript:msgbox(1))",
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[x](jav&#x61;script:alert(1))",
    "[x](&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1))",
    "[x](javascript&colon;alert(1))",
    "[x](javas%63ript:alert(1))",
    "[x]: javascript:alert(1)\n\n[x]",
    "<javascript:alert(1)>",
    "![x](http://evil/x.png)",
    "![x](data:image/png;base64,iVBORw0KGgo=)",
    '![x" onerror="alert(1)](http://evil/x.png)',
    '[x](http://a.b/"onmouseover="alert(1))',
    '[x](http://a.b "title\\" onmouseover=\\"alert(1)")',
    '```"><script>alert(1)</script>\ncode\n```',
    "```python onload=alert(1)\ncode\n```",
    "```<img src=x onerror=alert(1)>\ncode\n```",
    "`<script>alert(1)</script>`",
    "<!-- <script>alert(1)</script> -->",
    "<details open ontoggle=alert(1)>",
    "<button data-copy-code onclick=alert(1)>Copy</button>",
]


@pytest.mark.parametrize("source", XSS)
def test_xss_is_inert(source):
    assert_inert(markdown_render(source))


def test_markdown_image_becomes_a_link_not_an_image():
    html = markdown_render("![diagram](https://example.com/d.png)")
    assert "<img" not in html
    assert Elements(html).elements[1] == ("a", {
        "href": "https://example.com/d.png", "target": "_blank", "rel": "noopener noreferrer nofollow",
    })
    assert ">diagram</a>" in html


def test_data_image_is_dropped_to_its_alt_text():
    html = markdown_render("![pixel](data:image/png;base64,iVBORw0KGgo=)")
    assert Elements(html).tags() == ["p"] and "pixel" in html


def test_raw_html_is_shown_as_text():
    html = markdown_render("<b>bold</b> <script>alert(1)</script>")
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "&lt;script&gt;" in html
    assert Elements(html).tags() == ["p"]


def test_info_string_cannot_break_out_of_attributes():
    html = markdown_render('```"><script>alert(1)</script>\ncode\n```')
    assert 'data-lang="text"' in html
    assert Elements(html).tags() == ["div", "div", "span", "button", "div", "pre", "span"]


@pytest.mark.parametrize(
    "html",
    [
        '<img src="http://evil/x.png">',
        '<a href="javascript:alert(1)" onclick="alert(1)">x</a>',
        "<script>alert(1)</script>",
        '<div style="color:red" onmouseover="alert(1)">x</div>',
        '<svg onload="alert(1)"></svg>',
    ],
)
def test_the_inertness_check_is_not_vacuous(html):
    with pytest.raises(AssertionError):
        assert_inert(html)


def test_sanitizer_alone_keeps_only_the_allow_list():
    """Second layer: even HTML markdown-it never emits is reduced to the allow-list."""
    html = html_sanitize(
        '<div class="codeblock evil" data-lang="py" style="color:red" onclick="x()">'
        '<span class="k attacker">def</span>'
        '<button type="submit" class="copy-code" data-copy-code onclick="x()" formaction="/x">Copy</button>'
        '<a href="javascript:alert(1)">a</a><a href="HTTPS://ok.example/" target="_self" rel="opener">b</a>'
        '<img src="http://evil/x.png"><iframe src="https://evil/"></iframe><form><input></form>'
        '<table><tr><td class="align-left" style="x" align="right">1</td></tr></table></div>'
    )
    elements = Elements(html).elements
    assert elements[0] == ("div", {"class": "codeblock", "data-lang": "py"})
    assert elements[1] == ("span", {"class": "k"})
    assert elements[2] == ("button", {"class": "copy-code", "data-copy-code": ""})
    assert elements[3] == ("a", {"target": "_blank", "rel": "noopener noreferrer nofollow"})
    assert elements[4] == ("a", {
        "href": "HTTPS://ok.example/", "target": "_blank", "rel": "noopener noreferrer nofollow",
    })
    assert ("td", {"class": "align-left"}) in elements
    assert_inert(html)


# ---------------------------------------------------------------- the browser's copy of the allow-list
# static/js/chat.js renders a streaming answer with DOMPurify configured from `sanitizer_settings()`: these tests
# hold that data to what the nh3 Cleaner really keeps, and check the chat pages emit it.

# Table parts only parse inside a table.
TAG_CONTEXT = {tag: "<table>{}</table>" for tag in ("thead", "tbody", "tfoot", "caption", "colgroup", "tr")}
TAG_CONTEXT.update({tag: "<table><tr>{}</tr></table>" for tag in ("td", "th")})
TAG_CONTEXT["col"] = "<table><colgroup>{}</colgroup></table>"
OTHER_ATTRIBUTES = {"id", "style", "onclick", "onerror", "src", "srcset", "action", "formaction", "data-x", "name",
                    "target", "lang", "dir", "hidden", "aria-label", "role", "tabindex"}
VOID_TAGS = {"embed", "img", "br", "hr", "input", "source", "track", "wbr", "area", "col"}  # no content to drop
URL_SCHEMES = {"http", "https", "mailto", "javascript", "vbscript", "data", "file", "ftp", "tel", "blob"}


def in_context(tag: str, attributes: str = "") -> str:
    return TAG_CONTEXT.get(tag, "{}").format(f"<{tag}{attributes}>x</{tag}>")


def kept(html: str, tag: str) -> list[dict[str, str]]:
    """The attributes of each `tag` element left after sanitizing `html`."""
    return [attrs for name, attrs in Elements(html_sanitize(html)).elements if name == tag]


def test_the_browsers_tags_are_the_ones_the_cleaner_keeps():
    rules = sanitizer_settings()
    candidates = set(nh3.ALLOWED_TAGS) | set(rules["tags"]) | DANGEROUS_TAGS | {"u", "b", "i", "details", "label"}
    assert {tag for tag in candidates if kept(in_context(tag), tag)} == set(rules["tags"])


def test_the_browsers_attributes_are_the_ones_the_cleaner_keeps():
    rules = sanitizer_settings()
    set_on = {tag: set(values) | ({"rel"} if tag == "a" else set()) for tag, values in rules["set_attributes"].items()}
    candidates = set().union(*nh3.ALLOWED_ATTRIBUTES.values(), *rules["attributes"].values(), OTHER_ATTRIBUTES)
    for tag in rules["tags"]:
        valued = rules["attribute_values"].get(tag, {})
        for name in candidates - set(valued) - set_on.get(tag, set()):
            value = "https://example.com/" if name == "href" else "v1"
            assert bool(kept(in_context(tag, f' {name}="{value}"'), tag)[0].get(name)) == (
                name in rules["attributes"].get(tag, [])), (tag, name)
        for name, values in valued.items():
            for value in values:
                assert kept(in_context(tag, f' {name}="{value}"'), tag)[0].get(name) == value, (tag, name, value)
            assert name not in kept(in_context(tag, f' {name}="other"'), tag)[0], (tag, name)


def test_the_browsers_forced_link_attributes_are_the_cleaners():
    rules = sanitizer_settings()
    for html in ('<a href="https://example.com/" target="_self" rel="opener">x</a>', "<a>x</a>"):
        (attrs,) = kept(html, "a")
        assert attrs["rel"] == rules["link_rel"]
        assert {name: attrs[name] for name in rules["set_attributes"]["a"]} == rules["set_attributes"]["a"]


def test_the_browsers_classes_are_the_ones_the_cleaner_keeps():
    rules = sanitizer_settings()
    for tag in rules["tags"]:
        allowed = rules["classes"].get(tag, [])
        for name in allowed:
            assert kept(in_context(tag, f' class="{name} unlisted"'), tag)[0]["class"] == name, (tag, name)
        if not allowed:
            assert not kept(in_context(tag, ' class="x"'), tag)[0].get("class"), tag


def test_the_browsers_url_schemes_are_the_ones_the_cleaner_keeps():
    rules = sanitizer_settings()
    allowed = {scheme for scheme in URL_SCHEMES if "href" in kept(f'<a href="{scheme}:x">x</a>', "a")[0]}
    assert allowed == set(rules["url_schemes"])
    for relative in ("/accounts/logout/", "#top", "page.html", "//example.com/x"):
        assert "href" not in kept(f'<a href="{relative}">x</a>', "a")[0], relative


def test_the_browsers_content_dropping_tags_are_the_cleaners():
    for tag in sanitizer_settings()["clean_content_tags"]:
        html = html_sanitize(f"<p>a<{tag}>secret</{tag}>b</p>")
        assert f"<{tag}" not in html and ("secret" not in html or tag in VOID_TAGS), tag
    assert "kept" in html_sanitize("<p><u>kept</u></p>")  # other refused tags lose only their markup


def page_config(html: str) -> dict:
    match = re.search(r'<script id="markdown-config" type="application/json">(.*?)</script>', html, re.S)
    assert match, "no markdown config on the page"
    return json.loads(match.group(1))


def assert_renderer_loaded(html: str) -> None:
    """markdown-it and DOMPurify load (deferred, so in order) before chat-markdown.js, which reads the config."""
    scripts = re.findall(r'<script src="/static/([^"]+)" defer>', html)
    renderer = scripts.index("js/chat-markdown.js")
    assert {"vendor/markdown-it/markdown-it.min.js", "vendor/dompurify/purify.min.js"} <= set(scripts[:renderer])
    assert renderer < scripts.index("js/chat.js")
    assert html.index('id="markdown-config"') < html.index("js/chat-markdown.js")


@pytest.mark.django_db
def test_chat_pages_emit_the_servers_renderer_config(client_for, org_a):
    html = client_for("a").get(f"/o/{org_a.slug}/chat/").content.decode()
    assert page_config(html) == json.loads(json.dumps(client_config()))
    assert page_config(html)["sanitize"] == json.loads(json.dumps(sanitizer_settings()))
    assert_renderer_loaded(html)


@pytest.mark.django_db
def test_the_trial_page_emits_it_too_in_the_visitors_language():
    html = Client().get("/try/", HTTP_ACCEPT_LANGUAGE="pt-BR").content.decode()
    config = page_config(html)
    assert config["sanitize"] == json.loads(json.dumps(sanitizer_settings()))
    assert config["copy_label"] == "Copiar"
    assert_renderer_loaded(html)
