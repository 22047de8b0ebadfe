"""Automatic thread titles: a few words from the cheapest model the organization may use."""

from __future__ import annotations

import re

from billing.charges import Metered, charge_now
from billing.ledger import InsufficientCredits
from billing.models import UsageEvent
from billing.usage import UnknownPrice, usage_cost

from .catalog.selectors import model_cheapest
from .loop import answers_run
from .models import Message, Thread
from .providers import ChatMessage, ChatRequest, ProviderError, TextDelta, Usage
from .routing import route_stream
from .services import TITLE_MAX, current_organization_ref, options_for
from .snapshot import org_config_now

TITLE_WORDS = 8
TITLE_PROMPT = ("Write a short title (at most six words) for a conversation that starts with the message below. "
                "Answer with the title only, no quotes, in the message's language.")


def title_from_text(text: str) -> str:
    """A fallback title: the question's first words."""
    words = re.sub(r"\s+", " ", text).strip().split(" ")
    title = " ".join(words[:TITLE_WORDS])
    return title + ("…" if len(words) > TITLE_WORDS else "")


async def _ask(option, request, own_keys) -> tuple[str, Usage | None]:
    parts, usage = [], None
    async for event in route_stream([option], request, own_keys=own_keys):
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, Usage):
            usage = event
    return "".join(parts), usage


def _clean(title: str) -> str:
    title = title.strip().splitlines()[0] if title.strip() else ""
    return title.strip(" \"'“”#*").strip()[:TITLE_MAX]


def thread_title_write(thread_id: int) -> str:
    thread = Thread.objects.filter(pk=thread_id).first()
    if thread is None or not thread.title_is_auto or thread.title:
        return ""
    question = thread.messages.filter(role=Message.Role.USER).order_by("id").first()
    if question is None:
        return ""
    organization = current_organization_ref()
    title = ""
    option = model_cheapest(options_for(organization))
    if option is not None and option.model.provider != "demo":
        request = ChatRequest(model=option.model.provider_model, max_tokens=24, messages=[
            ChatMessage(role="system", content=TITLE_PROMPT), ChatMessage(role="user", content=question.content[:4000]),
        ])
        try:
            text, usage = answers_run(_ask(option, request, org_config_now(organization.pk).own_keys))
        except ProviderError:
            text, usage = "", None
        title = _clean(text)
        if usage is not None and not _bill(organization, thread, option.id, usage):
            title = ""
    title = title or title_from_text(question.content) or thread.created_at.strftime("%Y-%m-%d %H:%M")
    # Only if nobody named it meanwhile.
    Thread.objects.filter(pk=thread.pk, title_is_auto=True, title="").update(title=title)
    return title


def _bill(organization, thread: Thread, model_id: str, usage: Usage) -> bool:
    """Charge the title's tokens; False when the organization cannot pay for them."""
    try:
        cost = usage_cost(kind=UsageEvent.Kind.MODEL, key=model_id, input_tokens=usage.input_tokens,
                          output_tokens=usage.output_tokens)
    except UnknownPrice:
        return True
    key = f"chat-title:{organization.schema_name}:{thread.pk}"
    try:
        charge_now(organization=organization, description="thread title", usage=Metered.at(
            cost.price, kind=UsageEvent.Kind.MODEL, key=model_id, request_id=key, credits=cost.credits,
            user=thread.user, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens))
    except InsufficientCredits:
        return False
    return True
