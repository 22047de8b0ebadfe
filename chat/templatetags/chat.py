from __future__ import annotations

from decimal import Decimal

from django import template
from django.urls import reverse
from django.utils.html import json_script
from django.utils.safestring import SafeString

from chat.markdown import client_config, markdown_render
from chat.streams import stream_token

register = template.Library()


@register.filter
def markdown(text: str):
    """An answer's markdown as sanitized HTML (chat.markdown)."""
    return markdown_render(text or "")


@register.simple_tag
def markdown_config() -> SafeString:
    """The data static/js/chat.js renders streaming answers with, as a JSON script element (chat.markdown)."""
    return json_script(client_config(), "markdown-config")


@register.filter
def credits(value) -> str:
    """Credits without trailing zeros: 0.0123, 12, 1.5."""
    value = Decimal(value or 0)
    if value == 0:
        return "0"
    text = f"{value.quantize(Decimal('0.0001')):f}".rstrip("0").rstrip(".")
    return text if text != "0" else "<0.0001"


@register.filter
def model_short(model_id: str) -> str:
    return (model_id or "").split("/", 1)[-1]


@register.simple_tag(takes_context=True)
def stream_url(context, message) -> str:
    """Where the page reads `message`'s stream: with a stream token for the person's session when there is one
    (served without Django's request cycle, chat.stream_direct)."""
    request = context["request"]
    url = reverse("chat_stream", args=[request.tenant.slug, message.pk])
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if not session_key or not request.user.is_authenticated:
        return url
    token = stream_token(user_id=request.user.pk, session_key=session_key, slug=request.tenant.slug,
                         schema=request.tenant.schema_name, message_id=message.pk)
    return f"{url}?s={token}"
