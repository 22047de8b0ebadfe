"""What the model is sent: the system prompt, then as much recent history as fits its context window."""

from __future__ import annotations

from psycopg import sql

from .catalog.models import Model
from .files import tokens_estimate
from .models import Attachment, Message, Thread
from .providers import ChatMessage, ImagePart

# Per-message framing the providers add (role markers); a rough, safe-side allowance.
MESSAGE_OVERHEAD_TOKENS = 4
IMAGE_TOKENS = 1_000
# Answers left out of the history: not written yet, or that failed (an empty assistant message is left out too).
HISTORY_EXCLUDED = (Message.Status.PENDING, Message.Status.STREAMING, Message.Status.FAILED)


def _user_content(message, attachments) -> str:
    parts = [message.content]
    for attachment in attachments:
        if not attachment.is_image and attachment.text:
            note = " (truncated)" if attachment.truncated else ""
            parts.append(f"\n\n[Attached file: {attachment.filename}{note}]\n{attachment.text}")
    return "".join(parts)


def _images(attachments, model: Model, *, load: bool) -> tuple[ImagePart, ...]:
    """The message's images for a vision model (empty placeholders when only counting)."""
    if not model.vision:
        return ()
    images = []
    for attachment in attachments:
        if attachment.is_image:
            data = b""
            if load:
                with attachment.file.open("rb") as handle:
                    data = handle.read()
            images.append(ImagePart(media_type=attachment.content_type, data=data))
    return tuple(images)


def context_build(*, thread: Thread, answer: Message, model: Model,
                  load_images: bool = True) -> tuple[list[ChatMessage], int]:
    """The messages for `answer` (oldest history dropped first when over budget) and their token estimate. An
    answer not saved yet is the thread's newest message.

    `load_images=False` only counts: images are not read from storage.
    """
    earlier = thread.messages.filter(id__lt=answer.pk) if answer.pk else thread.messages.all()  # not saved yet: all
    history = [
        (message, message.attachments.all()) for message in earlier
        .exclude(role=Message.Role.ASSISTANT, content="")
        .exclude(status__in=HISTORY_EXCLUDED)
        .prefetch_related("attachments")
    ]
    return context_fit(system_prompt=thread.system_prompt, history=history, model=model,
                       max_tokens=answer.max_tokens, load_images=load_images)


def context_fit(*, system_prompt: str, history: list[tuple], model: Model, max_tokens: int,
                load_images: bool = True) -> tuple[list[ChatMessage], int]:
    """`context_build` over history already read: (message, its attachments) pairs, oldest first, where a message
    has `role` and `content` and an attachment `is_image`, `text`, `truncated`, `filename`, `content_type` (and
    `file` when images are loaded). chat.send_direct reads them with its own SQL."""
    budget = model.context_window - max_tokens
    system = [ChatMessage(role="system", content=system_prompt)] if system_prompt else []
    used = sum(tokens_estimate(m.content) + MESSAGE_OVERHEAD_TOKENS for m in system)
    kept: list[ChatMessage] = []
    for message, attachments in reversed(history):
        if message.role == Message.Role.USER:
            chat_message = ChatMessage(role="user", content=_user_content(message, attachments),
                                       images=_images(attachments, model, load=load_images))
        else:
            chat_message = ChatMessage(role="assistant", content=message.content)
        cost = tokens_estimate(chat_message.content) + MESSAGE_OVERHEAD_TOKENS + IMAGE_TOKENS * len(chat_message.images)
        if kept and used + cost > budget:
            break  # the latest question always goes, even alone
        kept.append(chat_message)
        used += cost
    return system + list(reversed(kept)), used


# What context_build reads, in one statement for the paths that write their own SQL (chat.send_direct,
# chat.generation): a thread's history before a message id, with its files, oldest first. `{messages}` and
# `{attachments}` are the tables (schema-qualified, or as the search_path finds them).
HISTORY_SQL = sql.SQL("""
SELECT m.role, m.content,
    coalesce(json_agg(json_build_array(a.filename, a.kind, a.content_type, a.text, a.truncated, a.file) ORDER BY a.id)
             FILTER (WHERE a.id IS NOT NULL), '[]')
FROM {messages} m LEFT JOIN {attachments} a ON a.message_id = m.id
WHERE m.thread_id = %(thread)s AND m.id < %(before)s AND m.status <> ALL(%(excluded)s)
    AND NOT (m.role = 'assistant' AND m.content = '')
GROUP BY m.id ORDER BY m.id
""")
ALL = 2**63 - 1  # `before` for every message of the thread


def history_params(*, thread_id: int, before: int = ALL) -> dict:
    return {"thread": thread_id, "before": before, "excluded": list(HISTORY_EXCLUDED)}


def history_from_rows(rows) -> list[tuple[Message, list[Attachment]]]:
    """HISTORY_SQL's rows as context_fit's (message, attachments) pairs."""
    return [(Message(role=role, content=content),
             [Attachment(filename=name, kind=kind, content_type=content_type, text=text or "", truncated=truncated,
                         file=path) for name, kind, content_type, text, truncated, path in files])
            for role, content, files in rows]
