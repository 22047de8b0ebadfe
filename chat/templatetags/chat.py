from __future__ import annotations

from decimal import Decimal

from django import template

from chat.markdown import markdown_render

register = template.Library()


@register.filter
def markdown(text: str):
    """An answer's markdown as sanitized HTML (chat.markdown)."""
    return markdown_render(text or "")


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
