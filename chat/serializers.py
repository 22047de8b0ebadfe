"""Shapes of threads and messages in the API (chat.api)."""

from __future__ import annotations

from rest_framework import serializers

from .models import Message, Thread
from .services import TITLE_MAX

CONTENT_MAX = 100_000


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


class MessageSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model_id", read_only=True)
    served_model = serializers.CharField(source="served_model_id", read_only=True)
    thread = serializers.IntegerField(source="thread_id", read_only=True)
    credits = serializers.DecimalField(max_digits=18, decimal_places=6, read_only=True, coerce_to_string=True)

    class Meta:
        model = Message
        fields = ["id", "thread", "role", "status", "content", "model", "served_model", "input_tokens",
                  "output_tokens", "usage_estimated", "credits", "finish_reason", "error", "created_at",
                  "completed_at"]
        read_only_fields = fields


class MessageCreateSerializer(serializers.Serializer):
    content = serializers.CharField(max_length=CONTENT_MAX, help_text="The question.")
    model = serializers.CharField(max_length=120, required=False,
                                  help_text="Answer with this model (default: the thread's).")
