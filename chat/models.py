"""Threads, messages and attachments: each organization's conversations, in its own schema.

A thread belongs to the member who started it; other members never see it.
"""

from __future__ import annotations

from django.conf import settings
from django.db import connection, models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

# Users live in `public`, threads in each organization's schema: Django's delete collector would
# look for a user's threads in `public` (no such table), so deleting a user never cascades here;
# chat.signals removes their threads and files from every organization instead.
USER_FK = {"on_delete": models.DO_NOTHING, "db_constraint": False, "related_name": "+"}


class Thread(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, **USER_FK)
    title = models.CharField(_("title"), max_length=200, blank=True)
    # False once a person names the thread: the automatic title never overwrites theirs.
    title_is_auto = models.BooleanField(default=True)
    model_id = models.CharField(_("model"), max_length=120)
    system_prompt = models.TextField(_("system prompt"), blank=True)
    pinned = models.BooleanField(_("pinned"), default=False)
    created_at = models.DateTimeField(default=timezone.now)
    # Last activity: the sidebar's order.
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["user", "-pinned", "-updated_at", "-id"], name="thread_sidebar_idx")]

    def __str__(self) -> str:
        return self.title or f"#{self.pk}"


def answer_stream_key(schema: str, answer_id: int) -> str:
    """The Redis stream of answer `answer_id` in `schema` (and its member of the reaper's sets)."""
    return f"chat:gen:{schema}:{answer_id}"


def answer_billing_key(schema: str, answer_id: int) -> str:
    """The key of answer `answer_id`'s credit hold and usage event."""
    return f"chat:{schema}:{answer_id}"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user", _("You")
        ASSISTANT = "assistant", _("Assistant")

    class Status(models.TextChoices):
        """[waiting →] pending → streaming → complete | stopped | interrupted | failed (assistant messages).

        `waiting`: the question's files are still being read (chat.tasks.attachment_extract); the last one
        read moves the answer to `pending` and queues it, a file that cannot be read fails it.
        """

        WAITING = "waiting", _("Reading files")
        PENDING = "pending", _("Waiting")
        STREAMING = "streaming", _("Writing")
        COMPLETE = "complete", _("Complete")
        STOPPED = "stopped", _("Stopped")
        INTERRUPTED = "interrupted", _("Interrupted")
        FAILED = "failed", _("Failed")

    ACTIVE = (Status.WAITING, Status.PENDING, Status.STREAMING)
    UNCLAIMED = (Status.WAITING, Status.PENDING)  # no worker has started it

    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.COMPLETE)
    model_id = models.CharField(max_length=120, blank=True)  # asked for
    served_model_id = models.CharField(max_length=120, blank=True)  # answered (after any fallback)
    max_tokens = models.PositiveIntegerField(default=0)
    prompt_tokens_estimate = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    # Usage came from our estimate (the provider never said: a stop, a crash, a cut stream).
    usage_estimated = models.BooleanField(default=False)
    credits = models.DecimalField(max_digits=18, decimal_places=6, default=0)
    finish_reason = models.CharField(max_length=20, blank=True)
    error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["thread", "id"], name="message_thread_idx")]

    def __str__(self) -> str:
        return f"{self.role} #{self.pk}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def stream_key(self) -> str:
        """The Redis stream its deltas go to; unique across organizations."""
        return answer_stream_key(connection.schema_name, self.pk)

    @property
    def billing_key(self) -> str:
        return answer_billing_key(connection.schema_name, self.pk)


def attachment_path(instance: Attachment, filename: str) -> str:
    # The schema in the path keeps each organization's files apart (locally and in S3).
    return f"{connection.schema_name}/chat/{timezone.now():%Y/%m}/{instance.token}/{filename}"


class Attachment(models.Model):
    class Status(models.TextChoices):
        """pending → ready | failed: a PDF is read by chat.tasks.attachment_extract, other files at once."""

        PENDING = "pending", _("Reading")
        READY = "ready", _("Ready")
        FAILED = "failed", _("Could not be read")

    thread = models.ForeignKey(Thread, null=True, blank=True, on_delete=models.CASCADE, related_name="attachments")
    message = models.ForeignKey(Message, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="attachments")
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, **USER_FK)
    token = models.CharField(max_length=32, unique=True)
    file = models.FileField(upload_to=attachment_path, max_length=300)
    filename = models.CharField(max_length=200)
    kind = models.CharField(max_length=10)  # chat.files kinds: text, markdown, csv, pdf, png, jpeg, webp
    content_type = models.CharField(max_length=60)
    size = models.PositiveBigIntegerField()
    text = models.TextField(blank=True)  # extracted text (text, CSV, markdown, PDF)
    text_tokens = models.PositiveIntegerField(default=0)
    # The text did not fit the context budget and was cut for the model.
    truncated = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.READY)
    error = models.CharField(max_length=300, blank=True)  # why it could not be read, for the person
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.filename

    @property
    def is_image(self) -> bool:
        return self.kind in {"png", "jpeg", "webp"}
