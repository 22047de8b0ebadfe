"""The built-in demo model: canned markdown, streamed like a real model's answer, no network.

It lets a fresh checkout (or a test) chat end to end without any provider key. The text is a
pure function of the last user message, so the same question always gets the same answer;
each word (with its trailing whitespace) is one delta and counts as one output token. It
ignores tools (`extra`): it never calls one, and answers a history with tool turns like any other.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator

from django.conf import settings

from .base import ChatMessage, ChatRequest, Event, Finish, ProviderAdapter, TextDelta, Usage

QUOTED_WORDS = 12
TIPS = (
    "add a provider key to the settings to talk to a real model",
    "the same question always gets the same demo answer",
    "a long answer stops early when it reaches the token limit",
)
WORD = re.compile(r"\S+\s*")


def estimate_tokens(messages: list[ChatMessage]) -> int:
    """A rough count (four characters a token, one more per message); nobody bills the demo."""
    return sum(len(message.content) // 4 + 1 for message in messages)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def demo_answer(messages: list[ChatMessage]) -> str:
    last = next((message for message in reversed(messages) if message.role == "user"), None)
    question = " ".join((last.content if last else "").split())
    words = question.replace("`", "'").split()
    quoted = " ".join(words[:QUOTED_WORDS]) + (" …" if len(words) > QUOTED_WORDS else "")
    digest = hashlib.sha256(question.encode()).digest()
    images = len(last.images) if last else 0
    image_note = f", plus {_count(images, 'image')} it cannot see" if images else ""
    return (
        "This is the **built-in demo model**, not a real AI: it writes canned text so that the chat "
        "can be tried without any provider. You asked:\n\n"
        f"> {quoted or '(an empty message)'}\n\n"
        "A real model would answer that. Meanwhile, here is what a streamed answer looks like:\n\n"
        f"- your message has {_count(len(words), 'word')} and {_count(len(question), 'character')}{image_note}\n"
        "- this text arrives word by word, like a real model's\n"
        f"- tip: {TIPS[digest[0] % len(TIPS)]}\n\n"
        "```python\n"
        f'answer = demo_model("{digest.hex()[:8]}")\n'
        "print(answer)\n"
        "```\n"
    )


class DemoAdapter(ProviderAdapter):
    name = "demo"

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        delay = float(getattr(settings, "CHAT_DEMO_DELAY", 0.03))
        words = WORD.findall(demo_answer(request.messages))
        sent = 0
        for word in words[:max(request.max_tokens, 0)]:
            if sent and delay > 0:
                await asyncio.sleep(delay)
            yield TextDelta(word)
            sent += 1
        yield Usage(input_tokens=estimate_tokens(request.messages), output_tokens=sent)
        yield Finish("stop" if sent == len(words) else "length")
