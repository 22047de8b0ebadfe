"""Threads, messages and attachments over the API (/api/v1/threads/...).

Threads are private to a member (chat.models). A session sees its user's threads; a member
API key acts as the admin or owner who created it, while they still may hold keys (see
tenants.api_base), so it sees and writes that member's threads. A service key (`manage.py
create_api_key`) is no person: it has no threads of its own and never sees anyone's, so every
endpoint here answers it 403 (it serves /v1 and the checks API). Reading needs the `read` or `chat` scope (or any
role), writing the `chat` scope (or the member role). Asking a question (or regenerating the
last answer, or editing the last question) returns the pending answer at once (202); a Celery
task writes it, GET on the message shows its progress, and POST .../stop/ stops it. An uploaded
PDF is read by a task (its `status` is `pending`, then `ready` or `failed`); an answer to a
question with a PDF still being read is `waiting` until then, or `failed` with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from billing.ledger import InsufficientCredits
from tenants.api_base import OrgAPIView
from tenants.audit.services import Actor

from . import selectors, services
from .files import FileRefused
from .models import Message, Thread
from .serializers import (
    AttachmentSerializer,
    AttachmentUploadSerializer,
    EditLastSerializer,
    MessageCreateSerializer,
    MessageSerializer,
    RegenerateSerializer,
    ThreadCreateSerializer,
    ThreadFilterSerializer,
    ThreadSerializer,
    ThreadUpdateSerializer,
)

TAG = "Chat"

ANSWER_RESPONSES = {
    202: OpenApiResponse(MessageSerializer, description="The pending answer; poll it by id."),
    402: OpenApiResponse(description="Not enough credits for the answer's worst-case cost."),
}


class ChatAPIView(OrgAPIView):
    """Threads and messages: read with the `read` or `chat` scope (any role), write with `chat` (members)."""

    key_read_scopes = frozenset({"read", "chat"})
    key_write_scopes = frozenset({"chat"})
    service_keys = False  # threads belong to a person; a service key is none

    def thread_or_404(self, thread_id: int) -> Thread:
        thread = selectors.thread_get(user=self.request.user, thread_id=thread_id)
        if thread is None:
            raise NotFound()
        return thread

    def message_or_404(self, thread_id: int, message_id: int) -> Message:
        message = selectors.message_get(user=self.request.user, message_id=message_id)
        if message is None or message.thread_id != thread_id:
            raise NotFound()
        return message

    def answer_response(self, ask: Callable[[], Message]) -> Response:
        """Run a service that queues an answer: 202 with it, 400 with the service's reason, 402 without credits."""
        try:
            answer = ask()
        except services.ChatError as error:
            raise ValidationError({"detail": str(error)}) from None
        except InsufficientCredits as error:
            return Response({"detail": f"Not enough credits: this needs {error.required.normalize()} and the "
                                       f"balance is {error.balance.normalize()}.", "code": "insufficient_credits"},
                            status=status.HTTP_402_PAYMENT_REQUIRED)
        return Response(MessageSerializer(answer).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(tags=[TAG])
class ThreadListView(ChatAPIView):
    """The caller's threads (a member key's: its creator's; see tenants.api_base)."""

    serializer_class = ThreadSerializer

    @extend_schema(operation_id="threads_list", parameters=[ThreadFilterSerializer],
                   responses=ThreadSerializer(many=True), summary="The caller's threads, newest first")
    def get(self, request: Request) -> Response:
        params = self.query_params(ThreadFilterSerializer)
        # The sidebar selector loads only what the sidebar shows: the API shows every field.
        threads = selectors.thread_list(user=request.user, search=params["search"]).defer(None)
        if params["pinned"] is not None:
            threads = threads.filter(pinned=params["pinned"])
        return self.page(threads, ThreadSerializer)

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
        services.thread_delete(thread=self.thread_or_404(thread_id), actor=Actor.from_request(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=[TAG])
class MessageListView(ChatAPIView):
    """A thread's messages; POST asks a question."""

    serializer_class = MessageSerializer

    @extend_schema(operation_id="messages_list", responses=MessageSerializer(many=True),
                   summary="A thread's messages, newest first")
    def get(self, request: Request, thread_id: int) -> Response:
        return self.page(selectors.message_list(thread=self.thread_or_404(thread_id)), MessageSerializer)

    @extend_schema(operation_id="messages_create", request=MessageCreateSerializer, responses=ANSWER_RESPONSES,
                   summary="Ask a question, with files if any; the answer is written asynchronously")
    def post(self, request: Request, thread_id: int) -> Response:
        thread = self.thread_or_404(thread_id)
        data = self.body(MessageCreateSerializer)
        ids = data["attachments"]
        if ids:
            pending = selectors.attachment_pending_list(user=request.user, tokens=ids).values_list("token", flat=True)
            unknown = sorted(set(ids) - set(pending))
            if unknown:
                raise ValidationError({"attachments": [
                    _("No file waiting to be sent has this id: %(ids)s.") % {"ids": ", ".join(unknown)}]})
        return self.answer_response(lambda: services.message_send(
            organization=request.tenant, user=request.user, thread=thread, content=data["content"],
            model_id=data.get("model"), attachment_tokens=ids))


@extend_schema(tags=[TAG])
class MessageDetailView(ChatAPIView):
    """One message of one of the caller's threads."""

    serializer_class = MessageSerializer

    @extend_schema(operation_id="messages_retrieve", responses=MessageSerializer,
                   summary="One message (poll an answer until its status is no longer waiting/pending/streaming)")
    def get(self, request: Request, thread_id: int, message_id: int) -> Response:
        return Response(MessageSerializer(self.message_or_404(thread_id, message_id)).data)


@extend_schema(tags=[TAG])
class MessageStopView(ChatAPIView):
    """Stop an answer that is being written."""

    serializer_class = MessageSerializer

    @extend_schema(
        operation_id="messages_stop", request=None,
        responses={202: OpenApiResponse(MessageSerializer, description="Asked to stop: the answer ends within a "
                                                                      "second and keeps what it wrote."),
                   200: OpenApiResponse(MessageSerializer, description="Not running (already finished): unchanged.")},
        summary="Stop a running answer",
    )
    def post(self, request: Request, thread_id: int, message_id: int) -> Response:
        message = self.message_or_404(thread_id, message_id)
        if not message.is_active:
            return Response(MessageSerializer(message).data)
        services.generation_stop(message=message)
        return Response(MessageSerializer(message).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(tags=[TAG])
class ThreadRegenerateView(ChatAPIView):
    """A new answer to the thread's last question (replaces the previous answer)."""

    serializer_class = MessageSerializer

    @extend_schema(operation_id="threads_regenerate", request=RegenerateSerializer, responses=ANSWER_RESPONSES,
                   summary="Answer the last question again (the previous answer is replaced)")
    def post(self, request: Request, thread_id: int) -> Response:
        thread = self.thread_or_404(thread_id)
        data = self.body(RegenerateSerializer)
        return self.answer_response(lambda: services.message_regenerate(
            organization=request.tenant, user=request.user, thread=thread, model_id=data.get("model")))


@extend_schema(tags=[TAG])
class ThreadEditLastView(ChatAPIView):
    """Change the thread's last question and answer it again."""

    serializer_class = MessageSerializer

    @extend_schema(operation_id="threads_edit_last", request=EditLastSerializer, responses=ANSWER_RESPONSES,
                   summary="Change the last question and answer it again (the previous answer is replaced)")
    def post(self, request: Request, thread_id: int) -> Response:
        thread = self.thread_or_404(thread_id)
        data = self.body(EditLastSerializer)
        return self.answer_response(lambda: services.message_edit_last(
            organization=request.tenant, user=request.user, thread=thread, content=data["content"]))


@extend_schema(tags=[TAG])
class AttachmentListView(ChatAPIView):
    """Files uploaded to a thread; POST uploads one, to send with a question (`attachments` of messages_create)."""

    serializer_class = AttachmentSerializer
    parser_classes = [MultiPartParser]

    @extend_schema(operation_id="attachments_list", responses=AttachmentSerializer(many=True),
                   summary="A thread's files, newest first")
    def get(self, request: Request, thread_id: int) -> Response:
        return self.page(self.thread_or_404(thread_id).attachments.all(), AttachmentSerializer)

    @extend_schema(operation_id="attachments_create", request={"multipart/form-data": AttachmentUploadSerializer},
                   responses={201: AttachmentSerializer}, summary="Upload a file (multipart, field `file`)")
    def post(self, request: Request, thread_id: int) -> Response:
        thread = self.thread_or_404(thread_id)
        upload = self.body(AttachmentUploadSerializer)["file"]
        try:
            attachment = services.attachment_upload(organization=request.tenant, thread=thread, user=request.user,
                                                    upload=upload)
        except FileRefused as error:
            raise ValidationError({"file": [str(error.reason)]}) from None
        return Response(AttachmentSerializer(attachment).data, status=status.HTTP_201_CREATED)

