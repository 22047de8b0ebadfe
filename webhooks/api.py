"""Webhook endpoints over the API (/api/v1/webhooks/...).

Sessions of admins and owners manage endpoints; API keys with the `read` scope may list them and
their deliveries (never a secret) but cannot change them. Every call but the event catalogue needs
a plan with webhooks: otherwise 403 with `code: plan_without_webhooks`. A secret is in the answer
that creates it (creation, rotation) and nowhere else.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response

from billing.selectors import entitlements_for
from tenants.api_base import OrgAPIView
from tenants.audit.services import Actor
from tenants.models import Role

from .models import WebhookDelivery, WebhookEndpoint
from .selectors import delivery_list, endpoint_list, event_type_list
from .serializers import (
    EventTypeSerializer,
    WebhookDeliverySerializer,
    WebhookEndpointCreatedSerializer,
    WebhookEndpointPatchSerializer,
    WebhookEndpointSerializer,
    WebhookEndpointWriteSerializer,
    WebhookReplayedSerializer,
    WebhookReplayFailedSerializer,
    WebhookSecretSerializer,
    WebhookTestSerializer,
)
from .services import (
    webhook_deliveries_replay_failed,
    webhook_delivery_replay,
    webhook_endpoint_create,
    webhook_endpoint_delete,
    webhook_endpoint_secret_rotate,
    webhook_endpoint_test,
    webhook_endpoint_update,
)

TAG = "Webhooks"
PLAN_REFUSED = OpenApiResponse(description="The plan does not include webhooks (`code: plan_without_webhooks`), "
                                           "not an admin, or an API key trying to change an endpoint.")


class PlanWithoutWebhooks(exceptions.PermissionDenied):
    default_code = "plan_without_webhooks"

    def __init__(self) -> None:
        super().__init__({"detail": _("Your plan does not include webhooks. Upgrade on the billing page to send "
                                      "events to your endpoints."), "code": self.default_code})


class WebhookAPIView(OrgAPIView):
    """Admins and owners (sessions) manage; `read` keys list. Only on plans with webhooks."""

    read_role = write_role = Role.ADMIN

    def check_permissions(self, request: Request) -> None:
        super().check_permissions(request)
        if not entitlements_for(request._request.tenant).webhooks:
            raise PlanWithoutWebhooks()

    def endpoint(self, endpoint_id: int) -> WebhookEndpoint:
        endpoint = endpoint_list().filter(pk=endpoint_id).first()
        if endpoint is None:
            raise exceptions.NotFound()
        return endpoint

    def saved(self, call):
        """The service's answer; its ValidationError as a 400 with the message."""
        try:
            return call()
        except ValidationError as error:
            raise exceptions.ValidationError({"detail": " ".join(error.messages)}) from None


@extend_schema(tags=[TAG])
class WebhookEndpointListView(WebhookAPIView):
    serializer_class = WebhookEndpointSerializer

    @extend_schema(operation_id="webhooks_list", responses={200: WebhookEndpointSerializer(many=True),
                                                            403: PLAN_REFUSED},
                   summary="Webhook endpoints, newest first")
    def get(self, request: Request) -> Response:
        return self.page(endpoint_list(), WebhookEndpointSerializer)

    @extend_schema(operation_id="webhooks_create", request=WebhookEndpointWriteSerializer,
                   responses={201: OpenApiResponse(WebhookEndpointCreatedSerializer, description=(
                       "The endpoint and, in `secret`, its signing secret: shown this once.")), 403: PLAN_REFUSED},
                   summary="Add a webhook endpoint (session of an admin or owner)")
    def post(self, request: Request) -> Response:
        data = self.body(WebhookEndpointWriteSerializer)
        new = self.saved(lambda: webhook_endpoint_create(
            organization=request.tenant, actor=Actor.from_request(request), url=data["url"],
            description=data["description"], event_types=data["event_types"], enabled=data["enabled"],
            include_message_text=data["include_message_text"]))
        response = Response(WebhookEndpointCreatedSerializer(new.endpoint, context={"secret": new.secret}).data,
                            status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"  # the body holds a secret
        return response


@extend_schema(tags=[TAG])
class WebhookEndpointDetailView(WebhookAPIView):
    serializer_class = WebhookEndpointSerializer

    @extend_schema(operation_id="webhooks_retrieve", responses={200: WebhookEndpointSerializer, 403: PLAN_REFUSED},
                   summary="A webhook endpoint")
    def get(self, request: Request, endpoint_id: int) -> Response:
        return Response(WebhookEndpointSerializer(self.endpoint(endpoint_id)).data)

    @extend_schema(operation_id="webhooks_update", request=WebhookEndpointPatchSerializer,
                   responses={200: WebhookEndpointSerializer, 403: PLAN_REFUSED},
                   summary="Change an endpoint's URL, description, event types or enabled flag")
    def patch(self, request: Request, endpoint_id: int) -> Response:
        endpoint = self.endpoint(endpoint_id)
        data = self.body(WebhookEndpointPatchSerializer)
        updated = self.saved(lambda: webhook_endpoint_update(
            organization=request.tenant, actor=Actor.from_request(request), endpoint=endpoint,
            url=data.get("url", endpoint.url), description=data.get("description", endpoint.description),
            event_types=data.get("event_types", endpoint.event_types), enabled=data.get("enabled", endpoint.enabled),
            include_message_text=data.get("include_message_text")))
        return Response(WebhookEndpointSerializer(updated).data)

    @extend_schema(operation_id="webhooks_destroy", responses={204: None, 403: PLAN_REFUSED},
                   summary="Delete an endpoint and its delivery log")
    def delete(self, request: Request, endpoint_id: int) -> Response:
        webhook_endpoint_delete(organization=request.tenant, actor=Actor.from_request(request),
                                endpoint=self.endpoint(endpoint_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=[TAG])
class WebhookSecretRotateView(WebhookAPIView):
    serializer_class = WebhookSecretSerializer

    @extend_schema(operation_id="webhooks_rotate_secret", request=None,
                   responses={200: WebhookSecretSerializer, 403: PLAN_REFUSED},
                   summary="A new signing secret; the previous one keeps signing for 24 hours")
    def post(self, request: Request, endpoint_id: int) -> Response:
        endpoint = self.endpoint(endpoint_id)
        secret = webhook_endpoint_secret_rotate(organization=request.tenant, actor=Actor.from_request(request),
                                                endpoint=endpoint)
        response = Response({"secret": secret, "previous_secret_valid_until": endpoint.previous_secret_expires_at})
        response["Cache-Control"] = "no-store"
        return response


@extend_schema(tags=[TAG])
class WebhookTestView(WebhookAPIView):
    serializer_class = WebhookTestSerializer

    @extend_schema(operation_id="webhooks_test", request=None,
                   responses={202: WebhookTestSerializer, 403: PLAN_REFUSED},
                   summary="Send a `webhook.test` event to this endpoint")
    def post(self, request: Request, endpoint_id: int) -> Response:
        message = webhook_endpoint_test(organization=request.tenant, endpoint=self.endpoint(endpoint_id),
                                        actor=Actor.from_request(request))
        return Response({"event_id": message.event_id}, status=status.HTTP_202_ACCEPTED)


@extend_schema(tags=[TAG])
class WebhookDeliveryListView(WebhookAPIView):
    serializer_class = WebhookDeliverySerializer

    @extend_schema(operation_id="webhooks_deliveries", responses={200: WebhookDeliverySerializer(many=True),
                                                                  403: PLAN_REFUSED},
                   parameters=[OpenApiParameter("status", enum=list(WebhookDelivery.Status.values),
                                                description="Only deliveries in this state (`failed`: the dead "
                                                            "letters).")],
                   summary="The endpoint's deliveries, newest first, each with its last try")
    def get(self, request: Request, endpoint_id: int) -> Response:
        wanted = request.query_params.get("status", "")
        if wanted and wanted not in WebhookDelivery.Status.values:
            raise exceptions.ValidationError({"status": f"One of {', '.join(WebhookDelivery.Status.values)}."})
        return self.page(delivery_list(endpoint=self.endpoint(endpoint_id), status=wanted), WebhookDeliverySerializer)


@extend_schema(tags=[TAG])
class WebhookDeliveryReplayView(WebhookAPIView):
    serializer_class = WebhookDeliverySerializer

    @extend_schema(operation_id="webhooks_delivery_replay", request=None,
                   responses={202: WebhookDeliverySerializer, 403: PLAN_REFUSED},
                   summary="Send a finished delivery's message again (same webhook-id)")
    def post(self, request: Request, endpoint_id: int, delivery_id: int) -> Response:
        endpoint = self.endpoint(endpoint_id)
        delivery = delivery_list(endpoint=endpoint).filter(pk=delivery_id).first()
        if delivery is None:
            raise exceptions.NotFound()
        replayed = self.saved(lambda: webhook_delivery_replay(organization=request.tenant, delivery=delivery,
                                                                    actor=Actor.from_request(request)))
        return Response(WebhookDeliverySerializer(delivery_list(endpoint=endpoint).get(pk=replayed.pk)).data,
                        status=status.HTTP_202_ACCEPTED)


@extend_schema(tags=[TAG])
class WebhookReplayFailedView(WebhookAPIView):
    serializer_class = WebhookReplayedSerializer

    @extend_schema(operation_id="webhooks_replay_failed", request=WebhookReplayFailedSerializer,
                   responses={202: WebhookReplayedSerializer, 403: PLAN_REFUSED},
                   summary="Send again every failed or cancelled delivery of this endpoint since a time")
    def post(self, request: Request, endpoint_id: int) -> Response:
        endpoint = self.endpoint(endpoint_id)
        data = self.body(WebhookReplayFailedSerializer)
        count = self.saved(lambda: webhook_deliveries_replay_failed(organization=request.tenant, endpoint=endpoint,
                                                                    since=data["since"],
                                                                    actor=Actor.from_request(request)))
        return Response({"replayed": count}, status=status.HTTP_202_ACCEPTED)


@extend_schema(tags=[TAG])
class EventTypeListView(OrgAPIView):
    """The event catalogue (any member, any plan: it says what webhooks would send)."""

    serializer_class = EventTypeSerializer
    pagination_class = None

    @extend_schema(operation_id="webhooks_event_types", responses=EventTypeSerializer(many=True),
                   summary="The event types an endpoint can subscribe to")
    def get(self, request: Request) -> Response:
        return Response(EventTypeSerializer(event_type_list(), many=True).data)
