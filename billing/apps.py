from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        import stripe
        from django.conf import settings

        # Our tasks, Stripe's webhook redeliveries and the user's retry own retries (as for LLM
        # providers): an SDK retrying behind them would hide outages and multiply waits.
        stripe.max_network_retries = settings.STRIPE_MAX_NETWORK_RETRIES
        # Receivers for dj-stripe's webhook signals.
        from .webhooks import webhook_receivers_connect

        webhook_receivers_connect()
