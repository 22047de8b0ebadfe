from django.apps import AppConfig


class CatalogConfig(AppConfig):
    """The AI model catalog and organizations' provider keys: global, in the public schema."""

    name = "chat.catalog"
    label = "catalog"
    default_auto_field = "django.db.models.BigAutoField"
