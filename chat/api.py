"""Threads and messages over the API (/api/v1/threads/...).

Threads are private to a member (chat.models). A session sees its user's threads; an API key
acts as the member who created it (or the organization's first owner: see config.api), so a
key sees and writes that member's threads. Reading needs the `read` or `chat` scope (or any
role), writing the `chat` scope (or the member role). Sending a question returns the pending
answer at once (202); a Celery task writes it, and GET on the message shows its progress.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from billing.ledger import InsufficientCredits
from config.api import OrgAPIView

from . import selectors, services
from .models import Thread
from .serializers import (
    MessageCreateSerializer,
    MessageSerializer,
    ThreadCreateSerializer,
    ThreadSerializer,
    ThreadUpdateSerializer,
)

TAG = "Chat"


class ThreadFilterSerializer(serializers.Serializer):
    search = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class ChatAPIView(OrgAPIView):
    """Threads and messages: read with the `read` or `chat` scope (any role), write with `chat` (members)."""

    key_read_scopes = frozenset({"read", "chat"})
    key_write_scopes = frozenset({"chat"})

    def thread_or_404(self, thread_id: int) -> Thread:
        thread = selectors.thread_get(user=self.request.user, thread_id=thread_id)
        if thread is None:
            raise NotFound()
        return thread


@extend_schema(tags=[TAG])
class ThreadListView(ChatAPIView):
    """The caller's threads (a key's: its creator's; see config.api)."""

    serializer_class = ThreadSerializer

    @extend_schema(operation_id="threads_list", parameters=[ThreadFilterSerializer],
                   responses=ThreadSerializer(many=True), summary="The caller's threads, newest first")
    def get(self, request: Request) -> Response:
        search = self.query_params(ThreadFilterSerializer)["search"]
        # The sidebar selector loads only what the sidebar shows: the API shows every field.
        return self.page(selectors.thread_list(user=request.user, search=search).defer(None), ThreadSerializer)

    @extend_schema(operation_id="threads_create", request=ThreadCreateSerializer,
                   responses={201: ThreadSerializer}, summary="Start a thread",
                   examples=[OpenApiExample("With the built-in demo model", request_only=True,
                                            value={"model": "demo/prumo-demo", "title": "First steps"})])
    def post(self, request: Request) -> Response:
        data = self.body(ThreadCreateSerializer)
        try:
            option = services.option_get(request.tenant, data["model"])
        except services.ChatError as error:
            raise ValidationError({"model": [str(error)]}) from None
        thread = services.thread_create(user=request.user, model_id=option.id, system_prompt=data["system_prompt"])
        if data["title"].strip():
            services.thread_rename(thread=thread, title=data["title"])
        return Response(ThreadSerializer(thread).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=[TAG])
class ThreadDetailView(ChatAPIView):
    """One of the caller's threads."""

    serializer_class = ThreadSerializer

    @extend_schema(operation_id="threads_retrieve", responses=ThreadSerializer, summary="One thread")
    def get(self, request: Request, thread_id: int) -> Response:
        return Response(ThreadSerializer(self.thread_or_404(thread_id)).data)

    @extend_schema(operation_id="threads_update", request=ThreadUpdateSerializer, responses=ThreadSerializer,
                   summary="Rename or pin a thread")
    def patch(self, request: Request, thread_id: int) -> Response:
        thread = self.thread_or_404(thread_id)
        data = self.body(ThreadUpdateSerializer)
        if "title" in data:
            services.thread_rename(thread=thread, title=data["title"])
        if "pinned" in data:
            services.thread_pin(thread=thread, pinned=data["pinned"])
        return Response(ThreadSerializer(thread).data)

    @extend_schema(operation_id="threads_destroy", responses={204: None},
                   summary="Delete a thread (stops a running answer)")
    def delete(self, request: Request, thread_id: int) -> Response:
        services.thread_delete(thread=self.thread_or_404(thread_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=[TAG])
class MessageListView(ChatAPIView):
    """A thread's messages; POST asks a question."""

    serializer_class = MessageSerializer

    @extend_schema(operation_id="messages_list", responses=MessageSerializer(many=True),
                   summary="A thread's messages, newest first")
    def get(self, request: Request, thread_id: int) -> Response:
        return self.page(selectors.message_list(thread=self.thread_or_404(thread_id)), MessageSerializer)

    @extend_schema(
        operation_id="messages_create", request=MessageCreateSerializer,
        responses={202: OpenApiResponse(MessageSerializer, description="The pending answer; poll it by id."),
                   402: OpenApiResponse(description="Not enough credits for the answer's worst-case cost.")},
        summary="Ask a question; the answer is written asynchronously",
    )
    def post(self, request: Request, thread_id: int) -> Response:
        thread = self.thread_or_404(thread_id)
        data = self.body(MessageCreateSerializer)
        try:
            answer = services.message_send(organization=request.tenant, user=request.user, thread=thread,
                                           content=data["content"], model_id=data.get("model"))
        except services.ChatError as error:
            raise ValidationError({"detail": str(error)}) from None
        except InsufficientCredits as error:
            return Response({"detail": f"Not enough credits: this needs {error.required.normalize()} and the "
                                       f"balance is {error.balance.normalize()}.", "code": "insufficient_credits"},
                            status=status.HTTP_402_PAYMENT_REQUIRED)
        return Response(MessageSerializer(answer).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(tags=[TAG])
class MessageDetailView(ChatAPIView):
    """One message of one of the caller's threads."""

    serializer_class = MessageSerializer

    @extend_schema(operation_id="messages_retrieve", responses=MessageSerializer,
                   summary="One message (poll an answer until its status is no longer pending/streaming)")
    def get(self, request: Request, thread_id: int, message_id: int) -> Response:
        message = selectors.message_get(user=request.user, message_id=message_id)
        if message is None or message.thread_id != thread_id:
            raise NotFound()
        return Response(MessageSerializer(message).data)


