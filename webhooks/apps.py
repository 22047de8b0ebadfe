from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    """Outbound webhooks (Standard Webhooks 1.0): endpoints, outbox and deliveries, in each organization's schema."""

    name = "webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from core.events import event_sink_register

        from .services import webhook_event_emit

        event_sink_register(webhook_event_emit)
