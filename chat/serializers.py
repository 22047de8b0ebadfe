"""Shapes of threads, messages and attachments in the API (chat.api)."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from .models import Attachment, Message, Thread
from .services import TITLE_MAX

CONTENT_MAX = 100_000
ATTACHMENTS_MAX = 20


class ThreadSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model_id", read_only=True)

    class Meta:
        model = Thread
        fields = ["id", "title", "model", "system_prompt", "pinned", "created_at", "updated_at"]
        read_only_fields = fields


class ThreadCreateSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=120,
                                  help_text="A model id from GET /v1/models, e.g. 'openai/gpt-4.1-mini'.")
    system_prompt = serializers.CharField(max_length=CONTENT_MAX, required=False, allow_blank=True, default="")
    title = serializers.CharField(max_length=TITLE_MAX, required=False, allow_blank=True, default="")


class ThreadUpdateSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=TITLE_MAX, required=False)
    pinned = serializers.BooleanField(required=False)


class ThreadFilterSerializer(serializers.Serializer):
    search = serializers.CharField(max_length=200, required=False, allow_blank=True, default="",
                                   help_text=_("Only threads whose title or messages contain this text."))
    pinned = serializers.BooleanField(required=False, allow_null=True, default=None,
                                      help_text=_("Only pinned (true) or unpinned (false) threads."))


class AttachmentSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="token", read_only=True,
                               help_text=_("Send it in a message's `attachments` to attach the file."))
    thread = serializers.IntegerField(source="thread_id", read_only=True, allow_null=True)
    message = serializers.IntegerField(source="message_id", read_only=True, allow_null=True,
                                       help_text=_("The question it was sent with; null until then."))

    status = serializers.CharField(read_only=True, help_text=_(
        "pending (a PDF's text is being read), ready, or failed (`error` says why; it cannot be sent)."))

    class Meta:
        model = Attachment
        fields = ["id", "filename", "kind", "content_type", "size", "status", "error", "text_tokens", "truncated",
                  "thread", "message", "created_at"]
        read_only_fields = fields


class AttachmentUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text=_("Text, Markdown, CSV, PDF, PNG, JPEG or WebP, up to your plan's size "
                                             "limit. The type is read from the content, not the name."))


class MessageSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model_id", read_only=True)
    served_model = serializers.CharField(source="served_model_id", read_only=True)
    thread = serializers.IntegerField(source="thread_id", read_only=True)
    credits = serializers.DecimalField(max_digits=18, decimal_places=6, read_only=True, coerce_to_string=True)
    attachments = AttachmentSerializer(many=True, read_only=True)

    class Meta:
        model = Message
        fields = ["id", "thread", "role", "status", "content", "model", "served_model", "input_tokens",
                  "output_tokens", "usage_estimated", "credits", "finish_reason", "error", "created_at",
                  "completed_at", "attachments"]
        read_only_fields = fields


class MessageCreateSerializer(serializers.Serializer):
    content = serializers.CharField(max_length=CONTENT_MAX, required=False, allow_blank=True, default="",
                                    help_text=_("The question (may be empty when files are attached)."))
    model = serializers.CharField(max_length=120, required=False,
                                  help_text=_("Answer with this model (default: the thread's)."))
    attachments = serializers.ListField(
        child=serializers.CharField(max_length=32), required=False, default=list, max_length=ATTACHMENTS_MAX,
        help_text=_("Ids of files uploaded to POST /api/v1/threads/{thread_id}/attachments/ and not sent yet."))


class RegenerateSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=120, required=False,
                                  help_text=_("Answer with this model (default: the thread's)."))


class EditLastSerializer(serializers.Serializer):
    content = serializers.CharField(max_length=CONTENT_MAX, help_text=_("The new text of the last question."))
