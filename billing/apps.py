from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Receivers for dj-stripe's webhook signals; Stripe tasks live outside tasks.py, so import them here.
        from . import stripe_tasks  # noqa: F401
        from .webhooks import webhook_receivers_connect

        webhook_receivers_connect()
