"""Markdown to safe HTML for chat answers, rendered on the server.

Answers come from a model that can be steered by whatever the user pasted, so they are untrusted:
markdown-it renders them with raw HTML disabled, and nh3 then sanitizes the whole output against an
explicit allow-list, so a bug in either layer alone cannot produce an executable element. No inline
styles are emitted (the CSP forbids them): Pygments and table alignment use classes only.
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

__all__ = ["html_sanitize", "markdown_render"]

PLAIN_LANGUAGE = "text"
# What an info string's first word may be to be shown and used as a language name; anything else
# (quotes, angle brackets, very long words) falls back to plain text.
LANGUAGE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+#.-]{0,39}")
ALIGN_CLASSES = {"left": "align-left", "center": "align-center", "right": "align-right"}
LINK_SCHEMES = ("http://", "https://", "mailto:")

_FORMATTER = HtmlFormatter(cssclass="highlight", nowrap=False)
_TOKEN_CLASSES = {name for name in STANDARD_TYPES.values() if name}

_CLEANER = nh3.Cleaner(
    tags={
        "p", "br", "strong", "em", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li",
        "h1", "h2", "h3", "h4", "h5", "h6", "hr", "table", "thead", "tbody", "tr", "th", "td",
        "a", "span", "div", "button",
    },
    clean_content_tags={"script", "style", "iframe", "object", "embed", "svg", "math", "template", "noscript"},
    attributes={"a": {"href", "title"}, "ol": {"start"}, "div": {"data-lang"}},
    tag_attribute_values={"button": {"type": {"button"}, "data-copy-code": {""}}},
    set_tag_attribute_values={"a": {"target": "_blank"}},
    allowed_classes={
        "span": _TOKEN_CLASSES,
        "div": {"highlight", "codeblock", "codeblock-bar"},
        "button": {"copy-code"},
        "th": set(ALIGN_CLASSES.values()),
        "td": set(ALIGN_CLASSES.values()),
    },
    link_rel="noopener noreferrer nofollow",
    url_schemes={"http", "https", "mailto"},
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
