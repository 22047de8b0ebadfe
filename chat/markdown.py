"""Markdown to safe HTML for chat answers, rendered on the server.

Answers come from a model that can be steered by whatever the user pasted, so they are untrusted:
markdown-it renders them with raw HTML disabled, and nh3 then sanitizes the whole output against an
explicit allow-list, so a bug in either layer alone cannot produce an executable element. No inline
styles are emitted (the CSP forbids them): Pygments and table alignment use classes only.

While an answer streams, the browser renders it the same way (static/js/chat-markdown.js: markdown-it,
the original of markdown-it-py, and DOMPurify), from `client_config()`: this module's allow-list and
rendering choices, emitted into the chat pages, so the two cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import nh3
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext
from markdown_it import MarkdownIt
from markdown_it.token import Token
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.lexers.special import TextLexer
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

__all__ = ["client_config", "html_sanitize", "markdown_render", "sanitizer_settings"]

PLAIN_LANGUAGE = "text"
# What an info string's first word may be to be shown and used as a language name; anything else
# (quotes, angle brackets, very long words) falls back to plain text.
LANGUAGE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+#.-]{0,39}")
ALIGN_CLASSES = {"left": "align-left", "center": "align-center", "right": "align-right"}
LINK_SCHEMES = ("http://", "https://", "mailto:")

_FORMATTER = HtmlFormatter(cssclass="highlight", nowrap=False)
_TOKEN_CLASSES = {name for name in STANDARD_TYPES.values() if name}

# The allow-list, one source for both sanitizers: nh3 here, and DOMPurify in the browser for an answer still
# streaming (static/js/chat-markdown.js reads `client_config()`, emitted into the chat pages).
TAGS = frozenset({
    "p", "br", "strong", "em", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "table", "thead", "tbody", "tr", "th", "td",
    "a", "span", "div", "button",
})
CLEAN_CONTENT_TAGS = frozenset({"script", "style", "iframe", "object", "embed", "svg", "math", "template", "noscript"})
ATTRIBUTES = {"a": frozenset({"href", "title"}), "ol": frozenset({"start"}), "div": frozenset({"data-lang"})}
# Attributes allowed on a tag only with one of these values.
ATTRIBUTE_VALUES = {"button": {"type": frozenset({"button"}), "data-copy-code": frozenset({""})}}
# Attributes every such tag gets, whatever it had.
SET_ATTRIBUTES = {"a": {"target": "_blank"}}
CLASSES = {
    "span": frozenset(_TOKEN_CLASSES),
    "div": frozenset({"highlight", "codeblock", "codeblock-bar"}),
    "button": frozenset({"copy-code"}),
    "th": frozenset(ALIGN_CLASSES.values()),
    "td": frozenset(ALIGN_CLASSES.values()),
}
LINK_REL = "noopener noreferrer nofollow"
URL_SCHEMES = frozenset({"http", "https", "mailto"})

_CLEANER = nh3.Cleaner(
    tags=set(TAGS),
    clean_content_tags=set(CLEAN_CONTENT_TAGS),
    # "*": none on every tag (nh3's default allows `lang` and `title` everywhere, which the list above does not say).
    attributes={"*": set(), **{tag: set(names) for tag, names in ATTRIBUTES.items()}},
    tag_attribute_values={tag: {name: set(values) for name, values in names.items()}
                          for tag, names in ATTRIBUTE_VALUES.items()},
    set_tag_attribute_values=SET_ATTRIBUTES,
    allowed_classes={tag: set(classes) for tag, classes in CLASSES.items()},
    link_rel=LINK_REL,
    url_schemes=set(URL_SCHEMES),
    # A relative link would point into Prumo itself: dropped (the browser's sanitizer accepts only URL_SCHEMES).
    url_relative="deny",
    strip_comments=True,
)


def _language(info: str) -> str:
    """The language named by a fence's info string, or plain text when it names none we can trust."""
    words = info.split(maxsplit=1)
    if words and LANGUAGE_PATTERN.fullmatch(words[0]):
        return words[0].lower()
    return PLAIN_LANGUAGE


def _lexer(language: str) -> Lexer:
    """Pygments lexer for the language; never guessed from the content, which can be slow and wrong."""
    try:
        return get_lexer_by_name(language)
    except ClassNotFound:
        return TextLexer()


def _codeblock(code: str, language: str) -> str:
    """Highlighted code inside the bar the UI turns into a working copy button."""
    label = escape(language)
    return (
        f'<div class="codeblock" data-lang="{label}">'
        f'<div class="codeblock-bar"><span>{label}</span>'
        f'<button type="button" class="copy-code" data-copy-code>{escape(gettext("Copy"))}</button></div>'
        f"{highlight(code, _lexer(language), _FORMATTER)}</div>\n"
    )


def _render_fence(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    return _codeblock(token.content, _language(token.info))


def _render_code_block(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    return _codeblock(tokens[idx].content, PLAIN_LANGUAGE)


def _render_image(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    """A link to the image instead of the image: answers must not make the browser load remote files."""
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    alt = self.renderInlineAsText(token.children or [], options, env) or src
    if not src.lower().startswith(LINK_SCHEMES):
        return escape(alt)
    return f'<a href="{escape(src)}">{escape(alt)}</a>'


def _render_cell_open(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    """Table cells carry their alignment as a class: markdown-it's `style` attribute breaks the CSP."""
    token = tokens[idx]
    style = str(token.attrs.pop("style", "") or "")
    align = style.rpartition(":")[2].strip()
    if align in ALIGN_CLASSES:
        token.attrSet("class", ALIGN_CLASSES[align])
    return self.renderToken(tokens, idx, options, env)


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
    md.add_render_rule("fence", _render_fence)
    md.add_render_rule("code_block", _render_code_block)
    md.add_render_rule("image", _render_image)
    md.add_render_rule("th_open", _render_cell_open)
    md.add_render_rule("td_open", _render_cell_open)
    return md


_MARKDOWN = _parser()


def html_sanitize(html: str) -> str:
    """`html` reduced to the tags, attributes, classes and URL schemes markdown answers may use."""
    return _CLEANER.clean(html)


def markdown_render(text: str) -> SafeString:
    """Safe HTML for a (possibly partial, still streaming) markdown answer."""
    return mark_safe(html_sanitize(_MARKDOWN.render(text)))


def sanitizer_settings() -> dict[str, Any]:
    """The nh3 Cleaner's allow-list as JSON data, for the browser to sanitize a streaming answer by the same rules."""
    return {
        "tags": sorted(TAGS),
        "clean_content_tags": sorted(CLEAN_CONTENT_TAGS),
        "attributes": {tag: sorted(names) for tag, names in sorted(ATTRIBUTES.items())},
        "attribute_values": {tag: {name: sorted(values) for name, values in sorted(names.items())}
                             for tag, names in sorted(ATTRIBUTE_VALUES.items())},
        "set_attributes": SET_ATTRIBUTES,
        "classes": {tag: sorted(classes) for tag, classes in sorted(CLASSES.items())},
        "link_rel": LINK_REL,
        "url_schemes": sorted(URL_SCHEMES),
    }


def client_config() -> dict[str, Any]:
    """What static/js/chat.js needs to render a streaming answer as `markdown_render` will render it when done:
    the sanitizer's allow-list and this module's own rendering choices (code blocks, images, table cells)."""
    return {
        "sanitize": sanitizer_settings(),
        "language_pattern": LANGUAGE_PATTERN.pattern,
        "plain_language": PLAIN_LANGUAGE,
        "link_schemes": list(LINK_SCHEMES),
        "align_classes": ALIGN_CLASSES,
        "copy_label": gettext("Copy"),
    }
