"""What the model is sent: the system prompt, then as much recent history as fits its context window."""

from __future__ import annotations

from .catalog.models import Model
from .files import tokens_estimate
from .models import Message, Thread
from .providers import ChatMessage, ImagePart

# Per-message framing the providers add (role markers); a rough, safe-side allowance.
MESSAGE_OVERHEAD_TOKENS = 4
IMAGE_TOKENS = 1_000


def _user_content(message: Message) -> str:
    parts = [message.content]
    for attachment in message.attachments.all():
        if not attachment.is_image and attachment.text:
            note = " (truncated)" if attachment.truncated else ""
            parts.append(f"\n\n[Attached file: {attachment.filename}{note}]\n{attachment.text}")
    return "".join(parts)


def _images(message: Message, model: Model, *, load: bool) -> tuple[ImagePart, ...]:
    """The message's images for a vision model (empty placeholders when only counting)."""
    if not model.vision:
        return ()
    images = []
    for attachment in message.attachments.all():
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
    history = list(
        earlier
        .exclude(role=Message.Role.ASSISTANT, content="")
        .exclude(status__in=[Message.Status.PENDING, Message.Status.STREAMING, Message.Status.FAILED])
        .prefetch_related("attachments")
    )
    budget = model.context_window - answer.max_tokens
    system = [ChatMessage(role="system", content=thread.system_prompt)] if thread.system_prompt else []
    used = sum(tokens_estimate(m.content) + MESSAGE_OVERHEAD_TOKENS for m in system)
    kept: list[ChatMessage] = []
    for message in reversed(history):
        if message.role == Message.Role.USER:
            chat_message = ChatMessage(role="user", content=_user_content(message),
                                       images=_images(message, model, load=load_images))
        else:
            chat_message = ChatMessage(role="assistant", content=message.content)
        cost = tokens_estimate(chat_message.content) + MESSAGE_OVERHEAD_TOKENS + IMAGE_TOKENS * len(chat_message.images)
        if kept and used + cost > budget:
            break  # the latest question always goes, even alone
        kept.append(chat_message)
        used += cost
    return system + list(reversed(kept)), used
